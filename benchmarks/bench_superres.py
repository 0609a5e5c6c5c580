"""Time of the super-resolution LE-MMSE against the denoising LE-MMSE on the same LR problem.

Run:  .venv/bin/python benchmarks/bench_superres.py       (needs the data under LEMMSE_DATA)

For FashionMNIST (28 → 14, N = 10 000) and CIFAR-10 (32 → 16, N = 4 000), ×2, P = 5, 8 test
images at σ = 0.1, in one process, each call timed after a warm-up call, best of 3:

- ``sr auto``: ``LEMMSE(train, SuperResolution(2))`` as it chooses its runs;
- ``sr attention`` and ``sr sliding``: the two ways forced (``algorithm=``);
- ``denoise LR``: the denoising LE-MMSE on the LR training images (the same keys and the same
  distances, one value channel per image channel): the cost floor of one run.

Printed: seconds per call, the runs each took (``lemmse.superres`` docstring), and the ratio to
the denoising LE-MMSE on the LR problem.
"""

from __future__ import annotations

import time

import torch

import lemmse


def best_of(f, repeat=3):
    f()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    torch.manual_seed(0)
    op = lemmse.SuperResolution(2)
    print(f"threads {torch.get_num_threads()}")
    for name, n in (("fashion-mnist", 10_000), ("cifar10", 4_000)):
        train = lemmse.load_dataset(name, split="train", n=n)
        x = lemmse.load_dataset(name, split="test", n=8)
        y = op.measure(x, 0.1, torch.Generator().manual_seed(0))
        base = best_of(lambda: lemmse.LEMMSE(op.A(train), patch_size=5)(y, 0.1))
        print(f"{name}: N = {n}, LR {tuple(y.shape[1:])}, 8 images, P = 5, sigma = 0.1")
        print(f"  denoise LR     {base:6.2f} s")
        for alg in ("auto", "attention", "sliding"):
            est = lemmse.LEMMSE(train, op, patch_size=5, algorithm=alg)
            t = best_of(lambda: est(y, 0.1))
            runs = ", ".join(f"{a} x{len(i)}" for i, a in est._groups)
            print(f"  sr {alg:<11} {t:6.2f} s  ({len(est._groups)} runs: {runs}; "
                  f"{t / base:.1f}x the LR denoising)")


if __name__ == "__main__":
    main()
