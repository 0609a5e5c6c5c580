"""Input checks shared across modules (private; nothing here is re-exported).

The σ rule of the package is :func:`lemmse.estimators._check_sigma` (a float or one value per
image, positive and finite, still positive in the compute dtype).
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

__all__ = ["screen_sigma", "check_finite_output", "check_topk", "bound_topk"]


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
