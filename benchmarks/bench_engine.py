"""Benchmark of the LE-MMSE engine against the machine's own matrix-multiply throughput.

Run:  .venv/bin/python benchmarks/bench_engine.py            (the issue's settings, 16 images each
                                                              except the single-image one; ~10 min
                                                              on 2 cores)
      .venv/bin/python benchmarks/bench_engine.py --full     (adds FashionMNIST N=60 000 x 16 images)
Needs the data under LEMMSE_DATA (or ../shared/data).

For each setting it prints
- the LE-MMSE throughput in GFLOP/s, counted as 2 * queries * keys * D (the distance work only),
  and which path computed it (``slide``: the sliding-window kernel, whose real work per pair is
  about 2C + 2P additions, so its GFLOP/s is an equivalent figure; ``attention``: the patch
  attention of lemmse.engine) with its (query pixel, key) pairs per second;
- the GFLOP/s of a square fp32 torch matrix product (2048 x 2048) measured in the same run, and
  the ratio of the two;
- the time of a plain baseline written here (chunked GEMM + exp + running max, no fusion) on
  the same problem restricted to the first ``--baseline-n`` training images, the LE-MMSE time on
  that same restricted problem, and the speed-up;
- the peak resident memory during the LE-MMSE call, in a fresh process that runs only that
  setting (the peak mark is reset after the data is loaded); it includes the interpreter, torch
  and the training images, whose size the RSS before the call shows;
- the max abs pixel error against float64 (``dtype=torch.float64``, torch back-end) on 2 test
  images and the first ``--error-n`` training images, at the benchmark's sigma.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

import torch

import lemmse
from lemmse.estimators import extract_patches

SETTINGS = {
    # name: (dataset, task, physics, P, N, images)
    "fmnist-denoise-N10k": ("fashion-mnist", "denoising", "identity", 5, 10_000, 16),
    "fmnist-blur-aware-N10k": ("fashion-mnist", "blur", "inverse", 5, 10_000, 16),
    "fmnist-denoise-N60k-1img": ("fashion-mnist", "denoising", "identity", 5, 60_000, 1),
    "cifar-denoise-P11": ("cifar10", "denoising", "identity", 11, 10_000, 16),
    "cifar-blur-aware-P11": ("cifar10", "blur", "inverse", 11, 10_000, 16),
}
FULL = {
    "fmnist-denoise-N60k": ("fashion-mnist", "denoising", "identity", 5, 60_000, 16),
    "fmnist-blur-aware-N60k": ("fashion-mnist", "blur", "inverse", 5, 60_000, 16),
}


def matmul_gflops(n=2048, repeats=10):
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n ** 3 * repeats / (time.perf_counter() - t) / 1e9


def plain_baseline(est, y, sigma, row_chunk=1024, col_chunk=16384):
    """Chunked GEMM + exp + running max over the same keys as ``est`` (agnostic or whitened)."""
    q = est.geometry.patches(est._query_images(y)).reshape(-1, est.D)
    k = est.geometry.patches(est._keys_images(est.train)).reshape(-1, est.D)
    v = est.train.flatten(2).transpose(1, 2).reshape(-1, est.C)
    kk = 0.5 * (k * k).sum(1)
    out = torch.empty(q.shape[0], est.C)
    for r0 in range(0, q.shape[0], row_chunk):
        qr = q[r0:r0 + row_chunk]
        m = torch.full((qr.shape[0], 1), -math.inf)
        den = torch.zeros(qr.shape[0], 1)
        num = torch.zeros(qr.shape[0], est.C)
        for c0 in range(0, k.shape[0], col_chunk):
            s = (qr @ k[c0:c0 + col_chunk].T - kk[c0:c0 + col_chunk]) / sigma ** 2
            m_new = torch.maximum(m, s.max(1, keepdim=True).values)
            # clamped like the engine: exp of logits below -87 is a denormal slow path
            w = torch.exp((s - m_new).clamp_(min=-87.0))
            scale = torch.exp(m - m_new)
            den = den * scale + w.sum(1, keepdim=True)
            num = num * scale + w @ v[c0:c0 + col_chunk]
            m = m_new
        out[r0:r0 + row_chunk] = num / den
    return out


def _status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    return float("nan")


def _rss_mib():
    return _status("VmRSS")


def _reset_peak():
    """Reset the kernel's peak-RSS mark (Linux), so that data loading is not counted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_mib():
    hwm = _status("VmHWM")
    return hwm if hwm == hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_problem(setting, n_train=None, n_images=None):
    dataset, task, physics, P, N, B = setting
    N = N if n_train is None else n_train
    B = B if n_images is None else n_images
    try:
        train = lemmse.load_dataset(dataset, "train", n=N)
    except ValueError:  # fewer images here than the setting asks for (partial CIFAR-10 copy)
        train = lemmse.load_dataset(dataset, "train")
    x = lemmse.load_dataset(dataset, "test", n=B)
    shape = tuple(train.shape[1:])
    op = lemmse.Denoising() if task == "denoising" else lemmse.Blur.gaussian(shape, 1.0)
    return train, x, op, physics, P


