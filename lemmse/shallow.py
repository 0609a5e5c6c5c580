"""The shallow ReLU denoiser of book chapter 13 (``book/13_minnorm.md``) and its training.

:class:`ShallowDenoiser` is the one-hidden-layer network
``h(y) = Σ_k a_k [w_kᵀ y + b_k]₊ + V y + c``; :func:`train_shallow` trains it to interpolate
the noisy samples with a small weight decay on the representation cost
``½ Σ_k (‖a_k‖² + ‖w_k‖²)``, whose limit is the minimum-norm denoiser of :mod:`lemmse.minnorm`
(the closed form it is compared with; that module re-exports both names).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

__all__ = ["ShallowDenoiser", "train_shallow"]


class ShallowDenoiser(nn.Module):
    """``h(y) = Σ_k a_k [w_kᵀ y + b_k]₊ + V y + c``, one hidden ReLU layer of ``width`` units.

    Parameters
    ----------
    d : int
        Input and output dimension.
    width : int
        Number of hidden units ``k``.
    seed : int
        Seed of the initialisation (a local ``torch.Generator``: no global state).
    init_scale : float
        ``w_k ~ N(0, init_scale² / d)``, ``a_k ~ N(0, init_scale² / width)``; ``b, V, c = 0``.
    dtype : torch.dtype
        Of the parameters (default float64).

    Notes
    -----
    Input ``y`` is ``[B, d]`` (or ``[B]`` when ``d = 1``); the output has the same shape.
    :meth:`cost` is the representation cost ``½ Σ_k (‖a_k‖² + ‖w_k‖²)``; the biases, ``V``
    and ``c`` are not penalised (chapter 13).
    """

    def __init__(self, d: int, width: int, seed: int = 0, init_scale: float = 1.0,
                 dtype=torch.float64):
        super().__init__()
        for name, val in (("d", d), ("width", width)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"{name} must be a positive integer, got {val!r}")
        if not (isinstance(init_scale, (int, float)) and init_scale > 0):
            raise ValueError(f"init_scale must be > 0, got {init_scale!r}")
        g = torch.Generator().manual_seed(seed)
        self.d, self.width = d, width
        self.W = nn.Parameter(torch.randn(width, d, generator=g, dtype=dtype)
                              * (init_scale / math.sqrt(d)))
        self.b = nn.Parameter(torch.randn(width, generator=g, dtype=dtype) * init_scale)
        self.A = nn.Parameter(torch.randn(d, width, generator=g, dtype=dtype)
                              * (init_scale / math.sqrt(width)))
        self.V = nn.Parameter(torch.zeros(d, d, dtype=dtype))
        self.c = nn.Parameter(torch.zeros(d, dtype=dtype))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        flat = self.d == 1 and y.dim() == 1
        z = y[:, None] if flat else y
        if z.dim() != 2 or z.shape[1] != self.d:
            raise ValueError(f"y must be [B, {self.d}]" + (" or [B]" if self.d == 1 else "")
                             + f", got shape {tuple(y.shape)}")
        z = z.to(self.W.dtype)
        out = torch.relu(z @ self.W.T + self.b) @ self.A.T + z @ self.V.T + self.c
        return out[:, 0] if flat else out

    def cost(self) -> torch.Tensor:
        """``½ Σ_k (‖a_k‖² + ‖w_k‖²)`` (a differentiable scalar)."""
        return 0.5 * (self.A.pow(2).sum() + self.W.pow(2).sum())

    def unit_strength(self) -> torch.Tensor:
        """``‖a_k‖ ‖w_k‖`` per unit ``[width]``: how much unit k contributes to the function."""
        return self.A.norm(dim=0) * self.W.norm(dim=1)

    def boundaries(self):
        """The units' ReLU boundaries ``{y : w_kᵀ y + b_k = 0}`` as ``(normals w [width, d], b)``."""
        return self.W.detach().clone(), self.b.detach().clone()


def train_shallow(model: ShallowDenoiser, y, x, weight_decay: float = 1e-5, steps: int = 4000,
                  lr: float = 3e-2, lr_final: float = 1e-3, init_on_data: bool = True,
                  seed: int = 0, progress: bool = True, desc: Optional[str] = None) -> dict:
    """Train ``model`` to interpolate ``h(y_i) = x_i`` with a small weight decay on its cost.

    Minimises ``mean_i ‖h(y_i) − x_i‖² + λ · ½ Σ_k (‖a_k‖² + ‖w_k‖²)`` (biases, ``V``, ``c``
    free) by full-batch Adam, the learning rate decaying geometrically from ``lr`` to
    ``lr_final``; deterministic (no sampling: the noisy copies ``y`` are given).  As λ → 0 the
    minimiser tends to the minimum-norm interpolant (chapter 13).

    Parameters
    ----------
    model : ShallowDenoiser
        Trained in place.
    y, x : tensor [B, d] (or [B] when ``d = 1``)
        Noisy samples and their clean targets.
    weight_decay : float >= 0
        λ (``1e-5`` in the paper's experiment).
    steps : int
    lr, lr_final : float > 0
    init_on_data : bool
        First move every unit's boundary ``w_kᵀ y + b_k = 0`` through a training sample drawn
        at random (``b_k = −w_kᵀ y_{i_k}``), so that the kinks start where the data are.
    seed : int
        Seed of that draw (a local generator).
    progress : bool
        Show a tqdm bar (loss, cost).

    Returns
    -------
    dict with lists ``loss`` (the data term), ``cost`` (every 10 steps) and the final
    ``max_residual`` ``max_i ‖h(y_i) − x_i‖``.
    """
    if not isinstance(model, ShallowDenoiser):
        raise ValueError(f"model must be a ShallowDenoiser, got {type(model).__name__}")
    y = torch.as_tensor(y).to(model.W.dtype)
    x = torch.as_tensor(x).to(model.W.dtype)
    if y.shape != x.shape:
        raise ValueError(f"y and x must have the same shape, got {tuple(y.shape)} and "
                         f"{tuple(x.shape)}")
    if not (torch.isfinite(y).all() and torch.isfinite(x).all()):
        raise ValueError("y and x must be finite (NaN or Inf found)")
    if not (isinstance(weight_decay, (int, float)) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not (lr > 0 and lr_final > 0):
        raise ValueError(f"lr and lr_final must be > 0, got {lr} and {lr_final}")
    model(y)  # shape check
    if init_on_data:
        g = torch.Generator().manual_seed(seed)
        idx = torch.randint(0, y.shape[0], (model.width,), generator=g)
        yk = y[idx].reshape(model.width, model.d)
        with torch.no_grad():
            model.b.copy_(-(model.W * yk).sum(1))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gamma = (lr_final / lr) ** (1 / max(steps - 1, 1))
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma)
    hist = {"loss": [], "cost": []}
    it = range(steps)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        it = bar = tqdm(it, desc=desc or "train_shallow", leave=False)
    for step in it:
        opt.zero_grad()
        r = model(y) - x
        data = r.pow(2).sum() / r.shape[0]
        loss = data + weight_decay * model.cost()
        loss.backward()
        opt.step()
        sched.step()
        if step % 10 == 0 or step == steps - 1:
            hist["loss"].append(data.item())
            hist["cost"].append(model.cost().item())
            if bar is not None and step % 200 == 0:
                bar.set_postfix(loss=f"{data.item():.1e}", cost=f"{hist['cost'][-1]:.3g}")
    with torch.no_grad():
        r = model(y) - x
        hist["max_residual"] = float(r.reshape(r.shape[0], -1).norm(dim=1).max())
    return hist
