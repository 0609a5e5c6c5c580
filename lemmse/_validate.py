"""Input checks shared across modules (private; nothing here is re-exported).

The σ rule of the package is :func:`lemmse.estimators._check_sigma` (a float or one value per
image, positive and finite, still positive in the compute dtype).
:func:`screen_sigma` runs before it and rejects what a float conversion would silently turn
into a number: bools (``True`` is 1.0), complex values (the imaginary part is dropped) and
text, alone or inside a sequence or array.
:func:`check_finite_output` names the inputs when a finite input gave a non-finite result.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

__all__ = ["screen_sigma", "check_finite_output"]


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