def run_setting(name, setting, args):
    torch.manual_seed(0)
    train, x, op, physics, P = make_problem(setting)
    g = torch.Generator().manual_seed(0)
    y = op.measure(x, args.sigma, generator=g)
    est = lemmse.LEMMSE(train, op, patch_size=P, preinverse=physics)
    D = est.D
    queries = y.shape[0] * est.H * est.W
    keys = train.shape[0] * est.H * est.W
    est(y[:1], args.sigma)  # warm-up (kernel compile / load)
    base_mib = _rss_mib()
    _reset_peak()
    t = time.perf_counter()
    x_hat = est(y, args.sigma)
    t_le = time.perf_counter() - t
    path = getattr(est, "_last_path", "attention")  # "slide": the sliding-window kernel
    gflops = 2 * queries * keys * D / t_le / 1e9
    peak = _peak_mib()  # the process's peak during the call (data loading excluded)
    # plain baseline vs engine on the same restricted problem
    nb = min(args.baseline_n, train.shape[0])
    est_b = lemmse.LEMMSE(train[:nb].contiguous(), op, patch_size=P, preinverse=physics)
    t = time.perf_counter()
    out_b = plain_baseline(est_b, y, args.sigma)
    t_base = time.perf_counter() - t
    t = time.perf_counter()
    out_e = est_b(y, args.sigma)
    t_eng = time.perf_counter() - t
    agree = float((out_b.view_as(out_e.permute(0, 2, 3, 1).reshape(-1, est.C))
                   - out_e.permute(0, 2, 3, 1).reshape(-1, est.C)).abs().max())
    # float64 error on a small sub-problem
    ne = min(args.error_n, train.shape[0])
    e32 = lemmse.LEMMSE(train[:ne].contiguous(), op, patch_size=P, preinverse=physics)
    e64 = lemmse.LEMMSE(train[:ne].double(), op, patch_size=P, preinverse=physics,
                        backend="torch")
    err = float((e32(y[:2], args.sigma).double() - e64(y[:2].double(), args.sigma)).abs().max())
    return {"name": name, "D": D, "N": train.shape[0], "images": y.shape[0],
            "queries": queries, "keys": keys, "time_s": t_le, "gflops": gflops,
            "baseline_n": nb, "baseline_s": t_base, "engine_small_s": t_eng,
            "speedup": t_base / t_eng, "baseline_agree": agree, "err_f64": err,
            "error_n": ne, "peak_mib": peak, "before_mib": base_mib, "backend": lemmse.engine.choose_backend(
                D, est.C, torch.float32, torch.device("cpu")),
            "path": path, "pairs_per_s": queries * keys / t_le,
            "psnr_mean": float(lemmse.psnr(x_hat.clamp(0, 1), x).mean())}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--full", action="store_true", help="add the long settings")
    p.add_argument("--only", nargs="*", help="run only these settings")
    p.add_argument("--sigma", type=float, default=0.2)
    p.add_argument("--baseline-n", type=int, default=300)
    p.add_argument("--error-n", type=int, default=200)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    settings = dict(SETTINGS, **(FULL if args.full else {}))
    if args.child:  # one setting, in a fresh process (for its own peak memory)
        print(json.dumps(run_setting(args.child, settings[args.child], args)))
        return
    if "LEMMSE_DATA" not in os.environ:
        here = os.path.dirname(os.path.abspath(__file__))
        shared = os.path.join(here, "..", "..", "shared", "data")
        if os.path.isdir(shared):
            os.environ["LEMMSE_DATA"] = os.path.abspath(shared)
    names = args.only or list(settings)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, sigma={args.sigma}, "
          f"native kernels: {lemmse.engine.load_kernel() is not None} "
          f"(instruction set: {lemmse._native.isa()})")
    mm = [matmul_gflops()]
    rows = []
    for name in names:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", name,
               "--sigma", str(args.sigma), "--baseline-n", str(args.baseline_n),
               "--error-n", str(args.error_n)] + (["--full"] if args.full else [])
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            print(f"{name}: FAILED\n{res.stderr[-2000:]}")
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        mm.append(matmul_gflops())
        rows.append(r)
        print(f"{name:28s} D={r['D']:4d} N={r['N']:6d} imgs={r['images']:3d} {r['backend']:6s} "
              f"time {r['time_s']:7.2f} s  {r['gflops']:6.1f} GFLOP/s  "
              f"baseline x{r['speedup']:.1f} ({r['baseline_s']:.2f} s vs {r['engine_small_s']:.2f} s"
              f" on N={r['baseline_n']})  err64 {r['err_f64']:.1e}  peak {r['peak_mib']:.0f} MiB"
              f" (RSS before the call {r['before_mib']:.0f} MiB)  matmul {mm[-1]:.0f} GFLOP/s",
              flush=True)
        print(f"{'':28s} path {r.get('path', '?')}: {r.get('pairs_per_s', float('nan')):.3e} "
              f"(query pixel, key) pairs/s (GFLOP/s counts 2·D flops per pair whatever the path)",
              flush=True)
    ref = sorted(mm)[len(mm) // 2]
    print(f"\nfp32 matmul 2048^2: median {ref:.1f} GFLOP/s over {len(mm)} measurements "
          f"(min {min(mm):.1f}, max {max(mm):.1f})")
    print(f"{'setting':28s} {'GFLOP/s':>8s} {'ratio':>6s} {'vs plain':>8s} {'peak MiB':>9s} "
          f"{'err f64':>8s}")
    for r in rows:
        print(f"{r['name']:28s} {r['gflops']:8.1f} {r['gflops'] / ref:6.2f} "
              f"{r['speedup']:7.1f}x {r['peak_mib']:9.0f} {r['err_f64']:8.1e}")


if __name__ == "__main__":
    main()
