"""Training throughput (images per second) of each architecture on this machine.

Runs the real training loop (``lemmse.train.train_model``: noise, pre-inverse, forward,
backward, AdamW, gradient clipping, EMA) on synthetic in-memory batches shaped like
FashionMNIST (1×28×28) and CIFAR-10 / FFHQ-32 (3×32×32).

    python benchmarks/bench_train.py                     # P = 5, default (CPU-sized) widths
    python benchmarks/bench_train.py --width reference   # the ≈ 2–10 M-parameter reference widths
    python benchmarks/bench_train.py --threads 1 --no-tune
    python benchmarks/bench_train.py --compare-compile --batch-size 32 --threads 2
                                                         # eager vs torch.compile, paired
    python benchmarks/bench_train.py --task superresolution --threads 2 --batch-size 32 \
        --archs unet --width 16                          # x2 SR: HR images as above, LR input

Timings depend on what else runs on the machine: run it on an idle one.
"""

from __future__ import annotations

import argparse
import time

import torch

from lemmse.nets import ARCHS, count_parameters, make_model
from lemmse.train import (TASK_FACTORS, TASKS, TrainConfig, resolve_device, train_model,
                          tune_allocator)

SHAPES = {"fashion-mnist (1x28x28)": (1, 28, 28), "cifar10/ffhq32 (3x32x32)": (3, 32, 32)}


def bench(arch, shape, args, compile=False) -> tuple[int, float]:
    """Steady-state images/s: the best of ``repeats`` differences between a run to
    ``warmup + steps`` and a run to ``warmup`` steps (each call builds, and with ``compile``
    compiles, its model again: the difference leaves that out)."""
    n = max(args.batch_size * 4, 256)
    data = torch.rand((n, *shape), generator=torch.Generator().manual_seed(0))
    config = TrainConfig(
        dataset="synthetic",
        n_train=n,
        task=args.task,
        arch=arch,
        patch_size=args.patch_size,
        width=args.width,
        steps=args.warmup + args.steps,
        batch_size=args.batch_size,
        device=args.device,
        checkpoint_every=0,
        compile=compile,
    )
    factor = TASK_FACTORS.get(args.task, 1)
    model = make_model(arch, shape[0], args.patch_size, config.width, factor=factor)
    params = count_parameters(model)
    train_model(config, data=data, progress=False, until_step=args.warmup)  # warm-up (allocator, kernels)
    sync = torch.cuda.synchronize if resolve_device(args.device).type == "cuda" else (lambda: None)

    def seconds(until):
        sync()
        t0 = time.perf_counter()
        train_model(config, data=data, progress=False, until_step=until)
        sync()
        return time.perf_counter() - t0

    best = 0.0
    for _ in range(args.repeats):
        dt = seconds(args.warmup + args.steps) - seconds(args.warmup)
        best = max(best, args.steps * args.batch_size / max(dt, 1e-9))
    return params, best


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    p.add_argument("--task", default="denoising", choices=tuple(TASKS),
                   help="the training task (default: denoising); the data shapes are the HR images")
    p.add_argument("--patch-size", type=int, default=5)
    p.add_argument("--width", default=None, help="integer, 'default' or 'reference'")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20, help="timed steps per repeat")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2, help="report the best of this many runs")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-tune", action="store_true", help="do not call lemmse.train.tune_allocator()")
    p.add_argument("--compile", action="store_true", help="train through torch.compile (TrainConfig.compile)")
    p.add_argument("--compare-compile", action="store_true",
                   help="eager and torch.compile side by side, alternating in one process")
    args = p.parse_args(argv)
    if args.width not in (None, "default", "reference"):
        args.width = int(args.width)
    if args.threads:
        torch.set_num_threads(args.threads)
    tuned = False if args.no_tune else tune_allocator()
    device = resolve_device(args.device)
    print(
        f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, "
        f"allocator tuned: {tuned}, task {args.task}, P = {args.patch_size}, "
        f"batch {args.batch_size}, width {args.width or 'default'}"
    )
    if args.compare_compile:
        print(f"{'arch':<10} {'data':<26} {'params':>10} {'eager':>8} {'compiled':>9} {'speed-up':>9}"
              "   (images/s)")
        for name, shape in SHAPES.items():
            for arch in args.archs:
                params, eager = bench(arch, shape, args)
                _, compiled = bench(arch, shape, args, compile=True)
                print(f"{arch:<10} {name:<26} {params:>10,} {eager:>8.0f} {compiled:>9.0f} "
                      f"{compiled / eager:>8.2f}x", flush=True)
        return
    print(f"{'arch':<10} {'data':<26} {'params':>10} {'images/s':>10}")
    for name, shape in SHAPES.items():
        for arch in args.archs:
            params, speed = bench(arch, shape, args, compile=args.compile)
            print(f"{arch:<10} {name:<26} {params:>10,} {speed:>10.0f}", flush=True)


if __name__ == "__main__":
    main()
