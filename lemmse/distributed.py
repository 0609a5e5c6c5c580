"""The LE-MMSE of a training set sharded over ``torch.distributed`` (gloo on CPUs, NCCL on GPUs).

Book chapter 7, section "Beyond one machine", derives the merge and runs it with ``torchrun``.

Every estimator of the package is a softmax over keys built from the training images, so it
splits exactly over a partition of the training set.  Rank ``r`` holds the images of its shard
and computes, for the same queries, the estimate ``x̂_r`` and the log-sum-exp ``ℓ_r`` of its own
logits (``ℓ_r = log Σ_{k ∈ shard r} exp(-‖q - k‖²/2σ²)``, per query: per pixel for the patch
estimators, per image for the MMSE).  The shards combine by the identity of the streaming
softmax between two chunks:

.. math::

    m = \\max_r ℓ_r, \\qquad
    x̂ = \\frac{\\sum_r e^{ℓ_r - m}\\, x̂_r}{\\sum_r e^{ℓ_r - m}}, \\qquad
    ℓ = m + \\log \\sum_r e^{ℓ_r - m},

(``x̂_r = num_r / den_r`` with ``den_r = e^{ℓ_r}`` up to the common factor), one all-reduce of
the maximum and one of the rescaled numerators and denominators, in float64; a rank with an
empty shard has ``ℓ_r = -∞`` and weight 0.  Every rank gets the same result (the all-reduce
hands the same sums to all).  The log-density of :meth:`lemmse.estimators.LEMMSE.log_density` follows from
``ℓ`` and the number of keys of the whole set; the posterior diagnostics from each shard's
largest weights and ``Σ w²``, rescaled by ``e^{ℓ_r - ℓ}`` (:meth:`Sharded.posterior`).

The centring offset of the patches (the per-channel mean of the training set, which makes the
float32 distances accurate) is the mean of the *whole* set on every rank (``offset=`` of the
estimators), so that each rank computes its keys exactly as the single-process estimator does.

The ranks agree before every result: a rank whose input is wrong or whose computation raises
makes every rank raise (a :class:`ShardError` naming it), instead of leaving the others waiting
in a collective; a rank that dies is caught by the process group's timeout (set it with
``init_process_group(..., timeout=...)``; ``python -m lemmse shard`` does).

Run under ``torchrun`` (see the README, "Computing at scale")::

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    a, b = shard_range(len(train), rank, world)
    est = Sharded(LEMMSE, train[a:b], Denoising(), patch_size=5)
    x_hat = est(y, 0.2)          # the same on every rank
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.distributed as dist

from lemmse._validate import check_images
from lemmse.posterior import gaussian_log_density

__all__ = ["Sharded", "ShardError", "shard_range", "load_shard", "process_group",
           "estimate_split"]

#: Bytes of an error message exchanged between ranks (longer ones are cut).
_MSG_BYTES = 400


class ShardError(RuntimeError):
    """A step of a sharded computation failed on some ranks; raised on every rank."""


def shard_range(n, rank, world):
    """``(start, stop)`` of the training images of ``rank`` out of ``world``: contiguous index
    ranges, sizes differing by at most one (the first ``n % world`` ranks get one more; a rank
    gets an empty range when ``n < world``)."""
    for name, v, low in (("n", n, 0), ("world", world, 1), ("rank", rank, 0)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
    if rank >= world:
        raise ValueError(f"rank must be < world = {world}, got {rank}")
    base, extra = divmod(int(n), int(world))
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


# ---------------------------------------------------------------------------- collectives
def _rank_world(group):
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("no torch.distributed process group: call "
                           "torch.distributed.init_process_group first (torchrun sets the "
                           "environment it reads), e.g. init_process_group('gloo')")
    return dist.get_rank(group), dist.get_world_size(group)


def _comm_device(group):
    """Where the collectives' tensors live: the current GPU for NCCL, else the CPU."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class _Comm:
    """Fixed-shape collectives over ``group``, on the right device."""

    def __init__(self, group):
        self.group = group
        self.rank, self.world = _rank_world(group)
        self.device = _comm_device(group)

    def all_gather(self, t):
        t = t.to(self.device).contiguous()
        out = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(out, t, group=self.group)
        return torch.stack(out).cpu()

    def all_reduce(self, t, op=dist.ReduceOp.SUM):
        dev = t.device
        t = t.to(self.device).contiguous()
        dist.all_reduce(t, op=op, group=self.group)
        return t.to(dev)

    def broadcast(self, t, src_rank=0):
        dev = t.device
        t = t.to(self.device).contiguous()
        dist.broadcast(t, dist.get_global_rank(self.group, src_rank) if self.group else src_rank,
                       group=self.group)
        return t.to(dev)

    def agree(self, error, what):
        """Every rank learns whether ``what`` failed anywhere; if so all raise.  Where every
        rank failed with the same kind of error (the same bad input everywhere), each raises
        its own; otherwise a :class:`ShardError` naming the failing ranks and their messages."""
        msg = b"" if error is None else f"{type(error).__name__}: {error}".encode()[:_MSG_BYTES]
        buf = torch.zeros(_MSG_BYTES + 1, dtype=torch.uint8)
        buf[0] = error is not None
        if msg:
            buf[1:1 + len(msg)] = torch.frombuffer(bytearray(msg), dtype=torch.uint8)
        got = self.all_gather(buf)
        failed = [(r, bytes(got[r, 1:].tolist()).rstrip(b"\0").decode("utf-8", "replace"))
                  for r in range(self.world) if got[r, 0]]
        if not failed:
            return
        kinds = {m.split(":", 1)[0] for _, m in failed}
        if error is not None and len(failed) == self.world and len(kinds) == 1:
            raise error
        text = "; ".join(f"rank {r}: {m}" for r, m in failed)
        raise ShardError(f"{what} failed on {len(failed)} of {self.world} ranks ({text})") \
            from error

    def run(self, what, fn, *args):
        """``fn(*args)`` on this rank, then :meth:`agree` on whether it raised."""
        error, out = None, None
        try:
            out = fn(*args)
        except Exception as e:  # reported to every rank by agree
            error = e
        self.agree(error, what)
        return out


