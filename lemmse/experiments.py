"""The experiment grid of the book's Experiments part: trained networks against the LE-MMSE.

A declarative grid (:class:`Experiment`, one trained network each) at three scales
(:class:`Scale`): ``"cpu"``, sized to train in minutes on a 2-core CPU, ``"cpu-long"`` (the same
networks trained 16 times longer), and ``"reference"``,
the reference setup (reference widths, 24 000 steps of 256 images; for a GPU). Functions:

- :func:`train_grid`: train (or load) the networks of the grid (``lemmse.train.train_or_load``);
- :func:`export_grid`: copy their EMA weights (fp16) to ``results/checkpoints`` with a
  ``MANIFEST.json`` (config, command, data, steps, sha256);
- :func:`evaluate_agreement`: for each setting, split and σ, the mean over ``n_images``
  images of PSNR(net, LE-MMSE), PSNR(net, truth) and PSNR(LE-MMSE, truth), where the network and
  the LE-MMSE see the same measurement ``y = A x + σ e`` and the LE-MMSE uses the network's own
  ``n_train`` training images (book chapter "Networks vs LE-MMSE");
- :func:`write_agreement_csv` / :func:`read_agreement_csv`: ``results/agreement.csv``;
- :func:`evaluate_patch_size`: each network against the LE-MMSEs of several patch sizes
  (``results/patch_size.csv``, book chapter "What the agreement reveals");
- :func:`evaluate_budget`: the agreement of the networks trained for each of several budgets
  (``results/training_budget.csv``, chapter "Networks vs LE-MMSE");
- :func:`evaluate_groups`: group-averaged networks against the LE-MMSE of each group orbit
  (``results/groups.csv``, chapter "Beyond translations").

Three grids: :data:`GRID` (the 25 networks of the agreement tables), :data:`ANALYSIS` (U-Nets on
n = 100 and 1 000 images, a ResNet on 1 000; U-Nets and PatchMLPs with P = 3, 7, 9) and
:data:`SR_GRID` (×2 super-resolution networks, FashionMNIST 28→14 and CIFAR-10 32→16, the three
architectures; book chapter 15), selected with ``--grid`` (``main``, ``analysis``, ``sr``).
``--steps`` and ``--group`` train and select variants of any of them.

Command line (one command per step; every command also takes ``--dataset``, ``--task``,
``--arch``, ``--physics`` filters)::

    python -m lemmse experiment train --scale cpu            # here, on the CPU
    python -m lemmse experiment export --scale cpu           # -> results/checkpoints
    python -m lemmse experiment agreement --scale cpu --out results/agreement.csv
    python -m lemmse experiment patch-size --scale cpu --grid all --dataset fashion-mnist --task denoising --arch unet patchmlp --n-train 10000
    python -m lemmse experiment budget --dataset fashion-mnist --task denoising --physics agnostic
    python -m lemmse experiment groups --dataset fashion-mnist --task denoising --n-train 1000 --arch unet resnet
    python -m lemmse experiment train --grid sr --dataset fashion-mnist   # x2 super-resolution
    python -m lemmse experiment export --grid sr --dataset fashion-mnist

At the reference scale, on a GPU (``device="auto"`` picks CUDA) with the full data sets, one
command reruns each experiment (here FashionMNIST denoising with the U-Net)::

    python -m lemmse experiment train --scale reference --dataset fashion-mnist --task denoising --arch unet

and ``python -m lemmse experiment agreement --scale reference --n-images 100`` evaluates it as
the reference setup does (100 images per split). :meth:`Experiment.command` prints the command
of any experiment.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import torch

from lemmse._io import atomic_path, write_text_atomic
from lemmse.data import load_dataset
from lemmse.groups import GROUPS as GROUPS_OF_NETS
from lemmse.metrics import psnr
from lemmse.nets import ARCHS
from lemmse.train import PHYSICS, TrainConfig, checkpoint_path, load_checkpoint, make_operator, predict, train_or_load

__all__ = [
    "SIGMAS",
    "EVAL_SPLITS",
    "CSV_COLUMNS",
    "BUDGET_STEPS",
    "BUDGET_CSV_COLUMNS",
    "evaluate_budget",
    "write_budget_csv",
    "read_budget_csv",
    "GROUP_CSV_COLUMNS",
    "evaluate_groups",
    "write_groups_csv",
    "read_groups_csv",
    "Scale",
    "SCALES",
    "Experiment",
    "GRID",
    "SR_GRID",
    "SR_STEPS",
    "SR_SIGMA_MAX",
    "select",
    "train_grid",
    "export_grid",
    "find_checkpoint",
    "noise_seed",
    "evaluate_agreement",
    "lemmse_outputs",
    "eval_images",
    "evaluate_patch_size",
    "PATCH_CSV_COLUMNS",
    "ANALYSIS",
    "GRIDS",
    "write_patch_size_csv",
    "read_patch_size_csv",
    "write_agreement_csv",
    "read_agreement_csv",
    "merge_rows",
]

#: Noise levels of the agreement tables.
SIGMAS = (0.05, 0.1, 0.2, 0.5, 0.8)

#: Train images (with fresh noise) and held-out test images.
EVAL_SPLITS = ("train", "test")

#: Steps of the training-budget study (batch size and everything else as the "cpu" scale):
#: 100 to 12 800 steps of 32 images, 3 200 to 409 600 images seen (128x).
BUDGET_STEPS = (100, 400, 800, 1600, 6400, 12800)

#: Columns of ``results/training_budget.csv``, in order.
BUDGET_CSV_COLUMNS = (
    "dataset",
    "task",
    "arch",
    "physics",
    "split",
    "sigma",
    "n_train",
    "steps",
    "batch_size",
    "images_seen",
    "n_images",
    "psnr_net_lemmse",
    "psnr_net_truth",
    "psnr_lemmse_truth",
)

#: Columns of ``results/agreement.csv``, in order.
CSV_COLUMNS = (
    "dataset",
    "task",
    "arch",
    "physics",
    "split",
    "sigma",
    "n_train",
    "n_images",
    "psnr_net_lemmse",
    "psnr_net_truth",
    "psnr_lemmse_truth",
)

#: Columns of ``results/patch_size.csv`` (networks with patch size ``patch_net`` against the
#: LE-MMSE with patch size ``patch_lemmse``), in order.
PATCH_CSV_COLUMNS = (
    "dataset",
    "task",
    "arch",
    "physics",
    "split",
    "sigma",
    "n_train",
    "n_images",
    "patch_net",
    "patch_lemmse",
    "psnr_net_lemmse",
)

#: Columns of ``results/groups.csv`` (networks averaged over ``group_net`` against the LE-MMSE
#: of the orbit under ``group_lemmse``; book chapter 14), in order.
GROUP_CSV_COLUMNS = (
    "dataset",
    "task",
    "arch",
    "physics",
    "split",
    "sigma",
    "n_train",
    "n_images",
    "group_net",
    "group_lemmse",
    "psnr_net_lemmse",
    "psnr_net_truth",
    "psnr_lemmse_truth",
)

#: Where the committed (exported, fp16) checkpoints live, relative to the repository root.
RESULTS_CHECKPOINTS = Path("results") / "checkpoints"


# --------------------------------------------------------------------------- the grid


@dataclass(frozen=True)
class Scale:
    """How big the networks and the training runs of a scale are.

    Parameters
    ----------
    name : str
    widths : dict
        Width per architecture (an int, or "reference" for ``lemmse.nets.reference_width``).
    steps, batch_size, warmup_steps : int
        Passed to :class:`lemmse.train.TrainConfig`.
    n_train : dict
        Number of training images per dataset (the networks and the LE-MMSE use the same first
        ``n_train`` images).
    """

    name: str
    widths: dict
    steps: int
    batch_size: int
    warmup_steps: int
    n_train: dict


_CPU = Scale(
    name="cpu",
    widths={"unet": 16, "resnet": 32, "patchmlp": 64},
    steps=800,
    batch_size=32,
    warmup_steps=50,
    # FFHQ-32: 8 of the 10 images here train; the other 2 are the held-out "test" images
    n_train={"fashion-mnist": 10_000, "cifar10": 4_000, "ffhq32": 8},
)

#: The scales. ``"cpu"``: what ran on this project's 2-core CPU (FashionMNIST denoising:
#: 800 steps of 32 images, about 8 minutes per network at 50 images/s on one thread of
#: the shared CPU); ``"cpu-long"``: the same networks and data trained 16 times longer
#: (12 800 steps, 409 600 images seen; 11 to 20 minutes per network here with ``--compile``,
#: on a machine shared with other work), where the training-budget study of chapter 9 has the three FashionMNIST
#: denoising networks at 27.4-31.7 dB from the LE-MMSE (``results/training_budget.csv``), so
#: that its FashionMNIST denoising networks are the study's 12 800-step ones; ``"reference"``:
#: the reference setup of section 7 of ``lemmse-math.md`` (for a GPU and the full data sets).
SCALES = {
    "cpu": _CPU,
    "cpu-long": dataclasses.replace(_CPU, name="cpu-long", steps=12_800),
    "reference": Scale(
        name="reference",
        widths={"unet": "reference", "resnet": "reference", "patchmlp": "reference"},
        steps=24_000,
        batch_size=256,
        warmup_steps=100,
        n_train={"fashion-mnist": 10_000, "cifar10": 10_000, "ffhq32": 10_000},
    ),
}


def _scale(scale) -> Scale:
    if isinstance(scale, Scale):
        return scale
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(map(repr, SCALES))} or a Scale, got {scale!r}")
    return SCALES[scale]


@dataclass(frozen=True)
class Experiment:
    """One trained network of the grid: dataset × task × architecture × physics (P fixed).

    ``task`` is a key of ``lemmse.train.TASKS`` ("denoising", "inpainting" = centred 15×15
    hole, "deblurring" = Gaussian blur of std 1 px, "superresolution" = ×2 block means);
    ``physics`` "agnostic" (B = I) or "aware" (B = the pre-inverse).

    ``cpu_steps`` (None: the scale's steps) sets the optimiser steps at the "cpu" scale only
    (other scales keep theirs); ``sigma_max`` (None: the TrainConfig default, 1.0) the largest
    training σ at every scale. Both are None in :data:`GRID` and :data:`ANALYSIS`.
    """

    dataset: str
    task: str
    arch: str
    physics: str = "agnostic"
    patch_size: int = 5
    n_train: Optional[int] = None  # None: the scale's n_train for the dataset
    cpu_steps: Optional[int] = None
    sigma_max: Optional[float] = None

    def steps(self, scale="cpu") -> int:
        """Optimiser steps of this experiment at ``scale`` (before any ``--steps`` override)."""
        s = _scale(scale)
        return s.steps if self.cpu_steps is None or s.name != "cpu" else self.cpu_steps

    def config(self, scale="cpu", **overrides) -> TrainConfig:
        """The :class:`~lemmse.train.TrainConfig` of this experiment at ``scale``."""
        s = _scale(scale)
        values = dict(
            dataset=self.dataset,
            split="train",
            n_train=s.n_train[self.dataset] if self.n_train is None else self.n_train,
            task=self.task,
            physics=self.physics,
            arch=self.arch,
            patch_size=self.patch_size,
            width=s.widths[self.arch],
            steps=self.steps(s),
            batch_size=s.batch_size,
            warmup_steps=s.warmup_steps,
        )
        if self.sigma_max is not None:
            values["sigma_max"] = self.sigma_max
        values.update(overrides)
        return TrainConfig(**values)

    def as_dict(self) -> dict:
        """The fields, without ``cpu_steps`` / ``sigma_max`` when None (the manifest's entry)."""
        d = dataclasses.asdict(self)
        return {k: v for k, v in d.items() if v is not None or k not in ("cpu_steps", "sigma_max")}

    def command(self, scale="cpu", steps: Optional[int] = None, group: str = "translations") -> str:
        """The one command that (re)trains this experiment at ``scale`` (device auto).

        ``steps`` (default: the scale's) adds ``--steps``: the training-budget networks;
        ``group`` other than "translations" adds ``--group``: the group-averaged networks.
        """
        s = _scale(scale)
        extra = "" if self.patch_size == 5 else f" --patch-size {self.patch_size}"
        extra += "" if self.n_train is None else f" --n-train {self.n_train}"
        extra += "" if steps is None or steps == self.steps(s) else f" --steps {int(steps)}"
        extra += "" if group == "translations" else f" --group {group}"
        grid = "" if self in GRID else " --grid sr" if self in SR_GRID else " --grid analysis"
        return (
            f"python -m lemmse experiment train --scale {s.name}{grid} --dataset {self.dataset} "
            f"--task {self.task} --arch {self.arch} --physics {self.physics}{extra}"
        )


def _build_grid() -> tuple:
    grid = []
    # FashionMNIST: all three tasks × all three architectures, physics-agnostic ...
    for task in ("denoising", "inpainting", "deblurring"):
        for arch in ARCHS:
            grid.append(Experiment("fashion-mnist", task, arch))
    # ... and physics-aware in addition for inpainting and deconvolution.
    for task in ("inpainting", "deblurring"):
        for arch in ARCHS:
            grid.append(Experiment("fashion-mnist", task, arch, "aware"))
    # CIFAR-10 and FFHQ-32: all three tasks with the U-Net, denoising with all three.
    for dataset in ("cifar10", "ffhq32"):
        for task in ("denoising", "inpainting", "deblurring"):
            grid.append(Experiment(dataset, task, "unet"))
        for arch in ("resnet", "patchmlp"):
            grid.append(Experiment(dataset, "denoising", arch))
    return tuple(grid)


#: Every experiment of issue 5 (25 networks).
GRID = _build_grid()


def _build_analysis() -> tuple:
    exps = []
    # dataset size: the U-Net on FashionMNIST denoising with n = 100 and 1 000 (10 000 is in GRID)
    for n in (100, 1_000):
        exps.append(Experiment("fashion-mnist", "denoising", "unet", n_train=n))
    # symmetry (chapter 14): the ResNet with n = 1 000 too; both are also trained group-averaged
    # (--group d4)
    exps.append(Experiment("fashion-mnist", "denoising", "resnet", n_train=1_000))
    # patch size: U-Net and PatchMLP with P = 3, 7, 9 (P = 5 is in GRID)
    for P in (3, 7, 9):
        for arch in ("unet", "patchmlp"):
            exps.append(Experiment("fashion-mnist", "denoising", arch, patch_size=P))
    return tuple(exps)


#: The extra networks of the analysis chapter (dataset size and patch size) and of the symmetry
#: chapter (9 networks).
ANALYSIS = _build_analysis()

#: Optimiser steps (of 32 images) of the super-resolution networks at the "cpu" scale. Measured
#: ×2 SR training throughput here (``benchmarks/bench_train.py --task superresolution
#: --threads 2 --batch-size 32``, the "cpu" widths): U-Net 660 / 690, ResNet 910 / 1030,
#: PatchMLP 980 / 800 images/s on FashionMNIST / CIFAR-10; the six networks take about 25
#: minutes on an idle 2-core CPU (FashionMNIST, the chapter's main figure, gets more steps).
SR_STEPS = {"fashion-mnist": 8000, "cifar10": 5000}

#: Largest training σ of the super-resolution networks (the chapter evaluates σ <= 0.2).
SR_SIGMA_MAX = 0.5


def _build_sr_grid() -> tuple:
    return tuple(Experiment(dataset, "superresolution", arch, cpu_steps=steps,
                            sigma_max=SR_SIGMA_MAX)
                 for dataset, steps in SR_STEPS.items() for arch in ARCHS)


#: The ×2 super-resolution networks (book chapter 15): FashionMNIST (28→14, n = 10 000) and
#: CIFAR-10 (32→16, n = 4 000, all the training images here) × the three architectures, P = 5,
#: physics-agnostic, batch 32, σ ~ U[0, 0.5], :data:`SR_STEPS` steps (6 networks).
SR_GRID = _build_sr_grid()

#: Named grids for the command line (``--grid``); "all" is GRID + ANALYSIS (not SR_GRID).
GRIDS = {"main": GRID, "analysis": ANALYSIS, "all": GRID + ANALYSIS, "sr": SR_GRID}


def _as_set(name, value, allowed=None):
    if value is None:
        return None
    values = {value} if isinstance(value, str) else set(value)
    if allowed is not None:
        bad = sorted(values - set(allowed))
        if bad:
            raise ValueError(f"{name} must be among {', '.join(map(repr, allowed))}, got {', '.join(map(repr, bad))}")
    return values


def select(dataset=None, task=None, arch=None, physics=None, grid: Union[str, Sequence[Experiment]] = GRID,
           patch_size=None, n_train=None, scale="cpu") -> list:
    """The experiments of ``grid`` matching the filters (each a value, a list of values or None = all).

    ``grid`` is a sequence of experiments or a name of :data:`GRIDS` ("main", "analysis", "all",
    "sr").
    ``n_train`` filters on the number of training images the experiment uses at ``scale``.
    """
    if isinstance(grid, str):
        if grid not in GRIDS:
            raise ValueError(f"grid must be one of {', '.join(map(repr, GRIDS))}, got {grid!r}")
        grid = GRIDS[grid]
    sizes = None if patch_size is None else ({patch_size} if isinstance(patch_size, int) else set(patch_size))
    counts = None if n_train is None else ({n_train} if isinstance(n_train, int) else set(n_train))
    s = _scale(scale)
    grid = [e for e in grid if (sizes is None or e.patch_size in sizes)
            and (counts is None or (s.n_train[e.dataset] if e.n_train is None else e.n_train) in counts)]
    filters = {
        "dataset": _as_set("dataset", dataset, sorted({e.dataset for e in grid})),
        "task": _as_set("task", task, sorted({e.task for e in grid})),
        "arch": _as_set("arch", arch, ARCHS),
        "physics": _as_set("physics", physics, tuple(PHYSICS)),
    }
    return [e for e in grid if all(f is None or getattr(e, k) in f for k, f in filters.items())]


# --------------------------------------------------------------------------- training and export


def train_grid(
    scale="cpu",
    *,
    dataset=None,
    task=None,
    arch=None,
    physics=None,
    grid="main",
    patch_size=None,
    n_train=None,
    root: Union[str, os.PathLike] = "checkpoints",
    data_root=None,
    device: str = "auto",
    progress: bool = True,
    **overrides,
) -> dict:
    """Train (or load) every selected experiment at ``scale``; returns {Experiment: model}.

    Each network is ``lemmse.train.train_or_load(experiment.config(scale), root)``: nothing is
    retrained when its checkpoint exists; an interrupted run resumes. ``grid``, ``patch_size``
    and ``n_train`` select as in :func:`select`; ``overrides`` are extra TrainConfig fields.
    """
    models = {}
    for exp in select(dataset, task, arch, physics, grid, patch_size, n_train, scale):
        config = exp.config(scale, device=device, **overrides)
        models[exp] = train_or_load(config, root, data_root=data_root, progress=progress)
    return models


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_write_text(text: str, path: Path):
    write_text_atomic(path, text)


def export_grid(
    scale="cpu",
    *,
    dataset=None,
    task=None,
    arch=None,
    physics=None,
    grid="main",
    patch_size=None,
    n_train=None,
    src: Union[str, os.PathLike] = "checkpoints",
    dst: Union[str, os.PathLike] = RESULTS_CHECKPOINTS,
    **overrides,
) -> Path:
    """Export the selected finished checkpoints (EMA weights, fp16) and update ``dst/MANIFEST.json``.

    Each exported file keeps the checkpoint's name (so :func:`find_checkpoint` and
    ``train_or_load(config, dst)`` find it). The manifest maps each file name to its config,
    the command that trained it, the data it saw, its steps, training time and sha256.
    Returns the manifest's path.
    """
    from lemmse.train import export_checkpoint

    dst = Path(dst)
    manifest_path = dst / "MANIFEST.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"files": {}}
    s = _scale(scale)
    for exp in select(dataset, task, arch, physics, grid, patch_size, n_train, s):
        config = exp.config(s, **overrides)
        path = checkpoint_path(config, src)
        if not path.exists():
            raise FileNotFoundError(
                f"no finished checkpoint {path}; train it first: {exp.command(s, config.steps, config.group)}"
            )
        out = export_checkpoint(path, dst / path.name, half=True)
        ckpt = torch.load(out, map_location="cpu", weights_only=False)
        loss = ckpt["history"]["loss"]
        manifest["files"][out.name] = {
            "experiment": exp.as_dict(),
            "scale": s.name,
            "config": config.identity(),
            "command": exp.command(s, config.steps, config.group),
            "data": {
                "dataset": config.dataset,
                "split": config.split,
                "images": f"first {config.n_train} of the {config.split} split",
            },
            "steps": int(ckpt["step"]),
            "train_seconds": round(float(ckpt.get("elapsed_s", 0.0)), 1),
            "final_loss": round(float(loss[-50:].mean()), 6),
            "half": True,
            "torch_compile": bool(ckpt.get("config", {}).get("compile", False)),
            "bytes": out.stat().st_size,
            "sha256": _sha256(out),
        }
    manifest["files"] = dict(sorted(manifest["files"].items()))
    _atomic_write_text(json.dumps(manifest, indent=2) + "\n", manifest_path)
    return manifest_path


def find_checkpoint(config: TrainConfig, roots: Iterable = (RESULTS_CHECKPOINTS, "checkpoints")) -> Path:
    """The first existing checkpoint of ``config`` among ``roots`` (committed exports first)."""
    tried = []
    for root in roots:
        path = checkpoint_path(config, root)
        if path.exists():
            return path
        tried.append(str(path))
    raise FileNotFoundError(f"no checkpoint for this config; looked for {', '.join(tried)}")


# --------------------------------------------------------------------------- agreement


def noise_seed(split: str, sigma: float, index: int, seed: int = 0) -> int:
    """Seed of the noise of image ``index`` of ``split`` at ``sigma``.

    ``seed + 10**7 · [split == "test"] + 10**4 · round(1000 σ) + index``: one generator per
    image, so an image's measurement does not depend on how many images are evaluated.
    """
    if split not in EVAL_SPLITS:
        raise ValueError(f"split must be one of {EVAL_SPLITS}, got {split!r}")
    return int(seed + 10**7 * (split == "test") + 10**4 * round(1000 * float(sigma)) + int(index))


def _measure(op, x, split, sigma, seed):
    ys = []
    for k in range(x.shape[0]):
        g = torch.Generator().manual_seed(noise_seed(split, sigma, k, seed))
        ys.append(op.measure(x[k : k + 1], float(sigma), generator=g))
    return torch.cat(ys)


def _mean(t: torch.Tensor) -> float:
    return float(t.double().mean())


def eval_images(dataset: str, split: str, n_images: int, n_train: int, data_root=None) -> torch.Tensor:
    """The evaluation images of ``split``: the first ``n_images`` of the split.

    Where the data folder has no test split (FFHQ-32 here: 10 images, all in the train split by
    the reference convention), the "test" images are the held-out images of the train split that
    follow the first ``n_train`` (the networks' and the LE-MMSE's training images), at most
    ``n_images`` of them; a warning says so. Raises ValueError when there are none.
    """
    if split not in EVAL_SPLITS:
        raise ValueError(f"split must be one of {EVAL_SPLITS}, got {split!r}")
    if split == "train":
        if n_images > n_train:
            raise ValueError(f"n_images={n_images} is more than the n_train={n_train} training images")
        return load_dataset(dataset, "train", n=n_images, root=data_root)
    try:
        return load_dataset(dataset, "test", n=n_images, root=data_root)
    except ValueError as err:
        held_out = load_dataset(dataset, "train", root=data_root)[n_train : n_train + n_images]
        if held_out.shape[0] == 0:
            raise
        import warnings

        warnings.warn(f"{dataset}: {err}; using the {held_out.shape[0]} held-out train-split images "
                      f"{n_train}..{n_train + held_out.shape[0] - 1} as test images", stacklevel=2)
        return held_out


def lemmse_outputs(est, train, op, key: dict, x, split, sigma, seed=0, cache=None, images_bar=None):
    """``(y, est(y, σ))`` for the images ``x`` of ``split``, with the noise of :func:`noise_seed`.

    With ``cache`` (a folder), the LE-MMSE outputs are stored in one file per setting, split and
    σ (named by the sha256 of ``key``, σ, the seed and a fingerprint of the training images) and
    reused: since each image has its own noise, the first ``k`` stored images serve any request
    for ``k`` or fewer. A stored file whose measurements differ from the recomputed ones is
    recomputed.
    """
    y = _measure(op, x, split, sigma, seed)
    path = None
    if cache is not None:
        fingerprint = hashlib.sha256(train.contiguous().numpy().tobytes()).hexdigest()[:16]
        ident = json.dumps({**key, "split": split, "sigma": float(sigma), "seed": seed, "train": fingerprint},
                           sort_keys=True)
        path = Path(cache) / f"lemmse_{hashlib.sha256(ident.encode()).hexdigest()[:16]}.pt"
        if path.exists():
            stored = torch.load(path, map_location="cpu", weights_only=True)
            n = x.shape[0]
            if stored["x_le"].shape[0] >= n and torch.equal(stored["y"][:n], y):
                return y, stored["x_le"][:n]
    x_le = est(y, float(sigma))
    if path is not None:
        with atomic_path(path) as tmp:
            torch.save({"y": y, "x_le": x_le}, tmp)
    return y, x_le


def evaluate_agreement(
    experiments: Sequence[Experiment],
    scale="cpu",
    *,
    sigmas: Sequence[float] = SIGMAS,
    splits: Sequence[str] = EVAL_SPLITS,
    n_images: int = 8,
    roots: Iterable = (RESULTS_CHECKPOINTS, "checkpoints"),
    data_root=None,
    seed: int = 0,
    progress: bool = True,
    return_images: bool = False,
    cache: Union[str, os.PathLike, None] = None,
    **overrides,
):
    """Agreement between trained networks and the LE-MMSE of their training set.

    For each setting (dataset, task, physics), split and σ: ``x`` = the first ``n_images``
    images of the split (the training split's images are among the networks' training images;
    their noise is fresh), ``y = A x + σ e`` with the noise of :func:`noise_seed`, the LE-MMSE
    ``x̂_LE = LEMMSE(first n_train training images, A, P, B)(y, σ)`` (computed once and shared
    by the architectures) and each network's ``x̂_net = predict(φ, y, σ)``.

    Parameters
    ----------
    experiments : sequence of Experiment
    scale : "cpu", "reference" or Scale
        Which trained networks (their checkpoints are looked up in ``roots``; nothing is trained).
    sigmas, splits : sequences
    n_images : int
        Images per split (the same first ones for every σ and network).
    seed : int
        Offset of the noise seeds.
    cache : path, optional
        Folder where the LE-MMSE outputs are stored and reused (see :func:`lemmse_outputs`).
    return_images : bool
        Also return ``{(dataset, task, physics, split, σ): {"x", "y", "lemmse", arch: x̂_net}}``.

    Returns
    -------
    rows : list of dict
        One per experiment, split and σ, with the keys of :data:`CSV_COLUMNS`; the PSNRs (dB)
        are means over the images.
    images : dict, only if ``return_images``

    Notes
    -----
    A split that the data folder does not hold (FFHQ-32's test split with the 10 images here)
    is skipped with a warning.
    """
    import warnings

    from tqdm.auto import tqdm

    from lemmse.estimators import LEMMSE

    if isinstance(n_images, bool) or not isinstance(n_images, int) or n_images < 1:
        raise ValueError(f"n_images must be a positive integer, got {n_images!r}")
    for split in splits:
        if split not in EVAL_SPLITS:
            raise ValueError(f"splits must be among {EVAL_SPLITS}, got {split!r}")
    s = _scale(scale)
    roots = tuple(roots)
    groups = {}
    for exp in experiments:
        n = exp.config(s, **overrides).n_train
        groups.setdefault((exp.dataset, exp.task, exp.physics, exp.patch_size, n), []).append(exp)

    rows, images = [], {}
    total = sum(len(splits) * len(sigmas) for _ in groups)
    bar = tqdm(total=total, disable=not progress, desc="agreement", unit="setting", dynamic_ncols=True)
    with bar:
        for (dataset, task, physics, patch_size, _), exps in groups.items():
            configs = {e: e.config(s, **overrides) for e in exps}
            models = {e: load_checkpoint(find_checkpoint(c, roots))[0] for e, c in configs.items()}
            n_train = next(iter(configs.values())).n_train
            train = load_dataset(dataset, "train", n=n_train, root=data_root)
            op = make_operator(task, tuple(train.shape[1:]))
            est = LEMMSE(train, op, patch_size=patch_size, preinverse=PHYSICS[physics])
            for split in splits:
                try:
                    x = eval_images(dataset, split, n_images, n_train, data_root)
                except ValueError as err:
                    warnings.warn(f"skipping {dataset} {split} split: {err}", stacklevel=2)
                    bar.update(len(sigmas))
                    continue
                for sigma in sigmas:
                    bar.set_postfix_str(f"{dataset} {task} {physics} {split} σ={sigma}")
                    key = {"dataset": dataset, "task": task, "physics": physics, "P": patch_size, "n_train": n_train}
                    y, x_le = lemmse_outputs(est, train, op, key, x, split, sigma, seed, cache)
                    p_le_truth = _mean(psnr(x_le, x))
                    store = {"x": x, "y": y, "lemmse": x_le}
                    for exp in exps:
                        x_net = predict(models[exp], y, float(sigma))
                        store[exp.arch] = x_net
                        rows.append(
                            {
                                "dataset": dataset,
                                "task": task,
                                "arch": exp.arch,
                                "physics": physics,
                                "split": split,
                                "sigma": float(sigma),
                                "n_train": n_train,
                                "n_images": int(x.shape[0]),
                                "psnr_net_lemmse": _mean(psnr(x_net, x_le)),
                                "psnr_net_truth": _mean(psnr(x_net, x)),
                                "psnr_lemmse_truth": p_le_truth,
                            }
                        )
                    if return_images:
                        images[(dataset, task, physics, split, float(sigma))] = store
                    bar.update(1)
    return (rows, images) if return_images else rows


def evaluate_patch_size(
    experiments: Sequence[Experiment],
    scale="cpu",
    *,
    lemmse_patch_sizes: Sequence[int] = (3, 5, 7, 9),
    sigmas: Sequence[float] = (0.1, 0.2, 0.5),
    split: str = "test",
    n_images: int = 8,
    roots: Iterable = (RESULTS_CHECKPOINTS, "checkpoints"),
    data_root=None,
    seed: int = 0,
    progress: bool = True,
    cache: Union[str, os.PathLike, None] = None,
) -> list:
    """PSNR between each network and the LE-MMSE of every patch size in ``lemmse_patch_sizes``.

    The networks and the LE-MMSEs of one (dataset, task, physics, n_train) share the training
    images and the measurements (the noise of :func:`noise_seed`). If a network with receptive
    field ``P`` is best explained by the LE-MMSE with the same ``P``, the diagonal of the
    (``patch_net``, ``patch_lemmse``) table is the largest PSNR of its row.

    Returns rows with the keys of :data:`PATCH_CSV_COLUMNS`.
    """
    from tqdm.auto import tqdm

    from lemmse.estimators import LEMMSE

    s = _scale(scale)
    roots = tuple(roots)
    groups = {}
    for exp in experiments:
        c = exp.config(s)
        groups.setdefault((exp.dataset, exp.task, exp.physics, c.n_train), []).append((exp, c))
    rows = []
    total = sum(len(lemmse_patch_sizes) * len(sigmas) for _ in groups)
    with tqdm(total=total, disable=not progress, desc="patch size", unit="LE-MMSE", dynamic_ncols=True) as bar:
        for (dataset, task, physics, n_train), members in groups.items():
            models = {exp: load_checkpoint(find_checkpoint(c, roots))[0] for exp, c in members}
            train = load_dataset(dataset, "train", n=n_train, root=data_root)
            op = make_operator(task, tuple(train.shape[1:]))
            x = eval_images(dataset, split, n_images, n_train, data_root)
            for P in lemmse_patch_sizes:
                est = LEMMSE(train, op, patch_size=P, preinverse=PHYSICS[physics])
                key = {"dataset": dataset, "task": task, "physics": physics, "P": P, "n_train": n_train}
                for sigma in sigmas:
                    bar.set_postfix_str(f"{dataset} {task} P={P} σ={sigma}")
                    y, x_le = lemmse_outputs(est, train, op, key, x, split, sigma, seed, cache)
                    for exp in models:
                        rows.append({
                            "dataset": dataset, "task": task, "arch": exp.arch, "physics": physics,
                            "split": split, "sigma": float(sigma), "n_train": n_train,
                            "n_images": int(x.shape[0]), "patch_net": exp.patch_size, "patch_lemmse": P,
                            "psnr_net_lemmse": _mean(psnr(predict(models[exp], y, float(sigma)), x_le)),
                        })
                    bar.update(1)
    return rows


def evaluate_groups(
    experiments: Sequence[Experiment],
    scale="cpu",
    *,
    net_groups: Sequence[str] = ("translations", "d4"),
    lemmse_groups: Sequence[str] = ("translations", "flips", "d4"),
    sigmas: Sequence[float] = (0.1, 0.2, 0.5),
    split: str = "test",
    n_images: int = 8,
    roots: Iterable = (RESULTS_CHECKPOINTS, "checkpoints"),
    data_root=None,
    seed: int = 0,
    progress: bool = True,
    cache: Union[str, os.PathLike, None] = None,
) -> list:
    """PSNR between each group-averaged network and the LE-MMSE of each group orbit (chapter 14).

    For every experiment and every group of ``net_groups``, the network trained with
    ``TrainConfig(group=...)`` (``"translations"``: the plain network) is compared on the same
    measurements (the noise of :func:`noise_seed`) with ``LEMMSE(train, A, P, group=g)`` for
    every ``g`` of ``lemmse_groups``. If a network is best explained by the LE-MMSE of its own
    group, ``group_lemmse == group_net`` has the largest ``psnr_net_lemmse`` of its row.

    Returns rows with the keys of :data:`GROUP_CSV_COLUMNS`.
    """
    from tqdm.auto import tqdm

    from lemmse.estimators import LEMMSE

    for name, groups_ in (("net_groups", net_groups), ("lemmse_groups", lemmse_groups)):
        if isinstance(groups_, str) or not groups_ or any(g not in GROUPS_OF_NETS for g in groups_):
            raise ValueError(f"{name} must be a non-empty sequence of groups among {tuple(GROUPS_OF_NETS)}, "
                             f"got {groups_!r}")
    if split not in EVAL_SPLITS:
        raise ValueError(f"split must be one of {EVAL_SPLITS}, got {split!r}")
    s = _scale(scale)
    roots = tuple(roots)

    def config(exp, g):
        return exp.config(s) if g == "translations" else exp.config(s, group=g)

    settings = {}
    for exp in experiments:
        c = exp.config(s)
        settings.setdefault((exp.dataset, exp.task, exp.physics, exp.patch_size, c.n_train), []).append(exp)
    rows = []
    total = len(settings) * len(lemmse_groups) * len(sigmas)
    with tqdm(total=total, disable=not progress, desc="groups", unit="LE-MMSE", dynamic_ncols=True) as bar:
        for (dataset, task, physics, patch_size, n_train), exps in settings.items():
            models = {(e, g): load_checkpoint(find_checkpoint(config(e, g), roots))[0]
                      for e in exps for g in net_groups}
            train = load_dataset(dataset, "train", n=n_train, root=data_root)
            op = make_operator(task, tuple(train.shape[1:]))
            x = eval_images(dataset, split, n_images, n_train, data_root)
            nets = {}
            for gl in lemmse_groups:
                est = LEMMSE(train, op, patch_size=patch_size, preinverse=PHYSICS[physics], group=gl)
                key = {"dataset": dataset, "task": task, "physics": physics, "P": patch_size, "n_train": n_train}
                if gl != "translations":  # the plain LE-MMSE shares the cache of the other studies
                    key["group"] = gl
                for sigma in sigmas:
                    bar.set_postfix_str(f"{dataset} {task} {gl} σ={sigma}")
                    y, x_le = lemmse_outputs(est, train, op, key, x, split, sigma, seed, cache)
                    p_le = _mean(psnr(x_le, x))
                    for (exp, gn), model in models.items():
                        if (exp, gn, sigma) not in nets:
                            nets[(exp, gn, sigma)] = predict(model, y, float(sigma))
                        x_net = nets[(exp, gn, sigma)]
                        rows.append({
                            "dataset": dataset, "task": task, "arch": exp.arch, "physics": physics,
                            "split": split, "sigma": float(sigma), "n_train": n_train,
                            "n_images": int(x.shape[0]), "group_net": gn, "group_lemmse": gl,
                            "psnr_net_lemmse": _mean(psnr(x_net, x_le)), "psnr_net_truth": _mean(psnr(x_net, x)),
                            "psnr_lemmse_truth": p_le,
                        })
                    bar.update(1)
    return rows


def evaluate_budget(
    experiments: Sequence[Experiment],
    steps: Sequence[int] = BUDGET_STEPS,
    scale="cpu",
    **kwargs,
) -> list:
    """The agreement of :func:`evaluate_agreement` for the networks trained ``steps`` steps.

    Each budget is its own training run (the learning rate warms up and decays to 0 at its
    ``steps``), not a snapshot of a longer one. The LE-MMSE outputs do not depend on the
    budget: with a ``cache`` they are computed once. ``kwargs`` go to
    :func:`evaluate_agreement` (``sigmas``, ``splits``, ``n_images``, ``roots``, ``cache``, ...).

    Returns rows with the keys of :data:`BUDGET_CSV_COLUMNS` (``images_seen`` = steps × batch).
    """
    steps = list(steps)
    if not steps or any(isinstance(t, bool) or not isinstance(t, int) or t < 1 for t in steps):
        raise ValueError(f"steps must be a non-empty sequence of positive integers, got {steps!r}")
    if kwargs.get("return_images"):
        raise ValueError("evaluate_budget does not return images; call evaluate_agreement(..., steps=...)")
    rows = []
    for t in steps:
        batch = {e: e.config(scale, steps=t).batch_size for e in experiments}
        for r in evaluate_agreement(experiments, scale, steps=t, **kwargs):
            b = next(v for e, v in batch.items() if e.arch == r["arch"] and e.task == r["task"]
                     and e.dataset == r["dataset"] and e.physics == r["physics"])
            rows.append({**r, "steps": t, "batch_size": b, "images_seen": t * b})
    return rows


def write_budget_csv(rows: Sequence[dict], path: Union[str, os.PathLike] = "results/training_budget.csv") -> Path:
    """Write the rows of :func:`evaluate_budget` with the columns :data:`BUDGET_CSV_COLUMNS` (atomically)."""
    return _write_csv(rows, path, BUDGET_CSV_COLUMNS)


def read_budget_csv(path: Union[str, os.PathLike] = "results/training_budget.csv") -> list:
    """Rows of ``path`` (see :data:`BUDGET_CSV_COLUMNS`)."""
    return _read_csv(path, BUDGET_CSV_COLUMNS)


def write_groups_csv(rows: Sequence[dict], path: Union[str, os.PathLike] = "results/groups.csv") -> Path:
    """Write the rows of :func:`evaluate_groups` with the columns :data:`GROUP_CSV_COLUMNS` (atomically)."""
    return _write_csv(rows, path, GROUP_CSV_COLUMNS)


def read_groups_csv(path: Union[str, os.PathLike] = "results/groups.csv") -> list:
    """Rows of ``path`` (see :data:`GROUP_CSV_COLUMNS`)."""
    return _read_csv(path, GROUP_CSV_COLUMNS)


# --------------------------------------------------------------------------- CSV

_INT_COLUMNS = ("n_train", "n_images", "patch_net", "patch_lemmse", "steps", "batch_size", "images_seen")


def _row_key(row: dict) -> tuple:
    columns = dict.fromkeys(PATCH_CSV_COLUMNS + BUDGET_CSV_COLUMNS + GROUP_CSV_COLUMNS)
    keys = [k for k in columns if not k.startswith("psnr_") and k in row]
    return tuple(float(row[k]) if k == "sigma" else int(row[k]) if k in _INT_COLUMNS else row[k] for k in keys)


def merge_rows(old: Sequence[dict], new: Sequence[dict]) -> list:
    """``old`` rows updated by ``new`` ones (same values in every non-PSNR column)."""
    merged = {_row_key(r): r for r in old}
    for r in new:
        merged[_row_key(r)] = r
    return list(merged.values())


def _format(key, value) -> str:
    if key.startswith("psnr_"):
        return "inf" if math.isinf(float(value)) else f"{float(value):.3f}"
    if key == "sigma":
        return f"{float(value):g}"
    return str(value)


def _write_csv(rows: Sequence[dict], path, columns: tuple) -> Path:
    path = Path(path)
    missing = [k for r in rows for k in columns if k not in r]
    if missing:
        raise ValueError(f"rows must have the keys {', '.join(columns)}; missing {sorted(set(missing))}")
    order = lambda r: tuple(  # noqa: E731
        float(r[k]) if k == "sigma" else int(r[k]) if k in _INT_COLUMNS else r[k]
        for k in ("dataset", "task", "physics", "arch", "split", "n_train", "steps", "n_images", "patch_net",
                  "patch_lemmse", "group_net", "group_lemmse", "sigma") if k in columns)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in sorted(rows, key=order):
        writer.writerow([_format(k, r[k]) for k in columns])
    _atomic_write_text(buf.getvalue(), path)
    return path


def _read_csv(path, columns: tuple) -> list:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != columns:
            raise ValueError(f"{path} must have the columns {','.join(columns)}, got {reader.fieldnames}")
        rows = []
        for r in reader:
            for k in columns:
                if k == "sigma" or k.startswith("psnr_"):
                    r[k] = float(r[k])
                elif k in _INT_COLUMNS:
                    r[k] = int(r[k])
            rows.append(r)
    return rows


def write_agreement_csv(rows: Sequence[dict], path: Union[str, os.PathLike] = "results/agreement.csv") -> Path:
    """Write ``rows`` to ``path`` with exactly the columns :data:`CSV_COLUMNS` (atomically).

    PSNRs with 3 decimals; rows sorted by dataset, task, physics, arch, split, n_train, n_images, σ.
    """
    return _write_csv(rows, path, CSV_COLUMNS)


def read_agreement_csv(path: Union[str, os.PathLike] = "results/agreement.csv") -> list:
    """Rows of ``path`` as dicts (σ and PSNRs as float, n_train and n_images as int)."""
    return _read_csv(path, CSV_COLUMNS)


def write_patch_size_csv(rows: Sequence[dict], path: Union[str, os.PathLike] = "results/patch_size.csv") -> Path:
    """Write the rows of :func:`evaluate_patch_size` with the columns :data:`PATCH_CSV_COLUMNS` (atomically)."""
    return _write_csv(rows, path, PATCH_CSV_COLUMNS)


def read_patch_size_csv(path: Union[str, os.PathLike] = "results/patch_size.csv") -> list:
    """Rows of ``path`` (see :data:`PATCH_CSV_COLUMNS`)."""
    return _read_csv(path, PATCH_CSV_COLUMNS)


# --------------------------------------------------------------------------- command line


def _add_cli(sub):
    """Register ``python -m lemmse experiment {train,export,agreement}`` (see ``lemmse.__main__``)."""
    p = sub.add_parser(
        "experiment",
        help="the experiment grid of the book: train, export, agreement",
        description="Train, export and evaluate the networks of the experiment grid (lemmse.experiments).",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    def filters(q):
        q.add_argument("--scale", choices=tuple(SCALES), default="cpu", help="(default: cpu)")
        for name in ("dataset", "task", "arch", "physics"):
            q.add_argument(f"--{name}", nargs="+", default=None, help=f"only these {name} values (default: all)")
        q.add_argument("--grid", choices=tuple(GRIDS), default="main",
                       help="main: the agreement grid; analysis: the dataset-size and patch-size "
                            "networks; sr: the x2 super-resolution networks (default: main)")
        q.add_argument("--patch-size", type=int, nargs="+", default=None, help="only these patch sizes (default: all)")
        q.add_argument("--n-train", type=int, nargs="+", default=None,
                       help="only experiments with these numbers of training images (default: all)")
        q.add_argument("--steps", type=int, default=None,
                       help="optimiser steps (default: the experiment's at the scale; the "
                            "training-budget study)")
        q.add_argument("--group", default="translations", choices=tuple(GROUPS_OF_NETS),
                       help="networks averaged over this group of grid symmetries (default: translations)")
        q.add_argument("--data-root", default=None, help="data folder (default: $LEMMSE_DATA or ~/.cache/lemmse/data)")
        q.add_argument("--no-progress", action="store_true", help="no progress bars")

    t = actions.add_parser("train", help="train (or load) the selected networks")
    filters(t)
    t.add_argument("--root", default="checkpoints", help="checkpoint folder (default: checkpoints)")
    t.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, ... (default: auto)")
    t.add_argument("--compile", action="store_true",
                   help="train through torch.compile (0.96-1.67x the eager speed on a 2-core CPU, "
                        "1.24-1.63x for the grid's U-Net, after about 30 s of compilation per "
                        "network; the checkpoints are the same experiments)")
    t.set_defaults(func=_run_train)

    e = actions.add_parser("export", help="export finished checkpoints (fp16) with a manifest")
    filters(e)
    e.add_argument("--root", default="checkpoints", help="where the finished checkpoints are (default: checkpoints)")
    e.add_argument("--out", default=str(RESULTS_CHECKPOINTS), help=f"(default: {RESULTS_CHECKPOINTS})")
    e.set_defaults(func=_run_export)

    a = actions.add_parser("agreement", help="PSNR(net, LE-MMSE) etc. for the selected networks -> CSV")
    filters(a)
    a.add_argument("--out", default="results/agreement.csv", help="CSV, updated in place (default: results/agreement.csv)")
    a.add_argument("--n-images", type=int, default=8, help="images per split (default: 8)")
    a.add_argument("--sigma", type=float, nargs="+", default=list(SIGMAS), help=f"(default: {' '.join(map(str, SIGMAS))})")
    a.add_argument("--split", nargs="+", choices=EVAL_SPLITS, default=list(EVAL_SPLITS))
    a.add_argument("--roots", nargs="+", default=[str(RESULTS_CHECKPOINTS), "checkpoints"],
                   help="checkpoint folders searched in order (default: results/checkpoints checkpoints)")
    a.add_argument("--cache", default="checkpoints/cache",
                   help="folder where LE-MMSE outputs are reused, or 'none' (default: checkpoints/cache)")
    a.set_defaults(func=_run_agreement)

    b = actions.add_parser("budget", help="the training-budget study: agreement against steps -> CSV")
    filters(b)
    b.add_argument("--budget-steps", type=int, nargs="+", default=list(BUDGET_STEPS),
                   help=f"the budgets, in steps (default: {' '.join(map(str, BUDGET_STEPS))})")
    b.add_argument("--out", default="results/training_budget.csv",
                   help="CSV, updated in place (default: results/training_budget.csv)")
    b.add_argument("--n-images", type=int, default=8, help="images per split (default: 8)")
    b.add_argument("--sigma", type=float, nargs="+", default=list(SIGMAS),
                   help=f"(default: {' '.join(map(str, SIGMAS))})")
    b.add_argument("--split", nargs="+", choices=EVAL_SPLITS, default=list(EVAL_SPLITS))
    b.add_argument("--roots", nargs="+", default=[str(RESULTS_CHECKPOINTS), "checkpoints"],
                   help="checkpoint folders searched in order (default: results/checkpoints checkpoints)")
    b.add_argument("--cache", default="checkpoints/cache",
                   help="folder where LE-MMSE outputs are reused, or 'none' (default: checkpoints/cache)")
    b.set_defaults(func=_run_budget)

    ps = actions.add_parser("patch-size", help="PSNR(net with patch size P, LE-MMSE with patch size P') -> CSV")
    filters(ps)
    ps.set_defaults(grid="all")
    ps.add_argument("--out", default="results/patch_size.csv",
                    help="CSV, updated in place (default: results/patch_size.csv)")
    ps.add_argument("--lemmse-patch-size", type=int, nargs="+", default=[3, 5, 7, 9], help="(default: 3 5 7 9)")
    ps.add_argument("--n-images", type=int, default=8, help="images (default: 8)")
    ps.add_argument("--sigma", type=float, nargs="+", default=[0.1, 0.2, 0.5], help="(default: 0.1 0.2 0.5)")
    ps.add_argument("--split", choices=EVAL_SPLITS, default="test", help="(default: test)")
    ps.add_argument("--roots", nargs="+", default=[str(RESULTS_CHECKPOINTS), "checkpoints"],
                    help="checkpoint folders searched in order (default: results/checkpoints checkpoints)")
    ps.add_argument("--cache", default="checkpoints/cache",
                    help="folder where LE-MMSE outputs are reused, or 'none' (default: checkpoints/cache)")
    ps.set_defaults(func=_run_patch_size)

    gr = actions.add_parser("groups", help="PSNR(group-averaged net, LE-MMSE of a group orbit) -> CSV")
    filters(gr)
    gr.set_defaults(grid="analysis")
    gr.add_argument("--out", default="results/groups.csv", help="CSV, updated in place (default: results/groups.csv)")
    gr.add_argument("--net-group", nargs="+", choices=tuple(GROUPS_OF_NETS), default=["translations", "d4"],
                    help="the networks' groups (default: translations d4)")
    gr.add_argument("--lemmse-group", nargs="+", choices=tuple(GROUPS_OF_NETS),
                    default=["translations", "flips", "d4"], help="the LE-MMSEs' groups (default: translations flips d4)")
    gr.add_argument("--n-images", type=int, default=8, help="images (default: 8)")
    gr.add_argument("--sigma", type=float, nargs="+", default=[0.1, 0.2, 0.5], help="(default: 0.1 0.2 0.5)")
    gr.add_argument("--split", choices=EVAL_SPLITS, default="test", help="(default: test)")
    gr.add_argument("--roots", nargs="+", default=[str(RESULTS_CHECKPOINTS), "checkpoints"],
                    help="checkpoint folders searched in order (default: results/checkpoints checkpoints)")
    gr.add_argument("--cache", default="checkpoints/cache",
                    help="folder where LE-MMSE outputs are reused, or 'none' (default: checkpoints/cache)")
    gr.set_defaults(func=_run_groups)


def _selection(args) -> dict:
    sel = {k: getattr(args, k) for k in ("dataset", "task", "arch", "physics", "grid", "patch_size", "n_train")}
    if not select(**sel, scale=args.scale):
        raise ValueError("no experiment matches the filters")
    return sel


def _overrides(args) -> dict:
    """TrainConfig fields set on the command line (``--steps``, ``--group``)."""
    out = {}
    if args.steps is not None:
        if args.steps < 1:
            raise ValueError(f"--steps must be a positive integer, got {args.steps}")
        out["steps"] = args.steps
    if getattr(args, "group", "translations") != "translations":
        out["group"] = args.group
    return out


def _run_train(args) -> int:
    import sys

    try:
        models = train_grid(args.scale, **_selection(args), root=args.root, data_root=args.data_root,
                            device=args.device, progress=not args.no_progress,
                            **_overrides(args), **({"compile": True} if args.compile else {}))
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for exp, model in models.items():
        print(f"{exp.dataset} {exp.task} {exp.physics} {exp.arch}: {checkpoint_path(model.train_config, args.root)}")
    return 0


def _run_export(args) -> int:
    import sys

    try:
        path = export_grid(args.scale, **_selection(args), src=args.root, dst=args.out, **_overrides(args))
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"manifest: {path}")
    return 0


def _merge_into(path, rows, read, write) -> Path:
    """Update the CSV at ``path`` with ``rows`` (see :func:`merge_rows`), atomically."""
    path = Path(path)
    old = read(path) if path.exists() else []
    write(merge_rows(old, rows), path)
    return path


def _run_agreement(args) -> int:
    import sys

    try:
        exps = select(**_selection(args), scale=args.scale)
        rows = evaluate_agreement(exps, args.scale, sigmas=args.sigma, splits=args.split, n_images=args.n_images,
                                  roots=args.roots, data_root=args.data_root, progress=not args.no_progress,
                                  cache=None if args.cache == "none" else args.cache, **_overrides(args))
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    out = _merge_into(args.out, rows, read_agreement_csv, write_agreement_csv)
    for r in rows:
        print(f"{r['dataset']} {r['task']} {r['physics']} {r['arch']:8s} {r['split']:5s} σ={r['sigma']:<4g} "
              f"net-LE {r['psnr_net_lemmse']:6.2f}  net-x {r['psnr_net_truth']:6.2f}  LE-x {r['psnr_lemmse_truth']:6.2f}")
    print(f"wrote {out} ({len(rows)} rows updated)")
    return 0


def _run_budget(args) -> int:
    import sys

    try:
        if args.steps is not None:
            raise ValueError("use --budget-steps to choose the budgets of the study, not --steps")
        exps = select(**_selection(args), scale=args.scale)
        rows = evaluate_budget(exps, args.budget_steps, args.scale, sigmas=args.sigma, splits=args.split,
                               n_images=args.n_images, roots=args.roots, data_root=args.data_root,
                               progress=not args.no_progress, cache=None if args.cache == "none" else args.cache)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    out = _merge_into(args.out, rows, read_budget_csv, write_budget_csv)
    for r in rows:
        print(f"{r['arch']:8s} {r['split']:5s} steps={r['steps']:<6d} σ={r['sigma']:<4g} "
              f"net-LE {r['psnr_net_lemmse']:6.2f}  net-x {r['psnr_net_truth']:6.2f}  LE-x {r['psnr_lemmse_truth']:6.2f}")
    print(f"wrote {out} ({len(rows)} rows updated)")
    return 0


def _run_groups(args) -> int:
    import sys

    try:
        if args.group != "translations":
            raise ValueError("use --net-group to choose the networks' groups, not --group")
        exps = select(**_selection(args), scale=args.scale)
        rows = evaluate_groups(exps, args.scale, net_groups=args.net_group, lemmse_groups=args.lemmse_group,
                               sigmas=args.sigma, split=args.split, n_images=args.n_images, roots=args.roots,
                               data_root=args.data_root, progress=not args.no_progress,
                               cache=None if args.cache == "none" else args.cache)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    out = _merge_into(args.out, rows, read_groups_csv, write_groups_csv)
    for r in rows:
        print(f"{r['arch']:8s} net {r['group_net']:12s} LE {r['group_lemmse']:12s} σ={r['sigma']:<4g} "
              f"net-LE {r['psnr_net_lemmse']:6.2f}  net-x {r['psnr_net_truth']:6.2f}  LE-x {r['psnr_lemmse_truth']:6.2f}")
    print(f"wrote {out} ({len(rows)} rows updated)")
    return 0


def _run_patch_size(args) -> int:
    import sys

    try:
        exps = select(**_selection(args), scale=args.scale)
        rows = evaluate_patch_size(exps, args.scale, lemmse_patch_sizes=args.lemmse_patch_size, sigmas=args.sigma,
                                   split=args.split, n_images=args.n_images, roots=args.roots,
                                   data_root=args.data_root, progress=not args.no_progress,
                                   cache=None if args.cache == "none" else args.cache)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    out = _merge_into(args.out, rows, read_patch_size_csv, write_patch_size_csv)
    for r in rows:
        print(f"{r['arch']:8s} P_net={r['patch_net']} P_LE={r['patch_lemmse']} σ={r['sigma']:<4g} "
              f"net-LE {r['psnr_net_lemmse']:6.2f}")
    print(f"wrote {out} ({len(rows)} rows updated)")
    return 0
