"""Benchmark of the sharded LE-MMSE (lemmse.distributed) on one machine.

Run:  .venv/bin/python benchmarks/bench_distributed.py                 (~2 min on 2 cores)
      .venv/bin/python benchmarks/bench_distributed.py --workers 1 2 4 8 --n-train 2000 8000
Needs FashionMNIST under LEMMSE_DATA (or ../shared/data).

It prints, for the LE-MMSE of ``--dataset`` (default FashionMNIST; denoising, ``--patch-size``
5, σ = 0.2, ``--images`` test images):

1. **processes against threads**, on the same problem (``--n-train[-1]`` training images):
   ``W`` processes × 1 thread (gloo, the training set sharded by :func:`shard_range`)
   against 1 process × ``W`` threads (the plain estimator); the time of one call (the median
   of ``--repeats``, after one warm-up call), without the start of the processes and the
   construction of the estimators, which are printed apart (the fastest call is printed too:
   on a shared machine it is the one least disturbed by other work);
2. **time against N** at fixed workers (``--scaling-workers`` processes × 1 thread), for every
   ``--n-train``, and the least-squares line ``t = a + b N``; ``b`` per query image and per
   worker gives the cost-model input *seconds per query image per training image per core*
   (and per (query pixel, key patch) pair).

The processes talk over the loopback (127.0.0.1, a free port); rank 0's estimate is compared
with the single-process one (max abs difference; both centred on the float64 mean of the set).
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import statistics
import sys
import time
from queue import Empty

import torch
import torch.multiprocessing as mp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

SIGMA = 0.2


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _problem(dataset, n_train, images, root):
    from lemmse import load_dataset

    train = load_dataset(dataset, "train", n=n_train, root=root)
    x = load_dataset(dataset, "test", n=images, root=root)
    g = torch.Generator().manual_seed(0)
    return train, x + SIGMA * torch.randn(x.shape, generator=g)


def _rank(rank, world, port, dataset, P, n_train, images, repeats, root, queue):
    """One process of the sharded run: times of construction and of each call (rank 0)."""
    import torch.distributed as dist

    from lemmse import LEMMSE
    from lemmse.distributed import Sharded, shard_range

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=600))
    train, y = _problem(dataset, n_train, images, root)
    a, b = shard_range(n_train, rank, world)
    dist.barrier()
    t = time.perf_counter()
    est = Sharded(LEMMSE, train[a:b], patch_size=P)
    build = time.perf_counter() - t
    times = []
    for _ in range(repeats + 1):  # the first call warms up
        dist.barrier()
        t = time.perf_counter()
        x_hat = est(y, SIGMA)
        dist.barrier()
        times.append(time.perf_counter() - t)
    if rank == 0:
        queue.put((build, times[1:], x_hat.numpy()))  # by value: this process ends next
    dist.destroy_process_group()


def sharded(world, dataset, P, n_train, images, repeats, root):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    t = time.perf_counter()
    procs = [ctx.Process(target=_rank, args=(r, world, port, dataset, P, n_train, images,
                                              repeats, root, queue)) for r in range(world)]
    for p in procs:
        p.start()
    while True:  # rank 0's result, or an error if a rank exits without one
        try:
            build, times, x_hat = queue.get(timeout=1.0)
            break
        except Empty:
            if any(p.exitcode not in (None, 0) for p in procs):
                for p in procs:
                    p.kill()
                raise RuntimeError(f"a rank failed: exit codes {[p.exitcode for p in procs]}")
    x_hat = torch.from_numpy(x_hat)
    for p in procs:
        p.join()
    if any(p.exitcode for p in procs):
        raise RuntimeError(f"a rank failed: exit codes {[p.exitcode for p in procs]}")
    return dict(build=build, call=statistics.median(times), best=min(times), calls=times,
                x_hat=x_hat, wall=time.perf_counter() - t)


def threaded(threads, dataset, P, n_train, images, repeats, root):
    from lemmse import LEMMSE

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        train, y = _problem(dataset, n_train, images, root)
        t = time.perf_counter()
        # centred on the float64 mean, as the ranks are: the float32 estimator moves by its own
        # rounding error (9e-6 for CIFAR-10 at P = 17) when the offset moves by one ulp
        est = LEMMSE(train, patch_size=P, offset=train.double().mean(dim=(0, 2, 3)))
        build = time.perf_counter() - t
        times = []
        for _ in range(repeats + 1):
            t = time.perf_counter()
            x_hat = est(y, SIGMA)
            times.append(time.perf_counter() - t)
    finally:
        torch.set_num_threads(old)
    return dict(build=build, call=statistics.median(times[1:]), best=min(times[1:]),
                calls=times[1:], x_hat=x_hat)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[2],
                    help="W for 'W processes x 1 thread' vs '1 process x W threads' (default: 2)")
    ap.add_argument("--n-train", type=int, nargs="+", default=[1000, 2000, 4000],
                    help="training set sizes of the scaling law (default: 1000 2000 4000)")
    ap.add_argument("--scaling-workers", type=int, default=2, help="(default: 2)")
    ap.add_argument("--images", type=int, default=2, help="query images (default: 2)")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per run (default: 3)")
    ap.add_argument("--dataset", choices=("fashion-mnist", "cifar10", "ffhq32"),
                    default="fashion-mnist")
    ap.add_argument("--patch-size", type=int, default=5, help="(default: 5)")
    ap.add_argument("--data-root", default=None)
    a = ap.parse_args(argv)
    N = a.n_train[-1]
    P = a.patch_size
    print(f"{a.dataset} LE-MMSE denoising, P={P}, sigma={SIGMA}, {a.images} query images; "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs; median of {a.repeats} calls")
    print(f"\n1. processes vs threads, N = {N}")
    print(f"{'workers':>7} {'procs x 1 thr (s)':>18} {'1 proc x thr (s)':>17} {'ratio':>6} "
          f"{'best p/t (s)':>13} {'build p/t (s)':>14} {'start+all (s)':>13} {'max |diff|':>10}")
    for w in a.workers:
        s = sharded(w, a.dataset, a.patch_size, N, a.images, a.repeats, a.data_root)
        t = threaded(w, a.dataset, a.patch_size, N, a.images, a.repeats, a.data_root)
        diff = float((s["x_hat"] - t["x_hat"]).abs().max())
        print(f"{w:7d} {s['call']:18.3f} {t['call']:17.3f} {t['call'] / s['call']:6.2f} "
              f"{s['best']:6.3f}/{t['best']:<6.3f} {s['build']:6.3f}/{t['build']:<7.3f} "
              f"{s['wall']:13.1f} {diff:10.1e}")
    w = a.scaling_workers
    print(f"\n2. time vs N, {w} processes x 1 thread")
    print(f"{'N':>7} {'call (s)':>9} {'best (s)':>9} {'calls (s)':>24}")
    pts = []
    for n in a.n_train:
        s = sharded(w, a.dataset, a.patch_size, n, a.images, a.repeats, a.data_root)
        pts.append((n, s["best"]))
        print(f"{n:7d} {s['call']:9.3f} {s['best']:9.3f} "
              f"{' '.join(f'{c:.3f}' for c in s['calls']):>24}")
    if len(pts) >= 2:
        ns = torch.tensor([p[0] for p in pts], dtype=torch.float64)
        ts = torch.tensor([p[1] for p in pts], dtype=torch.float64)
        A = torch.stack([torch.ones_like(ns), ns], 1)
        c0, b = torch.linalg.lstsq(A, ts[:, None]).solution[:, 0].tolist()
        per = b * w / a.images
        H, W = s["x_hat"].shape[-2:]
        print(f"fit of the best calls: t = {c0:.3f} s + {b * 1e3:.4f} ms x N")
        print(f"per query image, per training image, per core: {per:.3e} s; per (query pixel, "
              f"key patch) pair: {per / (H * W) ** 2 * 1e9:.3f} ns")
        print(f"cost model: 60 000 training images x 1 query image on k cores ~ "
              f"{per * 60000:.1f}/k s")

if __name__ == "__main__":
    main()
