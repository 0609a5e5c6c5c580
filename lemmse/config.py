"""The configuration of a training run: :class:`TrainConfig`, validated and normalised on creation.

A config says everything that defines the trained weights (data, task and physics, architecture,
optimiser, seed) and how the run goes (device, checkpoint interval, ``torch.compile``); its
:meth:`~TrainConfig.identity` (the fields that change the weights) names the checkpoint file.
Book chapter 8 trains the networks of the grid from these configs; :mod:`lemmse.train` runs them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Union

import torch

from lemmse._validate import check_choice, check_float, check_int
from lemmse.data import SPLITS
from lemmse.nets import ARCHS, _check_patch_size, _resolve_width
from lemmse.tasks import PHYSICS, TASKS

__all__ = ["TrainConfig", "RUN_ONLY_FIELDS"]

#: Fields that do not change the trained weights: left out of the checkpoint's identity.
RUN_ONLY_FIELDS = ("device", "checkpoint_every", "compile")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (validated and normalised on creation).

    Parameters
    ----------
    dataset : str
        Name given to ``lemmse.data.load_dataset`` ("fashion-mnist", "cifar10", "ffhq32"); when
        :func:`~lemmse.train.train_model` receives ``data=`` it is only a label.
    split : {"train", "test"}
    n_train : int
        Train on the first ``n_train`` images (reference: 10 000).
    task : str
        A key of ``lemmse.tasks.TASKS``: "denoising", "inpainting", "inpainting-random",
        "deblurring", "deblurring-disk", "superresolution" (×2; the network gets ``factor=2``, see
        ``lemmse.tasks.TASK_FACTORS``, and the training images are the HR ones).
    physics : {"agnostic", "aware"}
        Pre-inverse B = I, or B = ``preinverse(A, "inverse")`` (mask / regularised inverse filter).
        "superresolution" has no pre-inverse: "agnostic" only.
    arch : {"unet", "resnet", "patchmlp"}
    patch_size : int
        P, odd, >= 3: the networks' receptive field.
    width : int, "default", "reference" or None
        Resolved to an integer on creation (``lemmse.nets.make_model``).
    group : str
        "translations" (default): the plain network; "d4", "c4", "c2" or "flips": the network
        averaged over that group of grid symmetries (``lemmse.nets.GroupAveraged``; ``|G|`` times the
        cost of a step). Left out of :meth:`identity` when "translations", so the networks
        trained before the field existed keep their names.
    steps, batch_size : int
        Optimiser steps and images per step (reference: 24 000 and 256 on a GPU).
    lr, weight_decay, grad_clip : float
        AdamW learning rate (peak) and weight decay; clip of the gradient's global norm
        (0 = no clipping).
    ema_decay : float
        Decay of the EMA of the weights. The decay used at step t is
        ``min(ema_decay, (1 + t) / (10 + t))``, so that short runs are not dominated by the
        random initial weights (with 0.99 the EMA forgets the initialisation only after a few
        hundred steps).
    sigma_max : float
        σ ~ U[0, sigma_max] per image.
    warmup_steps : int
        Linear warm-up of the learning rate, then cosine decay to 0 at ``steps``.
    seed : int
        Seeds the initial weights, the data order and the noise.
    device : str
        "auto" (CUDA when available, else CPU), "cpu", "cuda", "cuda:1", ...
    checkpoint_every : int
        Write a checkpoint every this many steps (0: only at the end).
    compile : bool
        Run the training forward pass through ``torch.compile`` (default False). On this
        project's 2-core CPU the grid's U-Net trains 1.24 (28×28) to 1.63 (32×32) times faster,
        the default widths 0.96 to 1.67 times (``benchmarks/bench_train.py --compare-compile``),
        after about half a minute of compilation, so it pays from a few hundred steps on; when compilation fails (no C++
        compiler, an unsupported platform) one RuntimeWarning says why and the step runs eagerly.

    Notes
    -----
    ``device``, ``checkpoint_every`` and ``compile`` do not change what is trained (a compiled
    run differs from an eager one at the level of float rounding, as runs on two devices do)
    and are left out of :meth:`identity` (and of the checkpoint's file name).
    """

    dataset: str = "fashion-mnist"
    split: str = "train"
    n_train: int = 10_000
    task: str = "denoising"
    physics: str = "agnostic"
    arch: str = "unet"
    patch_size: int = 5
    width: Union[int, str, None] = None
    group: str = "translations"
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    ema_decay: float = 0.99
    sigma_max: float = 1.0
    warmup_steps: int = 100
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int = 500
    compile: bool = False

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        if not isinstance(self.dataset, str) or not self.dataset.strip():
            raise ValueError(f"dataset must be a non-empty string, got {self.dataset!r}")
        check_choice("split", self.split, SPLITS)
        set_("n_train", check_int("n_train", self.n_train, 1))
        check_choice("task", self.task, tuple(TASKS))
        check_choice("physics", self.physics, tuple(PHYSICS))
        if self.task == "superresolution" and self.physics != "agnostic":
            raise ValueError(f"physics={self.physics!r} is not defined for task='superresolution' "
                             f"(SuperResolution has no pre-inverse; the network takes the LR "
                             f"measurement itself): use physics='agnostic'")
        check_choice("arch", self.arch, ARCHS)
        set_("patch_size", _check_patch_size(self.patch_size))
        set_("width", _resolve_width(self.arch, self.patch_size, self.width))
        from lemmse.groups import GROUPS

        check_choice("group", self.group, tuple(GROUPS))
        set_("steps", check_int("steps", self.steps, 1))
        set_("batch_size", check_int("batch_size", self.batch_size, 1))
        set_("lr", check_float("lr", self.lr, 0.0))
        if self.lr == 0:
            raise ValueError("lr must be > 0, got 0.0")
        set_("weight_decay", check_float("weight_decay", self.weight_decay, 0.0))
        set_("grad_clip", check_float("grad_clip", self.grad_clip, 0.0))
        set_("ema_decay", check_float("ema_decay", self.ema_decay, 0.0, 1.0, high_open=True))
        set_("sigma_max", check_float("sigma_max", self.sigma_max, 0.0))
        set_("warmup_steps", check_int("warmup_steps", self.warmup_steps, 0))
        seed = check_int("seed", self.seed, 0)
        if seed >= 2**63:
            raise ValueError(f"seed must be < 2**63, got {seed}")
        set_("seed", seed)
        if not isinstance(self.device, str):
            raise TypeError(f"device must be a string such as 'auto', 'cpu' or 'cuda', got {self.device!r}")
        if self.device != "auto":
            try:
                meta = torch.device(self.device).type == "meta"
            except (RuntimeError, ValueError):
                raise ValueError(
                    f"device must be 'auto' or a torch device string ('cpu', 'cuda', 'cuda:0'), got {self.device!r}"
                ) from None
            if meta:
                raise ValueError(f"device={self.device!r} holds no values (the meta device); use "
                                 f"'auto', 'cpu' or 'cuda'")
        set_("checkpoint_every", check_int("checkpoint_every", self.checkpoint_every, 0))
        if not isinstance(self.compile, bool):
            raise TypeError(f"compile must be True or False, got {self.compile!r}")

    # -- serialisation

    def to_dict(self) -> dict:
        """All fields, as plain Python values (what checkpoints store)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        if not isinstance(d, dict):
            raise TypeError(f"config must be a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s): {', '.join(unknown)}")
        return cls(**d)

    def identity(self) -> dict:
        """The fields that determine the trained weights (all but ``device`` and ``checkpoint_every``)."""
        d = {k: v for k, v in self.to_dict().items() if k not in RUN_ONLY_FIELDS}
        if d["group"] == "translations":
            del d["group"]
        return d

    def key(self) -> str:
        """Stable 12-hex-digit hash of :meth:`identity` (sha256 of its sorted JSON)."""
        text = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def filename(self) -> str:
        """Checkpoint file name: a readable prefix and :meth:`key`."""
        prefix = (
            f"{self.dataset}_{self.task}_{self.physics}_{self.arch}_P{self.patch_size}"
            f"_w{self.width}{'' if self.group == 'translations' else '_g' + self.group}"
            f"_n{self.n_train}_s{self.steps}"
        )
        prefix = "".join(c if c.isalnum() or c in "-_." else "-" for c in prefix)
        return f"{prefix}_{self.key()}.pt"