# ---------------------------------------------------------------------------- the estimator
class Sharded:
    """An estimator over the union of the training shards of a process group.

    Collective: every rank constructs it and calls it with the same arguments (``y`` and
    ``sigma`` are checked to be equal on all ranks); every rank gets the same result, equal to
    ``estimator_cls(whole_set, *args, **kw)`` up to the float32 rounding of the merge
    (both native kernels merge their float32 partial sums into float64; the shards' sums are
    split differently, so the two results differ at the level of those partial sums' rounding).

    Parameters
    ----------
    estimator_cls : type
        :class:`lemmse.estimators.LEMMSE` (any operator and pre-inverse, any ``group`` and
        ``group_weight``), :class:`lemmse.estimators.LocalMMSE` or
        :class:`lemmse.estimators.MMSE`.
    train_shard : Tensor ``[n_r, C, H, W]``
        This rank's training images (``n_r`` may be 0; at least one image over all ranks).
        The whole set is the concatenation of the shards in rank order.
    \\*args, \\*\\*kw
        The estimator's other arguments (operator, patch size, pre-inverse, dtype, ...), the
        same on every rank.
    process_group : ProcessGroup, optional
        Default: the default process group (``group=`` is the LE-MMSE's symmetry group).

    Attributes
    ----------
    estimator : object
        The estimator of this rank's shard (built on one zero image if it is empty).
    N : int
        Number of training images over all ranks.
    start, stop : int
        This rank's range of the whole set.
    offset : Tensor ``[C]``
        The per-channel mean of the whole set, the centring of every rank's patches.
    """

    def __init__(self, estimator_cls, train_shard, *args, process_group=None, **kw):
        from lemmse.estimators import LEMMSE, MMSE, LocalMMSE
        from lemmse.operators import SuperResolution

        self._comm = comm = _Comm(process_group)

        def check():
            if not (isinstance(estimator_cls, type)
                    and issubclass(estimator_cls, (LEMMSE, LocalMMSE, MMSE))):
                raise TypeError(f"estimator_cls must be LEMMSE, LocalMMSE or MMSE, got "
                                f"{estimator_cls!r}")
            if "offset" in kw:
                raise ValueError("offset is set by Sharded (the mean of the whole training set)")
            if isinstance(args[0] if args else kw.get("operator"), SuperResolution):
                raise TypeError("Sharded does not support the super-resolution LE-MMSE")
            _check_shard(train_shard)

        comm.run("checking the arguments", check)
        n, C, H, W = train_shard.shape
        dtype = kw.get("dtype") or train_shard.dtype
        code = {torch.float32: 0, torch.float64: 1}.get(train_shard.dtype, 2)
        head = comm.all_gather(torch.tensor([n, C, H, W, code], dtype=torch.int64))
        if not (head[:, 1:] == head[0, 1:]).all():
            raise ValueError("the training shards differ in image shape or dtype between ranks: "
                             + ", ".join(f"rank {r}: {tuple(h[1:4].tolist())} "
                                         f"{['float32', 'float64', 'other'][int(h[4])]}"
                                         for r, h in enumerate(head)))
        counts = head[:, 0]
        self.N = int(counts.sum())
        if self.N == 0:
            raise ValueError("every training shard is empty: the whole set needs at least one "
                             "image")
        self.start = int(counts[:comm.rank].sum())
        self.stop = self.start + n
        sums = torch.cat([train_shard.double().sum(dim=(0, 2, 3)),
                          torch.tensor([float(n * H * W)], dtype=torch.float64)])
        sums = comm.all_reduce(sums.to(train_shard.device))
        self.offset = (sums[:C] / sums[C]).to(dtype)
        self._empty = n == 0
        shard = torch.zeros(1, C, H, W, dtype=train_shard.dtype, device=train_shard.device) \
            if self._empty else train_shard
        self.estimator = est = comm.run(
            "building the estimator", lambda: estimator_cls(shard, *args, offset=self.offset, **kw))
        self._mmse = isinstance(est, MMSE)
        rest = getattr(est, "_rest", None)  # LEMMSE with 0 < group_weight < 1: two key banks
        self._parts = [est] if rest is None else [est, rest]
        # images in each key bank over all ranks (a group orbit holds |G| images per image)
        per = torch.tensor([0 if self._empty else p.N for p in self._parts], dtype=torch.int64)
        self._bank_sizes = [int(v) for v in comm.all_reduce(per)]

    def __repr__(self):
        return (f"Sharded({self.estimator!r}, N={self.N}, rank {self._comm.rank} of "
                f"{self._comm.world}: images {self.start}:{self.stop})")

    # ------------------------------------------------------------------ one call
    def _queries(self, y, sigma):
        """Validated ``(y, σ [B])``, the same on every rank (rank 0's, checked equal)."""
        comm = self._comm
        y, s = comm.run("checking y and sigma", self.estimator._prepare, y, sigma)
        sizes = comm.all_gather(torch.tensor([y.shape[0]], dtype=torch.int64))[:, 0]
        if not (sizes == sizes[0]).all():
            raise ValueError(f"y must be the same batch on every rank, got batch sizes "
                             f"{sizes.tolist()}")
        y0, s0 = comm.broadcast(y.clone()), comm.broadcast(s.clone())
        same = torch.equal(y0, y) and torch.equal(s0, s)
        comm.run("comparing y and sigma with rank 0's", _require, same,
                 "y and sigma must be equal on every rank (they differ from rank 0's)")
        return y, s

    def _local(self, y, s):
        """``[(x̂_r [B, C, H, W], ℓ_r [B, 1, H, W] or [B, 1, 1, 1])]`` in float64, one per key
        bank, for this rank's shard (``ℓ_r = -∞`` for an empty shard)."""
        Bn = y.shape[0]
        out = []
        with torch.no_grad():
            for p in self._parts:
                if self._empty:
                    x = torch.zeros(Bn, p.C, p.H, p.W, dtype=torch.float64, device=y.device)
                    q = (1, 1) if self._mmse else (p.H, p.W)
                    lse = torch.full((Bn, 1, *q), -math.inf, dtype=torch.float64, device=y.device)
                elif self._mmse:
                    x, lse, _, _ = p._run(y, s)
                    lse = lse.view(Bn, 1, 1, 1)
                else:
                    x, lse = p._x_lse(y, s)
                    lse = lse.view(Bn, 1, p.H, p.W)
                out.append((x.double(), lse.double()))
        return out

    def _merge(self, x, lse):
        """The identity of the module docstring: ``(x̂, ℓ)`` over all ranks, float64."""
        m = self._comm.all_reduce(lse.clone(), dist.ReduceOp.MAX)
        a = torch.exp(lse - m)  # 0 for an empty shard or a query it has no key for
        ax = torch.where(a > 0, a * x, torch.zeros_like(x))  # (x̂_r may be NaN there)
        buf = self._comm.all_reduce(torch.cat([ax.flatten(), a.flatten()]))
        num, den = buf[:x.numel()].view_as(x), buf[x.numel():].view_as(a)
        return num / den, m + torch.log(den)

    def _x_lse(self, y, sigma):
        from lemmse._runtime import no_tf32

        y, s = self._queries(y, sigma)
        with no_tf32():
            parts = self._comm.run("computing the shard's estimate", self._local, y, s)
        merged = [self._merge(x, lse) for x, lse in parts]
        if len(merged) == 1:
            return merged[0] + (s,)
        # two banks (LEMMSE with 0 < λ < 1): x̂ = (Z_e x̂_e + λ Z_r x̂_r) / (Z_e + λ Z_r)
        (x0, l0), (x1, l1) = merged
        log_lam = math.log(self.estimator.group_weight)
        a = torch.sigmoid(l1 - l0 + log_lam)
        return (1.0 - a) * x0 + a * x1, torch.logaddexp(l0, l1 + log_lam), s

    def __call__(self, y, sigma):
        """The estimate from the whole training set, ``[B, C, H, W]`` in the estimator's dtype,
        the same on every rank (collective)."""
        x, _, _ = self._x_lse(y, sigma)
        return x.to(self.estimator.dtype)

    def log_density(self, y, sigma):
        """``log((1/K) Σ_k N(q; k, σ² I_D))`` over the ``K`` admissible keys of the whole set,
        per pixel ``[B, H, W]`` (as :meth:`lemmse.estimators.LEMMSE.log_density`; for the MMSE one value
        per image, repeated over the pixels, as its ``posterior``) (collective)."""
        _, lse, s = self._x_lse(y, sigma)
        return self._log_density(lse, s)

    def _log_density(self, lse, s):
        est = self.estimator
        Bn, H, W = lse.shape[0], est.H, est.W
        if self._mmse:
            K = torch.tensor(float(self.N), dtype=torch.float64)
            D = est._flat(torch.zeros(1, est.C, H, W, dtype=est.dtype, device=est.device)).shape[1]
        else:
            Ks = [p.geometry.n_keys(n).double().view(1, 1, H, W)
                  for p, n in zip(self._parts, self._bank_sizes)]
            K = Ks[0] if len(Ks) == 1 else Ks[0] + est.group_weight * Ks[1]
            D = est.D
        out = gaussian_log_density(lse, K.to(lse.device), D, s.double().view(Bn, 1, 1, 1))
        return out.expand(Bn, 1, H, W).reshape(Bn, H, W).to(est.dtype)

    def posterior(self, y, sigma, topk=8):
        """The estimate and the diagnostics of its weights over the whole set, as the
        estimator's ``posterior`` (:class:`lemmse.estimators.Posterior`), the same on every rank
        (collective; not for ``0 < group_weight < 1``).

        Each rank takes the ``max(topk, 256)`` largest weights of its shard and its ``Σ w²``;
        rescaled by ``e^{ℓ_r - ℓ}`` they are weights of the whole set, whose ``topk`` largest
        are among them.  ``topk_image`` is the image's index in the whole set (in the
        orbit bank ``g·N + n`` for ``group=``); ``n50`` is exact where it is at most 256
        (``lemmse.backends.attention.N50_EXACT``) and ``-1`` where it is larger (the single-process
        estimator counts those on a histogram of the weights, which the ranks do not exchange).
        """
        from lemmse._runtime import no_tf32
        from lemmse._validate import check_topk
        from lemmse.backends.attention import N50_EXACT
        from lemmse.posterior import Posterior

        if len(self._parts) > 1:
            raise ValueError("posterior is not available for 0 < group_weight < 1 (two key "
                             "banks); use group_weight=1 or 0, or call the estimator")
        topk = check_topk(topk)
        keep = max(topk, N50_EXACT)
        y, s = self._queries(y, sigma)
        est, (H, W) = self.estimator, (self.estimator.H, self.estimator.W)
        n = self.stop - self.start

        def local():
            (x, lse), = self._local(y, s)
            shape = (y.shape[0], H, W)
            w = torch.zeros(*shape, keep, dtype=torch.float64, device=y.device)
            img = torch.full((*shape, keep), -1, dtype=torch.int64, device=y.device)
            pos = torch.full((*shape, keep, 2), -1, dtype=torch.int64, device=y.device)
            s2 = torch.zeros(shape, dtype=torch.float64, device=y.device)
            if not self._empty:
                # the shard's estimate x is at hand: the posterior does not compute it again
                post = est._checked_posterior(y, s, keep, x_hat=x.to(est.dtype))
                k = post.topk_weights.shape[-1]
                w[..., :k] = post.topk_weights.double()
                i = post.topk_image
                img[..., :k] = torch.where(i >= 0, (i // n) * self.N + self.start + i % n, i)
                pos[..., :k, :] = post.topk_position
                s2 = 1.0 / post.participation.double()
            return x, lse, w, img, pos, s2

        with no_tf32():
            x, lse_r, w, img, pos, s2 = self._comm.run("computing the shard's posterior", local)
        x_hat, lse = self._merge(x, lse_r)
        scale = torch.exp(lse_r - lse).view(lse.shape[0], *lse.shape[2:])  # [B, H|1, W|1]
        s2 = self._comm.all_reduce(s2 * scale ** 2)
        w = self._comm.all_gather(w * scale[..., None])  # [world, B, H, W, keep]
        img, pos = self._comm.all_gather(img), self._comm.all_gather(pos)
        w, order = w.permute(1, 2, 3, 0, 4).flatten(3).topk(keep, dim=-1)
        img = img.permute(1, 2, 3, 0, 4).flatten(3).gather(-1, order)
        pos = pos.permute(1, 2, 3, 0, 4, 5).flatten(3, 4)
        pos = pos.gather(3, order[..., None].expand(*order.shape, 2))
        reached = w.cumsum(-1) >= 0.5
        n50 = torch.where(reached.any(-1), reached.double().argmax(-1) + 1,
                          torch.full_like(img[..., 0], -1))
        dt, dev = est.dtype, y.device
        return Posterior(x_hat.to(dt), self._log_density(lse, s), n50.to(dev),
                         (1.0 / s2).to(dt), w[..., :topk].to(dev, dt), img[..., :topk].to(dev),
                         pos[..., :topk, :].to(dev))


def _check_shard(x):
    # the package's image rule, except that a rank may hold no images (n = 0)
    check_images(x, "train_shard", allow_empty=True)
    if 0 in x.shape[1:]:
        raise ValueError(f"train_shard must have images with pixels [n, C, H, W] (n may be 0), "
                         f"got shape {tuple(x.shape)}")


def _require(ok, message):
    if not ok:
        raise ValueError(message)


# the launcher side (process groups, shards from disk, whole splits, the CLI) lives in
# lemmse/_shard_run.py; imported here so that lemmse.distributed holds every public name
from lemmse._shard_run import estimate_split, load_shard, process_group  # noqa: E402
