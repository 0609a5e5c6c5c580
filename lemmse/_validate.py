"""Input checks shared across modules (private, nothing re-exported; no chapter covers them).

One rule for every public entry point: what an argument *is* (not a tensor, a tensor of a
non-real-float dtype, a bool, text or complex value where a number goes, a float where an
integer goes) is a TypeError; what it *holds* (its shape, size, emptiness, NaN/Inf, range,
device) a ValueError.  Every message names the argument and says what was expected.  The
estimators' ``_check_images`` and ``_check_sigma`` (``lemmse._estimator``) and
``lemmse.distributed`` build on the functions here and add only their own conditions (the
training set's image shape, dtype and device; ``1/σ²`` finite in the compute dtype).

- :func:`check_images`: the one image check (a real floating-point tensor ``[B, C, H, W]`` with
  data, not empty, finite, on the expected device);
- :func:`parse_sigma`: the one σ parser (a float or one value per image, positive and finite,
  still positive in the compute dtype); :func:`screen_sigma` is its first step and rejects
  what a float conversion would silently turn into a number: bools (``True`` is 1.0), complex
  values (the imaginary part is dropped) and text, alone or inside a sequence or array;
- :func:`check_device`, :func:`check_bool`, :func:`check_int`, :func:`check_float`,
  :func:`check_choice`: scalar arguments;
- :func:`check_finite_output` names the inputs when a finite input gave a non-finite result;
- :func:`check_topk` and :func:`bound_topk` are the ``topk`` rule of the ``posterior``
  methods: a positive integer, at most the number of keys, whose top-k state fits the memory
  budget.
"""

from __future__ import annotations

import math
import numbers
import operator

import numpy as np
import torch

__all__ = ["check_images", "parse_sigma", "screen_sigma", "check_device", "check_bool", "check_int",
           "check_float", "check_choice", "check_finite_output", "check_topk", "bound_topk"]


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


_LAYOUTS = {3: "[C, H, W]", 4: "[B, C, H, W]"}


def check_images(x, name: str = "x", *, ndims=(4,), device=None, device_name: str | None = None,
                 finite: bool = True, allow_empty: bool = False) -> torch.Tensor:
    """Return ``x`` if it is a real floating-point image tensor with data; else raise.

    TypeError: ``x`` is not a tensor, or its dtype is not a real float (int, bool, complex).
    ValueError: ``x`` has a number of dimensions not in ``ndims`` (layouts ``[C, H, W]``,
    ``[B, C, H, W]``), lives on the meta device (a shape without values), is on another device
    than ``device`` (that of ``device_name``), has a dimension of size 0 (unless
    ``allow_empty``), or holds NaN or Inf (when ``finite``).  Every message starts with ``name``.
    """
    layouts = " or ".join(_LAYOUTS.get(d, f"{d}-D") for d in ndims)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {layouts}, got {type(x).__name__}")
    if x.ndim not in ndims:
        count = " or ".join(map(str, ndims))
        raise ValueError(f"{name} must have {count} dimensions {layouts}, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a real floating-point dtype, got {x.dtype}; convert it "
                        f"with {name}.float() (images are float values in [0, 1])")
    if x.device.type == "meta":
        raise ValueError(f"{name} is on the meta device (a shape without values); pass a tensor "
                         f"with data, on 'cpu' or 'cuda'")
    if device is not None and x.device != torch.device(device):
        raise ValueError(f"{name} is on device {x.device}, but {device_name or 'the computation'} "
                         f"is on {device}; move it with {name}.to({str(device)!r})")
    if not allow_empty and 0 in x.shape:
        raise ValueError(f"{name} is empty: it needs at least one image with pixels, got shape "
                         f"{tuple(x.shape)}")
    if finite and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} must hold real, finite values: it contains NaN or Inf "
                         f"({bad} of {x.numel()} entries)")
    return x


