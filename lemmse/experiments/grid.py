"""The experiment grid of the book's Experiments part: which networks, at which scale.

A declarative grid (:class:`Experiment`, one trained network each) at three scales
(:class:`Scale`): ``"cpu"``, sized to train in minutes on a 2-core CPU, ``"cpu-long"`` (the same
networks trained 16 times longer), and ``"reference"``, the reference setup (reference widths,
24 000 steps of 256 images; for a GPU). Three grids: ``GRID`` (the 25 networks of the
agreement tables, book chapters 8 ``book/08_training.md`` and 9 ``book/09_agreement.md``),
``ANALYSIS`` (dataset size and patch size, chapter 11 ``book/11_analysis.md``; the
symmetry networks of chapter 14 ``book/14_symmetry.md``) and ``SR_GRID`` (×2
super-resolution, chapter 15 ``book/15_superresolution.md``); :func:`select` picks
experiments from them. Also the evaluation constants shared by the studies (:data:`SIGMAS`,
:data:`EVAL_SPLITS`, :data:`BUDGET_STEPS`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Sequence, Union

from lemmse.nets import ARCHS
from lemmse.train import PHYSICS, TrainConfig

__all__ = [
    "SIGMAS",
    "EVAL_SPLITS",
    "BUDGET_STEPS",
    "Scale",
    "SCALES",
    "Experiment",
    "GRID",
    "ANALYSIS",
    "SR_STEPS",
    "SR_SIGMA_MAX",
    "SR_GRID",
    "GRIDS",
    "select",
]

#: Noise levels of the agreement tables.
SIGMAS = (0.05, 0.1, 0.2, 0.5, 0.8)

#: Train images (with fresh noise) and held-out test images.
EVAL_SPLITS = ("train", "test")

#: Steps of the training-budget study (batch size and everything else as the "cpu" scale):
#: 100 to 25 600 steps of 32 images, 3 200 to 819 200 images seen (256x).  The grid's "cpu-long"
#: scale is the 12 800-step budget; the 25 600-step networks exist for FashionMNIST denoising only.
BUDGET_STEPS = (100, 400, 800, 1600, 6400, 12800, 25600)


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
    training σ at every scale. Both are None in ``GRID`` and ``ANALYSIS``.
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
    # dataset size: the U-Net on FashionMNIST denoising with n = 100, 1 000 and all 60 000
    # (10 000 is in GRID)
    for n in (100, 1_000, 60_000):
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
#: chapter (10 networks; n = 60 000 is trained at the "cpu-long" scale only).
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

    ``grid`` is a sequence of experiments or a name of ``GRIDS`` ("main", "analysis", "all",
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
