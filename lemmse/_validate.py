"""Input checks shared across modules (private; nothing here is re-exported; no chapter of its
own: these are the argument rules of the calls every chapter makes, from chapter 2 on).

The σ rule of the package is :func:`check_sigma` (a float or one value per image, positive and
finite, still positive in the compute dtype), the image rule :func:`check_images` (a finite,
non-empty float ``[B, C, H, W]`` batch).
:func:`screen_sigma` runs before it and rejects what a float conversion would silently turn
into a number: bools (``True`` is 1.0), complex values (the imaginary part is dropped) and
text, alone or inside a sequence or array.
:func:`check_finite_output` names the inputs when a finite input gave a non-finite result.
:func:`check_topk` and :func:`bound_topk` are the ``topk`` rule of the ``posterior`` methods: a
positive integer, at most the number of keys, whose top-k state fits the memory budget.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

__all__ = ["screen_sigma", "check_images", "check_dtype", "check_sigma", "check_finite_output",
           "check_topk", "bound_topk"]


def _kind(v) -> str | None:
    """'bool', 'complex' or 'text' if a float conversion of ``v`` would hide what it is."""
    if isinstance(v, (bool, np.bool_)):
        return "bool"
    if isinstance(v, (complex, np.complexfloating)):
        return "complex"
    if isinstance(v, (str, bytes)):
        return "text"
    if isinstance(v, torch.Tensor):
        return "bool" if v.dtype == torch.bool else "complex" if v.is_complex() else None
    if isinstance(v, (np.ndarray, np.generic)):
        return {"b": "bool", "c": "complex", "U": "text", "S": "text"}.get(v.dtype.kind)
    return None


def screen_sigma(sigma, name: str = "sigma"):
    """Reject bool, complex and text values of ``sigma`` (alone or as elements) with a
    TypeError naming ``name``; return ``sigma`` (a tensor detached from autograd).

    Numbers (``float``, ``int``, numpy scalars, ``Fraction``), 1-D sequences, arrays and
    tensors of them pass through unchanged, for the σ rule to check their values and length.
    """
    if isinstance(sigma, numbers.Real) and not isinstance(sigma, bool):
        return sigma
    kind = _kind(sigma)
    if kind is None and isinstance(sigma, (list, tuple)):
        kind = next((k for k in map(_kind, sigma) if k is not None), None)
    if kind is not None:
        raise TypeError(f"{name} must be a positive float or one positive float per image, "
                        f"got {kind} values ({sigma!r:.60})")
    return sigma.detach() if isinstance(sigma, torch.Tensor) else sigma


def check_finite_output(out: torch.Tensor, what: str, hint) -> torch.Tensor:
    """Return ``out``; raise ValueError if it holds NaN or Inf.

    ``what`` says which result it is; ``hint`` (a string, or a function returning one, called
    only on failure) says which input made it overflow and what to do.
    """
    bad = ~torch.isfinite(out.detach())
    if bool(bad.any()):
        raise ValueError(f"{what} is not finite ({int(bad.sum())} of {out.numel()} entries are "
                         f"NaN or Inf): {hint() if callable(hint) else hint}")
    return out


def check_images(x, name, *, dtype=None, shape=None, device=None):
    """``x`` if it is a finite, non-empty float image batch ``[B, C, H, W]`` (of ``dtype``,
    image ``shape`` and ``device`` when given), else a TypeError or ValueError naming ``name``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [B, C, H, W], got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{name} must have shape [B, C, H, W] (4 dimensions), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty: it needs at least one image, got {tuple(x.shape)}")
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        raise ValueError(f"{name} has images of shape {tuple(x.shape[1:])} (C, H, W), but the "
                         f"training set has {tuple(shape)}")
    if dtype is not None and x.dtype != dtype:
        raise ValueError(f"{name} has dtype {x.dtype}, but the estimator computes in {dtype}; "
                         f"convert it with {name}.to({dtype})")
    if device is not None and x.device != device:
        raise ValueError(f"{name} is on device {x.device}, but the training set is on {device}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf values")
    return x


def check_dtype(dtype, default):
    """The compute dtype of an estimator: ``default`` (its training images') when ``dtype`` is
    None, else ``dtype`` if it is float32 or float64, else a ValueError."""
    dtype = default if dtype is None else dtype
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    return dtype


