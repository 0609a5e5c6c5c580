"""The launcher side of :mod:`lemmse.distributed` (book chapter 7, "Beyond one machine"): the
process group of a ``torchrun`` launch (:func:`process_group`), a rank's shard of a data set
(:func:`load_shard`), the outputs of an estimator for a whole data-set split with its training
set sharded (:func:`estimate_split`), and the ``python -m lemmse shard`` subcommand that writes
them to a file.  The public names are re-exported by :mod:`lemmse.distributed`.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import numbers
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

def load_shard(name, split="train", n=None, *, rank=None, world=None, process_group=None,
               root=None):
    """The images of this rank's :func:`shard_range` of the first ``n`` images of a data set
    split (``rank``/``world`` default to the process group's); ``(shard, start)``."""
    from lemmse.data import load_dataset
    from lemmse.distributed import _rank_world, shard_range

    if rank is None or world is None:
        rank, world = _rank_world(process_group)
    x = load_dataset(name, split, n=n, root=root)
    a, b = shard_range(x.shape[0], rank, world)
    return x[a:b].clone(), a


@contextlib.contextmanager
def process_group(device="cpu", timeout=300.0):
    """The process group of a ``torchrun`` launch (its ``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ...), or a group of one process without ``torchrun``; gloo on the CPU,
    NCCL for ``device="cuda"`` (one GPU per process, ``LOCAL_RANK``).  Yields ``(rank, world)``
    and destroys the group on exit.  ``timeout`` (seconds) bounds every collective, so a rank
    that dies makes the others fail instead of waiting."""
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if not (isinstance(timeout, numbers.Real) and 0 < timeout < math.inf):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device='cuda' but no GPU is available; use device='cpu'")
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    backend = "nccl" if device == "cuda" else "gloo"
    kw = {"timeout": datetime.timedelta(seconds=float(timeout))}
    if "RANK" not in os.environ:  # not under torchrun: a world of one
        kw.update(store=dist.HashStore(), rank=0, world_size=1)
    dist.init_process_group(backend, **kw)
    try:
        yield dist.get_rank(), dist.get_world_size()
    finally:
        dist.destroy_process_group()


def estimate_split(dataset, *, split="test", n_images=8, sigmas=(0.2,), n_train=None,
                   task="denoising", physics="agnostic", estimator="lemmse", patch_size=5,
                   seed=0, batch=8, device="cpu", root=None, process_group=None):
    """The outputs of an estimator for the first ``n_images`` of ``split``, its training set
    (the first ``n_train`` training images) sharded over the process group (collective).

    The measurements are those of the experiments (:mod:`lemmse.experiments`: one noise
    generator per image, seeded by ``noise_seed(split, σ, index, seed)``).  Returns, on every
    rank, a dict: ``x`` ``[n, C, H, W]``, ``y`` and ``x_hat`` ``[S, n, C, H, W]`` (one per σ),
    ``sigma`` ``[S]``, ``config`` (the arguments, ``n_train`` and ``world``) and ``seconds``.
    """
    import time

    from lemmse.distributed import Sharded, _rank_world
    from lemmse.estimators import LEMMSE, MMSE, LocalMMSE
    from lemmse.experiments.evaluation import _measure
    from lemmse.tasks import PHYSICS, make_operator

    classes = {"lemmse": LEMMSE, "local": LocalMMSE, "mmse": MMSE}
    if estimator not in classes:
        raise ValueError(f"estimator must be one of {tuple(classes)}, got {estimator!r}")
    if physics not in PHYSICS:
        raise ValueError(f"physics must be one of {tuple(PHYSICS)}, got {physics!r}")
    if task == "superresolution":
        raise ValueError("task='superresolution' is not supported by the sharded estimators")
    for name, v in (("n_images", n_images), ("batch", batch)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    rank, world = _rank_world(process_group)
    shard, _ = load_shard(dataset, "train", n_train, rank=rank, world=world, root=root)
    from lemmse.data import load_dataset

    x = load_dataset(dataset, split, n=n_images, root=root)
    op = make_operator(task, x.shape[1:])
    kw = {} if estimator == "mmse" else {"patch_size": patch_size}
    t0 = time.perf_counter()
    est = Sharded(classes[estimator], shard.to(device), op, preinverse=PHYSICS[physics],
                  process_group=process_group, **kw)
    ys, outs = [], []
    for sigma in sigmas:
        y = _measure(op, x, split, sigma, seed).to(device)
        ys.append(y.cpu())
        outs.append(torch.cat([est(y[i:i + batch], sigma).cpu()
                               for i in range(0, y.shape[0], batch)]))
    config = dict(dataset=dataset, split=split, n_images=int(x.shape[0]), n_train=est.N,
                  task=task, physics=physics, estimator=estimator, patch_size=patch_size,
                  seed=seed, world=world)
    return {"x": x, "y": torch.stack(ys), "x_hat": torch.stack(outs),
            "sigma": torch.tensor([float(s) for s in sigmas]), "config": config,
            "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------------------- the subcommand
def add_shard_command(sub):
    """Register ``python -m lemmse shard`` on the subparsers ``sub`` of lemmse.cli."""
    from lemmse.data import DATASETS
    from lemmse.tasks import PHYSICS, TASKS

    p = sub.add_parser(
        "shard",
        help="LE-MMSE outputs for a data set split, the training set sharded over the "
             "processes of torchrun -> .pt",
        description="Every process (torchrun --nproc-per-node K python -m lemmse shard ...; "
                    "alone, one process) holds 1/K of the training set; the outputs "
                    "(lemmse.distributed.estimate_split) are written by rank 0.",
    )
    p.add_argument("--dataset", choices=DATASETS, required=True)
    p.add_argument("--split", choices=("train", "test"), default="test", help="(default: test)")
    p.add_argument("--n-images", type=int, default=8, help="first images of the split (default: 8)")
    p.add_argument("--sigma", type=float, nargs="+", default=[0.2], help="(default: 0.2)")
    p.add_argument("--n-train", type=int, default=None, help="first training images (default: all)")
    p.add_argument("--task", choices=[t for t in TASKS if t != "superresolution"],
                   default="denoising")
    p.add_argument("--physics", choices=tuple(PHYSICS), default="agnostic")
    p.add_argument("--estimator", choices=("lemmse", "local", "mmse"), default="lemmse")
    p.add_argument("--patch-size", type=int, default=5, help="(default: 5)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default: 0)")
    p.add_argument("--batch", type=int, default=8, help="query images per call (default: 8)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cpu: gloo; cuda: NCCL, one GPU per process (default: cpu)")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds any collective may wait for the other processes (default: 600)")
    p.add_argument("--out", type=Path, required=True, help=".pt file, written atomically")
    p.add_argument("--data-root", default=None,
                   help="data folder (default: $LEMMSE_DATA or ~/.cache/lemmse/data)")
    p.set_defaults(func=run_shard_command)


def run_shard_command(args) -> int:
    from lemmse._io import atomic_path
    from lemmse.distributed import ShardError

    with process_group(args.device, args.timeout) as (rank, world):
        try:
            out = estimate_split(args.dataset, split=args.split, n_images=args.n_images,
                                 sigmas=args.sigma, n_train=args.n_train, task=args.task,
                                 physics=args.physics, estimator=args.estimator,
                                 patch_size=args.patch_size, seed=args.seed, batch=args.batch,
                                 device=args.device, root=args.data_root)
        except ShardError as err:
            print(f"error (rank {rank}): {err}", file=sys.stderr)
            return 1
        if rank == 0:
            with atomic_path(args.out) as tmp:
                torch.save(out, tmp)
            c = out["config"]
            print(f"{c['estimator']} {c['task']} {c['physics']}: {c['n_images']} {c['split']} "
                  f"images x {len(args.sigma)} sigma, {c['n_train']} training images over "
                  f"{world} processes, {out['seconds']:.1f} s; wrote {args.out}")
    return 0
