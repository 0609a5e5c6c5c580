"""The diagnostics of the streaming attention: a second pass over the keys (book chapter 5).

With ``track=True`` a :class:`~lemmse.backends.attention.StreamingAttention` makes two passes
over the key bank: the first gives the log-sum-exp, the second the normalised log-weights of
every key, from which this mixin keeps, per query, the sum of squared weights (the
participation ratio ``1 / Σ w²``), the largest weights and their key ids (the top-k sources and
an exact ``n50`` when it is small) and a histogram of the log-weights (``n50`` otherwise).
Accumulated in float64 by the torch back-end.
"""

from __future__ import annotations

import math

import torch

__all__ = ["N50_EXACT"]

#: n50 is computed exactly (from the sorted largest weights) when it is at most this many.
N50_EXACT = 256
# bins of the log-weight histogram used to count the patches holding 50 % of the mass
_HIST_BINS = 2048
_HIST_RANGE = 32.0  # nats below the total mass (bins of 1/64 nat)


class _Diagnostics:
    """Second-pass state of :class:`~lemmse.backends.attention.StreamingAttention`: needs its
    ``M``, ``track``, ``topk``, ``_keep``, ``_m``, ``_den``, ``device`` and ``_pass``."""

    def begin_second_pass(self):
        """Start the pass that histograms the normalised log-weights (``track=True`` only)."""
        if not self.track:
            raise RuntimeError("begin_second_pass needs track=True")
        self._lse = self._m + torch.log(self._den)
        self._s2 = torch.zeros_like(self._den)
        self._tk_logw = torch.full((self.M, self._keep), -math.inf, dtype=self._den.dtype,
                                   device=self.device)
        self._tk_id = torch.full((self.M, self._keep), -1, dtype=torch.int64, device=self.device)
        self._hist_mass = torch.zeros(self.M, _HIST_BINS, dtype=self._den.dtype,
                                      device=self.device)
        self._hist_count = torch.zeros_like(self._hist_mass)
        self._pass = 2

    def _second_pass(self, r0, r1, S, ids, c0):
        logw = S - self._lse[r0:r1, None]  # log of the normalised weights, <= 0
        w = torch.exp(logw)
        self._s2[r0:r1] += (w * w).sum(1)
        cid = (torch.arange(c0, c0 + S.shape[1], device=self.device) if ids is None
               else ids.to(self.device))
        # the chunk's own largest weights first, then merge with the running ones
        kc = min(self._keep, logw.shape[1])
        c_l, c_pos = logw.topk(kc, dim=1)
        both_l = torch.cat([self._tk_logw[r0:r1], c_l], 1)
        both_i = torch.cat([self._tk_id[r0:r1], cid[c_pos]], 1)
        kk = min(self._keep, both_l.shape[1])
        top_l, pos = both_l.topk(kk, dim=1)
        self._tk_logw[r0:r1, :kk] = top_l
        self._tk_id[r0:r1, :kk] = both_i.gather(1, pos)
        b = (-logw * (_HIST_BINS / _HIST_RANGE)).floor().clamp_(0, _HIST_BINS - 1).long()
        self._hist_count[r0:r1].scatter_add_(1, b, torch.ones_like(logw))
        self._hist_mass[r0:r1].scatter_add_(1, b, w)

    def diagnostics(self):
        """Return a dict of per-query diagnostics (after the second pass, ``track=True``).

        ``participation``: 1 / Σ w²; ``n50``: the number of largest weights holding 50 % of
        the mass (exact when it is at most ``N50_EXACT``, otherwise counted on a histogram of the
        log-weights with bins of 1/64 nat, accurate to about 1.6 %); ``topk_weights`` and ``topk_ids``.
        """
        if not self.track or self._pass != 2:
            raise RuntimeError("diagnostics need track=True and a completed second pass")
        participation = 1.0 / self._s2
        tw = torch.exp(self._tk_logw)
        tw = torch.where(self._tk_id >= 0, tw, torch.zeros_like(tw))
        cum = tw.cumsum(1)
        reached = cum >= 0.5
        n50_exact = torch.where(reached.any(1), reached.float().argmax(1) + 1,
                                torch.zeros(self.M, dtype=torch.int64, device=self.device))
        # histogram fallback
        cmass = self._hist_mass.cumsum(1)
        ccount = self._hist_count.cumsum(1)
        idx = (cmass < 0.5).sum(1).clamp(max=_HIST_BINS - 1)
        before_m = torch.where(idx > 0, cmass.gather(1, (idx - 1).clamp(min=0)[:, None])[:, 0],
                               torch.zeros_like(cmass[:, 0]))
        before_c = torch.where(idx > 0, ccount.gather(1, (idx - 1).clamp(min=0)[:, None])[:, 0],
                               torch.zeros_like(ccount[:, 0]))
        bin_m = self._hist_mass.gather(1, idx[:, None])[:, 0]
        bin_c = self._hist_count.gather(1, idx[:, None])[:, 0]
        need = torch.ceil((0.5 - before_m) / (bin_m / bin_c.clamp(min=1)).clamp(min=1e-300))
        n50_hist = (before_c + need.clamp(min=1)).long()
        n50 = torch.where(n50_exact > 0, n50_exact, n50_hist)
        k = self.topk
        return {"participation": participation, "n50": n50, "topk_weights": tw[:, :k],
                "topk_ids": self._tk_id[:, :k]}