def check_sigma(sigma, batch, dtype, device):
    """σ as a ``[batch]`` tensor of ``dtype`` on ``device``: a float or one value per image,
    positive and finite, and still positive in ``dtype`` (the one σ rule of the package: the
    estimators and :func:`lemmse.train.predict` use it)."""
    sigma = screen_sigma(sigma)  # bool / complex / text values, alone or as elements
    if isinstance(sigma, bool) or (isinstance(sigma, torch.Tensor) and sigma.dtype == torch.bool):
        raise TypeError("sigma must be a float or one value per image, got a bool")
    if isinstance(sigma, torch.Tensor) and (sigma.is_complex() or not (
            sigma.is_floating_point() or sigma.dtype in (torch.int32, torch.int64))):
        raise TypeError(f"sigma must hold real numbers, got a tensor of dtype {sigma.dtype}")
    if isinstance(sigma, complex):
        raise TypeError(f"sigma must be a real number, got {sigma!r}")
    if isinstance(sigma, numbers.Real):
        s = torch.full((batch,), float(sigma), dtype=torch.float64, device=device)
    else:
        try:
            s = torch.as_tensor(sigma, dtype=torch.float64, device=device)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"sigma must be a float or a sequence/tensor of {batch} floats, "
                            f"got {type(sigma).__name__}") from None
        if s.ndim == 0:
            s = s.expand(batch)
        if s.ndim != 1 or s.shape[0] != batch:
            raise ValueError(f"sigma must be a float or have one value per image ({batch}), got "
                             f"shape {tuple(s.shape)}")
    if not torch.isfinite(s).all() or not (s > 0).all():
        raise ValueError(f"sigma must be positive and finite, got {s.tolist()}")
    low = float(s.min())
    s = s.to(dtype)
    if not (s > 0).all():
        raise ValueError(f"sigma = {low:g} underflows to 0 in {dtype} (smallest positive normal "
                         f"{torch.finfo(dtype).tiny:g}); use a larger sigma or float64")
    if not torch.isfinite((s.double() ** -2).to(dtype)).all():
        raise ValueError(f"sigma = {low:g} is too small for {dtype}: 1/sigma^2 overflows; use "
                         f"sigma >= {2 * torch.finfo(dtype).max ** -0.5:.1e} or float64")
    return s.contiguous()


#: Bytes per (query, kept weight) of the posterior's top-k state: its float64 log-weights and
#: int64 ids, the merge temporaries (twice that) and the returned weights, images and positions
#: (measured: 315 MiB for topk=5000 on one 28 x 28 image, 84 bytes per pair).
TOPK_BYTES = 88
#: The engine keeps at least this many weights per query anyway (for n50), whatever ``topk``.
TOPK_FLOOR = 256


def check_topk(topk) -> int:
    """``topk`` as an int; ValueError unless it is a positive integer (bools are not)."""
    if isinstance(topk, (bool, np.bool_)) or not isinstance(topk, numbers.Integral) or topk < 1:
        raise ValueError(f"topk must be a positive integer, got {topk!r}")
    return int(topk)


def bound_topk(topk: int, n_keys: int, n_queries: int, memory_budget: int) -> int:
    """``min(topk, n_keys)``; ValueError when its top-k state would not fit ``memory_budget``.

    ``n_keys`` is the largest number of keys a query has (no query can have more top weights);
    ``n_queries`` the number of queries of the call (pixels of all images, or images).  The
    state is about ``TOPK_BYTES`` bytes per query and kept weight; the check applies to what
    ``topk`` adds beyond the ``TOPK_FLOOR`` weights the engine keeps anyway.
    """
    k = min(int(topk), max(1, int(n_keys)))
    need = TOPK_BYTES * int(n_queries) * k
    if k > TOPK_FLOOR and need > memory_budget:
        fit = max(TOPK_FLOOR, memory_budget // (TOPK_BYTES * max(1, int(n_queries))))
        raise ValueError(
            f"topk={topk} needs about {need / 2**20:.0f} MiB for the top-k weights of "
            f"{n_queries} queries ({k} of {n_keys} keys each), over memory_budget="
            f"{memory_budget} bytes; ask for topk <= {fit}, fewer images per call, or a larger "
            f"memory_budget")
    return k


# --- scalar arguments (train, nets)
# One rule for the scalar arguments of TrainConfig, make_model and friends: a wrong type
# (a bool, a string, 1.5 for an integer) is a TypeError, a value out of range a ValueError.

import math  # noqa: E402 (imported with the section that uses them)
import operator  # noqa: E402


def check_int(name: str, value, minimum=None) -> int:
    """``value`` as an int (``operator.index``: bools and floats are a TypeError), ``>= minimum``."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_float(name: str, value, low=None, high=None, high_open=False) -> float:
    """``value`` as a finite float in ``[low, high]`` (``[low, high)`` if ``high_open``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and (value >= high if high_open else value > high):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value}")
    return value


def check_choice(name: str, value, choices):
    """``value`` if it is one of the strings ``choices``, else a ValueError listing them."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value