def parse_sigma(sigma, batch: int | None = None, dtype: torch.dtype = torch.float64, device="cpu",
                *, name: str = "sigma") -> torch.Tensor:
    """σ as a 1-D tensor of ``dtype`` on ``device``: the one σ parser of the package.

    ``sigma`` is a float (any real number) or a 1-D sequence, array or tensor of floats.  With
    ``batch``, one value for all images (returned repeated ``batch`` times) or exactly one per
    image; with ``batch=None`` (a list of noise levels), any non-zero number of values.

    TypeError: a bool, complex or text value (alone or as an element), None or another object.
    ValueError: a value not positive and finite, the wrong number of values or dimensions, a
    tensor on the meta device, or a value that underflows to 0 in ``dtype``.
    """
    sigma = screen_sigma(sigma, name)
    what = "a float or one value per image" if batch is not None else "a float or a list of floats"
    if isinstance(sigma, numbers.Real):
        try:
            s = torch.tensor([float(sigma)], dtype=torch.float64)
        except OverflowError:
            raise ValueError(f"{name} must be positive and finite, got {sigma!r:.60}") from None
        scalar = True
    else:
        if isinstance(sigma, torch.Tensor):
            if sigma.device.type == "meta":
                raise ValueError(f"{name} is on the meta device (a shape without values); pass "
                                 f"{what}")
            if not (sigma.is_floating_point() or sigma.dtype in (torch.int32, torch.int64)):
                raise TypeError(f"{name} must hold real numbers, got a tensor of dtype {sigma.dtype}")
        try:
            if isinstance(sigma, torch.Tensor):
                s = sigma.to(device="cpu", dtype=torch.float64)
            else:
                s = torch.as_tensor(sigma, dtype=torch.float64, device="cpu")
        except (TypeError, ValueError, RuntimeError, OverflowError):
            raise TypeError(f"{name} must be {what}, got {type(sigma).__name__} "
                            f"({sigma!r:.60})") from None
        scalar = s.ndim == 0
        if s.ndim > 1:
            raise ValueError(f"{name} must be {what} (a 1-D tensor or sequence), got shape "
                             f"{tuple(s.shape)}")
        s = s.reshape(-1)
    if batch is not None:
        if scalar:
            s = s.expand(batch)
        elif s.numel() != batch:
            raise ValueError(f"{name} must be {what} (length {batch}), got length {s.numel()}")
    elif s.numel() == 0:
        raise ValueError(f"{name} must hold at least one value, got an empty {type(sigma).__name__}")
    if not bool(torch.isfinite(s).all()) or not bool((s > 0).all()):
        raise ValueError(f"{name} must be positive and finite, got {s.tolist()}")
    low = float(s.min()) if s.numel() else 1.0
    cast = s.to(dtype)
    if not bool((cast > 0).all()):
        raise ValueError(f"{name} = {low:g} underflows to 0 in {dtype} (smallest positive normal "
                         f"{torch.finfo(dtype).tiny:g}); use a larger {name} or float64")
    return cast.to(device).contiguous()


def check_device(device, name: str = "device", *, auto: bool = False) -> torch.device:
    """``device`` (a string such as 'cpu', 'cuda', 'cuda:1', or a torch.device) as a
    torch.device, checked: TypeError for another type, ValueError for an unknown name, the
    meta device (no values) or CUDA where there is none.  With ``auto``, "auto" means CUDA
    when available, else the CPU."""
    if auto and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"{name} must be a device string such as 'cpu' or 'cuda' (or a "
                        f"torch.device), got {type(device).__name__} {device!r}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        lead = "'auto' or a torch device string" if auto else "a torch device string"
        raise ValueError(f"{name} must be {lead}, got {device!r} (for example 'cpu', 'cuda' "
                         f"or 'cuda:0')") from None
    if dev.type == "meta":
        raise ValueError(f"{name}={device!r} holds no values (the meta device); use 'cpu' or 'cuda'")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name}={device!r} was requested but CUDA is not available; use "
                         f"{'auto' if auto else 'cpu'!r}")
    return dev


def check_bool(name: str, value) -> bool:
    """``value`` if it is True or False (numpy bools too), else a TypeError naming ``name``."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


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
