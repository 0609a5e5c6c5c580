"""Paired A/B of one LE-MMSE call between two versions of the package (two git revisions).

Run:  .venv/bin/python benchmarks/ab_commits.py --before 664ef57            (after: the working tree)
      .venv/bin/python benchmarks/ab_commits.py --before 664ef57 --after HEAD --rounds 8
Needs the data under LEMMSE_DATA (or ../shared/data).

Timings on a shared 2-core machine drift by 5-10 % over minutes, more than most changes a
refactoring makes.  So the two versions run as separate processes (each imports its own
``lemmse``), interleaved round by round, with the order alternating (before-after, then
after-before), and each process reports the best of ``--calls`` calls after one warm-up.  The
summary is the median over rounds of each version and the median of the per-round ratios
after/before; the outputs of the two versions are compared (max |difference|).

Cases (FashionMNIST, ``--n-train`` training images, ``--images`` test images, σ = 0.2, P = 5,
Gaussian blur of std 1 px): ``aware`` (physics-aware deconvolution: the packed native attention)
and ``agnostic`` (physics-agnostic deconvolution: the sliding window).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time, torch
import lemmse
from lemmse import LEMMSE, Blur, load_dataset
case, n_train, images, calls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
train = load_dataset("fashion-mnist", split="train", n=n_train)
x = load_dataset("fashion-mnist", split="test", n=images)
op = Blur.gaussian(tuple(x.shape[1:]), 1.0)
y = op.A(x) + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
est = LEMMSE(train, op, patch_size=5, preinverse="inverse" if case == "aware" else "identity")
est(y[:1], 0.2)  # warm-up: kernels loaded, caches filled
times = []
for _ in range(calls):
    t = time.perf_counter()
    out = est(y, 0.2)
    times.append(time.perf_counter() - t)
torch.save(out, sys.argv[5])
plan = getattr(est, "last_plan", None)  # older versions: _last_path
path = plan.path if plan is not None else getattr(est, "_last_path", "?")
print(json.dumps({"best": min(times), "times": times, "path": path,
                  "module": lemmse.__file__}))
"""


def _run(tree: Path, args, out: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    env.setdefault("LEMMSE_DATA", str(ROOT.parent / "shared" / "data"))
    proc = subprocess.run([sys.executable, "-c", CHILD, args.case, str(args.n_train),
                           str(args.images), str(args.calls), str(out)],
                          env=env, cwd=tempfile.gettempdir(), capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"the run in {tree} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--before", required=True, help="git revision of the baseline")
    p.add_argument("--after", default=None, help="git revision (default: the working tree)")
    p.add_argument("--case", choices=["aware", "agnostic"], default="aware")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--calls", type=int, default=3, help="calls per process (the best counts)")
    p.add_argument("--n-train", type=int, default=4000)
    p.add_argument("--images", type=int, default=8)
    args = p.parse_args(argv)
    import torch

    with tempfile.TemporaryDirectory(prefix="lemmse-ab-") as tmp:
        tmp = Path(tmp)
        trees = {}
        for name, rev in (("before", args.before), ("after", args.after)):
            if rev is None:
                trees[name] = ROOT
                continue
            trees[name] = tmp / name
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f",
                            str(trees[name]), rev], check=True, capture_output=True)
        try:
            best = {"before": [], "after": []}
            for r in range(args.rounds):
                order = ("before", "after") if r % 2 == 0 else ("after", "before")
                for name in order:
                    res = _run(trees[name], args, tmp / f"{name}.pt")
                    best[name].append(res["best"])
                    print(f"round {r + 1}: {name:<6} best {res['best']:.3f} s  "
                          f"({res['path']}; calls {' '.join(f'{t:.2f}' for t in res['times'])})",
                          flush=True)
            diff = (torch.load(tmp / "after.pt").double() - torch.load(tmp / "before.pt").double())
        finally:
            for name, tree in trees.items():
                if tree != ROOT:
                    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                                    str(tree)], capture_output=True)
    ratios = [a / b for a, b in zip(best["after"], best["before"])]
    print(f"\n{args.case}: median before {statistics.median(best['before']):.3f} s, after "
          f"{statistics.median(best['after']):.3f} s; after/before per round: "
          f"{' '.join(f'{r:.3f}' for r in ratios)} (median {statistics.median(ratios):.3f}); "
          f"max |after - before| = {diff.abs().max().item():.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
