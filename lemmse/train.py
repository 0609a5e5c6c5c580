"""Training σ-conditioned networks on the empirical distribution, with exact resumption.

A network ``φ`` (``lemmse.nets``) is trained to minimise

    E_{n, σ, e} ‖φ(B(A x_n + σ e), σ) − x_n‖²,   n ~ U{1..N}, σ ~ U[0, σ_max], e ~ N(0, I),

the empirical risk whose minimiser over the local-equivariant class is the LE-MMSE (book
chapter on networks vs the LE-MMSE; reference setup in section 7 of ``lemmse-math.md``).
``B`` is the pre-inverse: the identity ("agnostic") or ``lemmse.operators.preinverse(A,
"inverse")`` ("aware").

Super-resolution (task "superresolution", book chapter 15): ``A = SuperResolution(2)`` maps the
HR training image ``x`` to the LR grid, where the noise is added; the network is built with
``factor=2`` (``lemmse.nets``), takes the LR ``y`` (B = I: only physics "agnostic" exists) and
returns an HR estimate compared with ``x``.

Optimiser AdamW, gradient clipping, linear warm-up then cosine decay of the learning rate,
exponential moving average (EMA) of the weights used for evaluation. Every random draw comes
from two ``torch.Generator`` s (data order on the CPU, noise on the training device) seeded
from ``config.seed``; their states, the current permutation and its cursor are saved in each
checkpoint, so a resumed run is bitwise identical to an uninterrupted one on the CPU.

Main entry points: :class:`TrainConfig`, :func:`train_model`, :func:`train_or_load`, :func:`predict`,
:func:`load_checkpoint`, :func:`export_checkpoint`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import operator
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F

from lemmse._io import atomic_path
from lemmse._validate import check_finite_output, screen_sigma
from lemmse.data import DATASETS, SPLITS, load_dataset
from lemmse.nets import ARCHS, SigmaNet, _resolve_width, make_model
from lemmse.operators import Blur, Denoising, Inpainting, SuperResolution, preinverse

__all__ = [
    "TASKS",
    "TASK_FACTORS",
    "PHYSICS",
    "DATASETS",
    "CHECKPOINT_FORMAT",
    "TrainConfig",
    "TrainResult",
    "make_operator",
    "predict",
    "resolve_device",
    "train_model",
    "train_or_load",
    "checkpoint_path",
    "data_fingerprint",
    "load_checkpoint",
    "export_checkpoint",
    "tune_allocator",
]

#: Tasks of the reference setup: the forward operator A for an image shape (C, H, W).
TASKS = {
    "denoising": "A = I",
    "inpainting": "centred 15×15 hole (Inpainting.center_box(shape, 15))",
    "inpainting-random": "30 % missing pixels, one mask, seed 1234 (Inpainting.random(shape, 0.3, 1234))",
    "deblurring": "Gaussian blur, std 1 px, circular (Blur.gaussian(shape, 1.0))",
    "deblurring-disk": "defocus disk, radius 2.5 px, circular (Blur.disk(shape, 2.5))",
    "superresolution": "x2 super-resolution: 2×2 block means, noise on the LR grid "
                       "(SuperResolution(2)); the network outputs the HR grid",
}

#: Super-resolution factor of the networks of each task (1 for the tasks not listed).
TASK_FACTORS = {"superresolution": 2}

#: Physics: the pre-inverse kind given to ``lemmse.operators.preinverse``.
PHYSICS = {"agnostic": "identity", "aware": "inverse"}

CHECKPOINT_FORMAT = "lemmse-train-v1"

#: Fields that do not change the trained weights: left out of the checkpoint's identity.
RUN_ONLY_FIELDS = ("device", "checkpoint_every", "compile")


# --------------------------------------------------------------------------- config


def _as_int(name, value, minimum=None):
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _as_float(name, value, low=None, high=None, high_open=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and (value >= high if high_open else value > high):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value}")
    return value


def _as_choice(name, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (validated and normalised on creation).

    Parameters
    ----------
    dataset : str
        Name given to ``lemmse.data.load_dataset`` ("fashion-mnist", "cifar10", "ffhq32"); when
        :func:`train_model` receives ``data=`` it is only a label.
    split : {"train", "test"}
    n_train : int
        Train on the first ``n_train`` images (reference: 10 000).
    task : str
        A key of :data:`TASKS`: "denoising", "inpainting", "inpainting-random", "deblurring",
        "deblurring-disk", "superresolution" (×2; the network gets ``factor=2``, see
        :data:`TASK_FACTORS`, and the training images are the HR ones).
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
        _as_choice("split", self.split, SPLITS)
        set_("n_train", _as_int("n_train", self.n_train, 1))
        _as_choice("task", self.task, tuple(TASKS))
        _as_choice("physics", self.physics, tuple(PHYSICS))
        if self.task == "superresolution" and self.physics != "agnostic":
            raise ValueError(f"physics={self.physics!r} is not defined for task='superresolution' "
                             f"(SuperResolution has no pre-inverse; the network takes the LR "
                             f"measurement itself): use physics='agnostic'")
        _as_choice("arch", self.arch, ARCHS)
        set_("patch_size", _as_int("patch_size", self.patch_size, 3))
        if self.patch_size % 2 == 0:
            raise ValueError(f"patch_size must be odd, got {self.patch_size}")
        set_("width", _resolve_width(self.arch, self.patch_size, self.width))
        from lemmse.groups import GROUPS

        _as_choice("group", self.group, tuple(GROUPS))
        set_("steps", _as_int("steps", self.steps, 1))
        set_("batch_size", _as_int("batch_size", self.batch_size, 1))
        set_("lr", _as_float("lr", self.lr, 0.0))
        if self.lr == 0:
            raise ValueError("lr must be > 0, got 0.0")
        set_("weight_decay", _as_float("weight_decay", self.weight_decay, 0.0))
        set_("grad_clip", _as_float("grad_clip", self.grad_clip, 0.0))
        set_("ema_decay", _as_float("ema_decay", self.ema_decay, 0.0, 1.0, high_open=True))
        set_("sigma_max", _as_float("sigma_max", self.sigma_max, 0.0))
        set_("warmup_steps", _as_int("warmup_steps", self.warmup_steps, 0))
        seed = _as_int("seed", self.seed, 0)
        if seed >= 2**63:
            raise ValueError(f"seed must be < 2**63, got {seed}")
        set_("seed", seed)
        if not isinstance(self.device, str):
            raise TypeError(f"device must be a string such as 'auto', 'cpu' or 'cuda', got {self.device!r}")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, ValueError):
                raise ValueError(
                    f"device must be 'auto' or a torch device string ('cpu', 'cuda', 'cuda:0'), got {self.device!r}"
                ) from None
        set_("checkpoint_every", _as_int("checkpoint_every", self.checkpoint_every, 0))
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


@dataclass
class TrainResult:
    """What :func:`train_model` returns.

    ``model``: the EMA network in eval mode (on the training device); ``history``: dict of
    1-D tensors ``loss`` (per step, mean squared error over the batch) and ``lr``; ``step``:
    completed steps; ``checkpoint``: where the last checkpoint was written (or None).
    """

    model: SigmaNet
    config: TrainConfig
    history: dict
    step: int
    checkpoint: Optional[Path]


# --------------------------------------------------------------------------- helpers


def make_operator(task: str, image_shape):
    """The forward operator A of ``task`` for images of shape (C, H, W) (see :data:`TASKS`).

    For "superresolution" the shape is not used (``SuperResolution(2)`` takes any HR image
    whose sides are even).
    """
    _as_choice("task", task, tuple(TASKS))
    shape = tuple(int(s) for s in image_shape)
    if task == "denoising":
        return Denoising()
    if task == "superresolution":
        return SuperResolution(TASK_FACTORS[task])
    if task == "inpainting":
        return Inpainting.center_box(shape, 15)
    if task == "inpainting-random":
        return Inpainting.random(shape, 0.3, 1234)
    if task == "deblurring":
        return Blur.gaussian(shape, 1.0)
    return Blur.disk(shape, 2.5)


def resolve_device(device: str = "auto") -> torch.device:
    """"auto" -> CUDA when available, else CPU; other strings are checked (CUDA present?)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"device must be 'auto' or a torch device string, got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available; use 'auto' or 'cpu'")
    return dev


def tune_allocator(threshold: int = 1 << 30) -> bool:
    """Keep large CPU buffers in glibc's heap instead of fresh ``mmap`` s (process-wide).

    On this project's CPU machine each fresh multi-MB activation costs page faults, which made
    CPU training 2–4× slower. Sets ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` with
    ``mallopt``; the process then keeps its peak memory. Called by the command line and the
    benchmark, never implicitly by the library. Returns False where glibc is not available.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(-3, int(threshold)) == 1  # M_MMAP_THRESHOLD
        ok = libc.mallopt(-1, int(threshold) * 2) == 1 and ok  # M_TRIM_THRESHOLD
        return bool(ok)
    except (OSError, AttributeError):
        return False


@contextlib.contextmanager
def _no_tf32():
    """TF32 off for CUDA matmuls and convolutions (restored afterwards)."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``steps``."""
    warmup = min(warmup, steps)
    if step < warmup:
        return (step + 1) / warmup
    span = max(steps - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))


class _IndexStream:
    """Epoch-wise random permutations of range(N), read ``batch`` indices at a time."""

    def __init__(self, n: int, seed: int):
        self.n = n
        self.generator = torch.Generator().manual_seed(seed)
        self.perm = torch.empty(0, dtype=torch.long)
        self.cursor = 0

    def next(self, batch: int) -> torch.Tensor:
        parts, need = [], batch
        while need > 0:
            if self.cursor >= self.perm.numel():
                self.perm = torch.randperm(self.n, generator=self.generator)
                self.cursor = 0
            take = min(need, self.perm.numel() - self.cursor)
            parts.append(self.perm[self.cursor : self.cursor + take])
            self.cursor += take
            need -= take
        return torch.cat(parts)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "perm": self.perm.clone(), "cursor": self.cursor}

    def load_state_dict(self, state: dict):
        self.generator.set_state(state["generator"])
        self.perm = state["perm"].clone()
        self.cursor = int(state["cursor"])


def _weights_sha256(weights: dict) -> str:
    """sha256 of a state dict's names, dtypes, shapes and bytes (sorted by name)."""
    h = hashlib.sha256()
    for k in sorted(weights):
        v = weights[k].detach().cpu().contiguous()
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
        h.update(v.view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


#: What a resumed run reads besides the EMA weights; ``resume_sha256`` hashes them.
_RESUME_KEYS = ("step", "model", "optimizer", "scheduler", "rng", "history")


def _tree_sha256(tree) -> str:
    """sha256 of nested dicts/lists/tuples of tensors and plain values (dict keys sorted)."""
    h = hashlib.sha256()

    def feed(o):
        if isinstance(o, torch.Tensor):
            v = o.detach().cpu().contiguous()
            h.update(f"T|{v.dtype}|{tuple(v.shape)}|".encode())
            h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
        elif isinstance(o, dict):
            h.update(f"D{len(o)}|".encode())
            for k in sorted(o, key=repr):
                h.update(f"{k!r}:".encode())
                feed(o[k])
        elif isinstance(o, (list, tuple)):
            h.update(f"L{len(o)}|".encode())
            for v in o:
                feed(v)
        else:
            h.update(f"{type(o).__name__}|{o!r}|".encode())

    feed(tree)
    return h.hexdigest()


def _check_weights(ckpt: dict, path):
    """The EMA weights of a checkpoint are the ones written: their stored hash (checkpoints
    written since the hash was introduced carry one) and all finite."""
    ema = ckpt["ema"]
    if not isinstance(ema, dict) or not all(isinstance(v, torch.Tensor) for v in ema.values()):
        raise ValueError(f"checkpoint {path} is corrupt: its 'ema' entry is not a dict of tensors; "
                         f"restore the file (git checkout) or delete it to retrain")
    stored = ckpt.get("ema_sha256")
    if stored is not None and _weights_sha256(ema) != stored:
        raise ValueError(f"checkpoint {path} is corrupt: its weights do not match the sha256 "
                         f"stored in it; restore the file (git checkout) or delete it to retrain")
    bad = [k for k, v in ema.items() if v.is_floating_point() and
           not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"checkpoint {path} holds non-finite weights ({', '.join(bad[:3])}"
                         f"{', ...' if len(bad) > 3 else ''}); delete it to retrain")


def _check_resume_state(ckpt: dict, path):
    """What a resumed run reads (weights, optimizer moments, RNG states, history) is what was
    written: the EMA check, the stored ``resume_sha256`` and finite network weights."""
    _check_weights(ckpt, path)
    missing = [k for k in _RESUME_KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"checkpoint {path} is incomplete: missing {missing}; delete it to "
                         f"restart training")
    stored = ckpt.get("resume_sha256")
    if stored is not None and _tree_sha256({k: ckpt[k] for k in _RESUME_KEYS}) != stored:
        raise ValueError(f"checkpoint {path} is corrupt: its training state does not match the "
                         f"sha256 stored in it; delete it to restart training")
    model = ckpt["model"]
    if not isinstance(model, dict) or not all(
            isinstance(v, torch.Tensor) and (not v.is_floating_point() or bool(torch.isfinite(v).all()))
            for v in model.values()):
        raise ValueError(f"checkpoint {path} holds non-finite or malformed network weights; "
                         f"delete it to restart training")


def _check_manifest(path: Path):
    """If ``MANIFEST.json`` beside the file lists it, its sha256 must match."""
    manifest = path.parent / "MANIFEST.json"
    if not manifest.is_file():
        return
    try:
        entry = json.loads(manifest.read_text(encoding="utf-8")).get("files", {}).get(path.name)
    except (ValueError, AttributeError) as err:
        raise ValueError(f"{manifest} is not valid JSON ({err}); restore it") from err
    if not isinstance(entry, dict) or "sha256" not in entry:
        return
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if h.hexdigest() != entry["sha256"]:
        raise ValueError(f"checkpoint {path} does not match the sha256 in {manifest} "
                         f"({h.hexdigest()[:12]}... vs {entry['sha256'][:12]}...): the file is "
                         f"corrupt or was replaced; restore it (git checkout) or re-export it")


def _atomic_save(obj, path: Path):
    if isinstance(obj, dict) and "ema" in obj:
        obj = {**obj, "ema_sha256": _weights_sha256(obj["ema"])}
    if isinstance(obj, dict) and all(k in obj for k in _RESUME_KEYS):
        obj = {**obj, "resume_sha256": _tree_sha256({k: obj[k] for k in _RESUME_KEYS})}
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _read_checkpoint(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for truncated/garbled files
        raise ValueError(
            f"checkpoint {path} is corrupt or not a torch file ({type(err).__name__}: {err}); delete it to retrain"
        ) from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path} is not a lemmse training checkpoint (format {found!r}, expected {CHECKPOINT_FORMAT!r})")
    for key in ("config", "model_hparams", "ema", "history", "step"):
        if key not in ckpt:
            raise ValueError(f"checkpoint {path} is incomplete: missing {key!r}; delete it to retrain")
    return ckpt


def _config_from(ckpt: dict, path) -> TrainConfig:
    try:
        return TrainConfig.from_dict(ckpt["config"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint {path} holds an invalid config: {err}") from err


def _check_same(config: TrainConfig, saved: TrainConfig, path):
    a, b = config.identity(), saved.identity()
    default = {f.name: f.default for f in dataclasses.fields(TrainConfig)}  # fields left out of identity()
    diff = [f"{k}: requested {a.get(k, default[k])!r}, checkpoint {b.get(k, default[k])!r}"
            for k in dict.fromkeys([*a, *b]) if a.get(k, default[k]) != b.get(k, default[k])]
    if diff:
        raise ValueError(f"checkpoint {path} was trained with another config ({'; '.join(diff)})")


def _history_tensors(history: dict) -> dict:
    return {
        "loss": torch.tensor(history["loss"], dtype=torch.float32),
        "lr": torch.tensor(history["lr"], dtype=torch.float64),
    }


def _build_model(config: TrainConfig, channels: int) -> SigmaNet:
    """Initial weights from ``config.seed``, independent of the global RNG and of the device."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return make_model(config.arch, channels, config.patch_size, config.width,
                          group=config.group, factor=TASK_FACTORS.get(config.task, 1))


def _training_data(config: TrainConfig, data, data_root) -> torch.Tensor:
    if data is None:
        if config.dataset not in DATASETS:
            raise ValueError(
                f"dataset must be one of {', '.join(map(repr, DATASETS))} (or pass data=), got {config.dataset!r}"
            )
        try:
            data = load_dataset(config.dataset, split=config.split, n=config.n_train, root=data_root)
        except ValueError as err:
            raise ValueError(
                f"cannot load n_train={config.n_train} images of {config.dataset!r} ({config.split}): {err}"
            ) from err
        source = f"dataset {config.dataset!r} ({config.split})"
    else:
        source = "data"
    if not isinstance(data, torch.Tensor) or data.ndim != 4 or not data.is_floating_point():
        shape = tuple(data.shape) if isinstance(data, torch.Tensor) else type(data).__name__
        raise ValueError(f"data must be a float tensor [N, C, H, W], got {shape}")
    if data.shape[0] < config.n_train:
        raise ValueError(f"n_train={config.n_train} is larger than {source}, which holds {data.shape[0]} images")
    if config.patch_size > min(data.shape[-2:]):
        raise ValueError(f"patch_size={config.patch_size} is larger than the {source} images "
                         f"({data.shape[-2]}×{data.shape[-1]}): the receptive field must fit in an image")
    data = data[: config.n_train].to(torch.float32)
    finite = torch.isfinite(data).flatten(1).all(dim=1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten()
        raise ValueError(f"{source} holds non-finite values (NaN or Inf) in {bad.numel()} of its first "
                         f"{config.n_train} images (the first: image {int(bad[0])}); training on them "
                         f"would only produce a NaN loss: clean or drop those images")
    return data


def data_fingerprint(data: torch.Tensor) -> str:
    """sha256 of the training images as trained on (float32, C-contiguous, on the CPU) and their
    shape: what a checkpoint records of its data (``"data_sha256"``), so that a checkpoint is
    never returned for other images under the same config."""
    x = data.detach().to("cpu", torch.float32).contiguous()
    h = hashlib.sha256(json.dumps(list(x.shape)).encode())
    h.update(x.numpy().tobytes())
    return h.hexdigest()


def _check_data(ckpt: dict, fingerprint: str, path) -> None:
    saved = ckpt.get("data_sha256")
    if saved is not None and saved != fingerprint:
        raise ValueError(f"checkpoint {path} was trained on other images than the data given "
                         f"(data fingerprint {saved[:12]}, data has {fingerprint[:12]}): pass the "
                         f"images it was trained on, or another root= (or config: seed, n_train) "
                         f"to train on these")


# --------------------------------------------------------------------------- training


def _compiled_forward(model: torch.nn.Module):
    """``model``'s forward through ``torch.compile``; on the first call, when compiling fails,
    one RuntimeWarning and the eager forward from then on (same arguments, same step)."""
    compiled = torch.compile(model)
    state = {"fn": compiled}

    def forward(v, sigma):
        if state["fn"] is compiled:
            try:
                return compiled(v, sigma)
            except Exception as err:  # inductor raises many types (no compiler, unsupported op)
                warnings.warn(f"torch.compile failed ({type(err).__name__}: {str(err).strip()[:200]}); "
                              f"training eagerly (same result, slower). compile=False silences this.",
                              RuntimeWarning, stacklevel=3)
                state["fn"] = model
        return state["fn"](v, sigma)

    return forward


def train_model(
    config: TrainConfig,
    data: Optional[torch.Tensor] = None,
    *,
    checkpoint: Union[str, os.PathLike, None] = None,
    data_root=None,
    progress: bool = True,
    until_step: Optional[int] = None,
) -> TrainResult:
    """Train (or resume training) a network for ``config``.

    One step: indices n_b from the current random permutation, σ_b ~ U[0, σ_max],
    ``v_b = B(A x_b + σ_b e_b)``, loss ``mean ‖φ(v_b, σ_b) − x_b‖²``, AdamW step with the
    gradient clipped, EMA update.

    Parameters
    ----------
    config : TrainConfig
    data : tensor [N, C, H, W], optional
        In-memory training images; default ``load_dataset(config.dataset, config.split,
        n=config.n_train, root=data_root)``. The first ``config.n_train`` images are used.
    checkpoint : path, optional
        File for the checkpoints (every ``config.checkpoint_every`` steps and at the end). If it
        exists, training resumes from it (its config must match ``config``); no file is written
        when None.
    progress : bool
        Show a tqdm bar (loss, images/s).
    until_step : int, optional
        Stop after this many completed steps (default ``config.steps``), writing a checkpoint:
        training in chunks, or a simulated interruption.

    Returns
    -------
    TrainResult
        EMA model in eval mode on the training device, loss history, completed steps.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    stop = config.steps if until_step is None else _as_int("until_step", until_step, 0)
    if stop > config.steps:
        raise ValueError(f"until_step must be <= config.steps ({config.steps}), got {stop}")
    device = resolve_device(config.device)
    path = None if checkpoint is None else Path(checkpoint)

    x_all = _training_data(config, data, data_root)
    fingerprint = data_fingerprint(x_all)
    x_all = x_all.to(device)
    n, channels = x_all.shape[0], x_all.shape[1]
    image_shape = tuple(x_all.shape[1:])

    op = make_operator(config.task, image_shape)  # operators cache their tensors per device
    pre = preinverse(op, PHYSICS[config.physics])
    factor = TASK_FACTORS.get(config.task, 1)
    if image_shape[1] % factor or image_shape[2] % factor:
        raise ValueError(f"data: task {config.task!r} needs HR images whose sides are multiples of "
                         f"{factor}, got {image_shape[1]}×{image_shape[2]}; crop or pad them")

    model = _build_model(config, channels).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: _lr_factor(s, config.steps, config.warmup_steps)
    )
    stream = _IndexStream(n, config.seed)
    noise_gen = torch.Generator(device=device).manual_seed(config.seed + 1)
    history = {"loss": [], "lr": []}
    step, elapsed = 0, 0.0

    if path is not None and path.exists():
        ckpt = _read_checkpoint(path)
        _check_same(config, _config_from(ckpt, path), path)
        if "optimizer" not in ckpt:
            raise ValueError(f"checkpoint {path} is an export (EMA weights only) and cannot be resumed")
        _check_resume_state(ckpt, path)
        _check_data(ckpt, fingerprint, path)
        if tuple(ckpt.get("data_shape", image_shape)) != image_shape:
            raise ValueError(f"checkpoint {path} was trained on images {ckpt['data_shape']}, data has {image_shape}")
        step = int(ckpt["step"])
        if step > stop:
            raise ValueError(f"checkpoint {path} is at step {step}, past until_step={stop}")
        model.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        stream.load_state_dict(ckpt["rng"]["data"])
        if ckpt["rng"]["noise_device"] == device.type:
            noise_gen.set_state(ckpt["rng"]["noise"])
        else:
            warnings.warn(
                f"checkpoint {path} was written on {ckpt['rng']['noise_device']}, resuming on {device.type}: "
                "the noise stream is re-seeded, so the run will not match an uninterrupted one bitwise",
                stacklevel=2,
            )
            noise_gen.manual_seed(config.seed + 1 + step)
        history = {k: [float(v) for v in ckpt["history"][k]] for k in ("loss", "lr")}
        elapsed = float(ckpt.get("elapsed_s", 0.0))

    def save():
        if path is None:
            return
        _atomic_save(
            {
                "format": CHECKPOINT_FORMAT,
                "config": config.to_dict(),
                "model_hparams": model.hparams,
                "data_shape": list(image_shape),
                "data_sha256": fingerprint,
                "step": step,
                "complete": step == config.steps,
                "model": model.state_dict(),
                "ema": ema.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "rng": {"data": stream.state_dict(), "noise": noise_gen.get_state(), "noise_device": device.type},
                "history": _history_tensors(history),
                "elapsed_s": elapsed,
                "torch_version": str(torch.__version__),
            },
            path,
        )

    from tqdm.auto import tqdm

    bar = tqdm(
        total=config.steps,
        initial=step,
        disable=not progress,
        desc=f"{config.arch} P={config.patch_size} {config.task}",
        unit="step",
        dynamic_ncols=True,
    )
    forward = _compiled_forward(model) if config.compile else model
    pending = []  # losses of recent steps, still on the device
    log_every = 10
    model.train()
    with _no_tf32(), bar:
        t_log = time.perf_counter()
        imgs_since = 0
        while step < stop:
            t0 = time.perf_counter()
            idx = stream.next(config.batch_size).to(device)
            x = x_all[idx]
            sigma = torch.rand(config.batch_size, generator=noise_gen, device=device) * config.sigma_max
            y = op.A(x)  # + σ e, as op.measure but allowing σ = 0 and without a host sync
            y = y + sigma[:, None, None, None] * torch.randn(y.shape, generator=noise_gen, device=device)
            v = pre(y)
            loss = F.mse_loss(forward(v, sigma), x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            history["lr"].append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
            step += 1
            decay = min(config.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for p_ema, p in zip(ema.parameters(), model.parameters()):
                    p_ema.lerp_(p, 1 - decay)
            pending.append(loss.detach())
            imgs_since += config.batch_size
            elapsed += time.perf_counter() - t0

            last = step == stop
            due = config.checkpoint_every > 0 and step % config.checkpoint_every == 0
            if last or due or len(pending) >= log_every:
                losses = torch.stack(pending).cpu().tolist()
                pending.clear()
                history["loss"].extend(losses)
                if not all(math.isfinite(l) for l in losses):
                    raise FloatingPointError(
                        f"training loss became {losses[-1]} at step {step} ({config.task}, physics={config.physics});"
                        " try a lower lr or sigma_max"
                    )
                now = time.perf_counter()
                bar.set_postfix(loss=f"{sum(losses) / len(losses):.4g}", img_s=f"{imgs_since / (now - t_log):.0f}")
                bar.update(len(losses))
                t_log, imgs_since = now, 0
            if last or due:
                save()

    ema.eval()
    return TrainResult(model=ema, config=config, history=_history_tensors(history), step=step, checkpoint=path)


def predict(model: SigmaNet, y: torch.Tensor, sigma, config: Optional[TrainConfig] = None) -> torch.Tensor:
    """Network estimate from a measurement: ``x_hat = φ(B y, σ)``, the pre-inverse B of the config.

    Like the estimators of ``lemmse.estimators``, it takes the measurement ``y = A x + σ e`` and
    applies the pre-inverse itself (identity for physics="agnostic"; mask or inverse filter for
    "aware").

    Parameters
    ----------
    model : SigmaNet
        A trained network (from :func:`train_or_load` or :func:`load_checkpoint`).
    y : tensor [B, C, H, W]
        The measurement, real floating point, finite (for "superresolution": the LR image).
    sigma : float or [B]
    config : TrainConfig, optional
        Default ``model.train_config``.

    Returns
    -------
    tensor [B, C, H, W] on y's device and dtype (computed without gradients on the model's
    device, in float32); [B, C, s H, s W] for super-resolution (``s`` of :data:`TASK_FACTORS`).

    Raises
    ------
    TypeError
        ``y`` not a real floating-point tensor, ``sigma`` a bool, complex or text value.
    ValueError
        ``y`` not [B, C, H, W], empty, non-finite or with the wrong number of channels;
        ``sigma`` not positive and finite or not one value per image; an estimate that is not
        finite (σ or y far outside the training range).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a trained network (from train_or_load or load_checkpoint), "
                        f"got {type(model).__name__}")
    config = getattr(model, "train_config", None) if config is None else config
    if not isinstance(config, TrainConfig):
        raise ValueError("config is needed (a TrainConfig) when the model has no train_config attribute")
    from lemmse.estimators import _check_images, _check_sigma  # the estimators' own rules

    _check_images(y, "y")
    if y.is_complex():
        raise ValueError(f"y must be a real floating-point tensor, got {y.dtype}")
    if 0 in y.shape[2:]:
        raise ValueError(f"y is empty: its images have no pixels, got shape {tuple(y.shape)}")
    channels = getattr(model, "channels", None)
    if channels is not None and y.shape[1] != channels:
        raise ValueError(f"y has {y.shape[1]} channels, but the network takes {channels}")
    factor, want = getattr(model, "factor", 1), TASK_FACTORS.get(config.task, 1)
    if factor != want:
        raise ValueError(f"model has factor={factor}, but task {config.task!r} of the config needs "
                         f"a network with factor={want}")
    device = next(model.parameters()).device
    sigma = _check_sigma(screen_sigma(sigma), y.shape[0], torch.float32, device)
    if not bool(torch.isfinite(sigma).all()):
        raise ValueError(f"sigma overflows float32, in which the network computes (largest "
                         f"{torch.finfo(torch.float32).max:.2g}); it was trained on "
                         f"[0, {config.sigma_max:g}]")
    pre = preinverse(make_operator(config.task, tuple(y.shape[1:])), PHYSICS[config.physics])
    v = pre(y.to(device=device, dtype=torch.float32))
    with torch.no_grad():
        x_hat = model(v, sigma)
    check_finite_output(
        x_hat, "the network's estimate", lambda:
        f"sigma (up to {float(sigma.max()):.3g}; trained on [0, {config.sigma_max:g}]) or y (|y| up to "
        f"{float(y.abs().max()):.3g}; images in [0, 1]) is too far outside what it was trained on")
    x_hat = x_hat.to(device=y.device, dtype=y.dtype)
    return check_finite_output(x_hat, f"the estimate in {y.dtype}",
                               f"it overflows {y.dtype}; pass y in float32")


# --------------------------------------------------------------------------- checkpoints


def checkpoint_path(config: TrainConfig, root: Union[str, os.PathLike] = "checkpoints") -> Path:
    """Where :func:`train_or_load` keeps the checkpoint of ``config``: ``root / config.filename()``."""
    return Path(root) / config.filename()


def load_checkpoint(path, device="cpu"):
    """Load a checkpoint (full or exported) written by this module.

    Returns
    -------
    model : SigmaNet
        The EMA weights, float32, eval mode, on ``device``; ``model.train_config`` holds the
        config.
    config : TrainConfig
    history : dict
        1-D tensors ``loss`` and ``lr`` per step.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        Corrupt file, not a lemmse checkpoint, or weights that do not fit the recorded model.
    """
    ckpt = _read_checkpoint(path)
    _check_manifest(Path(path))
    _check_weights(ckpt, path)
    config = _config_from(ckpt, path)
    try:
        model = make_model(**ckpt["model_hparams"])
        state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["ema"].items()}
        model.load_state_dict(state)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"checkpoint {path} does not hold weights for {ckpt['model_hparams']}: {err}") from err
    model = model.to(resolve_device(device) if isinstance(device, str) else device).eval()
    model.requires_grad_(False)
    model.train_config = config
    history = {k: torch.as_tensor(ckpt["history"][k]) for k in ("loss", "lr")}
    return model, config, history


def train_or_load(
    config: TrainConfig,
    root: Union[str, os.PathLike] = "checkpoints",
    *,
    data: Optional[torch.Tensor] = None,
    data_root=None,
    progress: bool = True,
    device="cpu",
) -> SigmaNet:
    """The trained EMA network of ``config``: loaded from ``root`` if there, else trained and saved.

    The checkpoint is ``checkpoint_path(config, root)`` (readable prefix + hash of the
    config). While training, checkpoints go to ``<name>.partial.pt`` and an interrupted run
    resumes from it; the finished file is renamed to ``<name>.pt``. Training runs on
    ``config.device``; the model is returned on ``device`` (default the CPU, where the book
    compares it with the LE-MMSE), in eval mode.

    Raises ValueError (naming the file) if the checkpoint is corrupt, was trained with another
    config, or, when ``data`` is given, on other images (checkpoints record
    :func:`data_fingerprint` of their training images; older ones without it are not checked).
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if isinstance(device, str):
        resolve_device(device)  # a bad device fails now, not after training
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a folder path (str or os.PathLike), got {type(root).__name__} {root!r}")
    if Path(root).exists() and not Path(root).is_dir():
        raise ValueError(f"root must be a folder for the checkpoints, got the file {root}")
    final = checkpoint_path(config, root)
    if final.exists():
        if data is not None:  # the config does not say which images: the fingerprint does
            _check_data(_read_checkpoint(final), data_fingerprint(_training_data(config, data, None)), final)
        model, saved, _ = load_checkpoint(final, device=device)
        _check_same(config, saved, final)
        return model
    partial = final.with_name(final.name[: -len(".pt")] + ".partial.pt")
    result = train_model(config, data, checkpoint=partial, data_root=data_root, progress=progress)
    os.replace(partial, final)
    model = result.model.to(resolve_device(device) if isinstance(device, str) else device)
    model.requires_grad_(False)
    model.train_config = config
    return model


def export_checkpoint(src, dst, half: bool = True) -> Path:
    """Write a small checkpoint with only the EMA weights (fp16 if ``half``), config and history.

    The result loads with :func:`load_checkpoint` (weights cast back to float32) but cannot be
    resumed. For committing trained networks: the EMA of a 4 M-parameter network is 8 MB in fp16.
    Raises ValueError if training was not finished or a weight overflows fp16.
    """
    src, dst = Path(src), Path(dst)
    ckpt = _read_checkpoint(src)
    _check_weights(ckpt, src)  # never write a fresh hash over corrupt weights
    config = _config_from(ckpt, src)
    if int(ckpt["step"]) != config.steps:
        raise ValueError(f"checkpoint {src} is unfinished (step {ckpt['step']} of {config.steps}); finish training first")
    ema = {}
    for k, v in ckpt["ema"].items():
        if half and v.is_floating_point():
            h = v.half()
            if not torch.isfinite(h).all():
                raise ValueError(f"weight {k} of {src} overflows float16; export with half=False")
            v = h
        ema[k] = v
    out = {
        "format": CHECKPOINT_FORMAT,
        "config": ckpt["config"],
        "model_hparams": ckpt["model_hparams"],
        "data_shape": ckpt.get("data_shape"),
        "data_sha256": ckpt.get("data_sha256"),
        "step": ckpt["step"],
        "complete": True,
        "exported": True,
        "half": bool(half),
        "ema": ema,
        "history": {"loss": ckpt["history"]["loss"].float(), "lr": ckpt["history"]["lr"].float()},
        "elapsed_s": ckpt.get("elapsed_s", 0.0),
        "torch_version": str(torch.__version__),
    }
    _atomic_save(out, dst)
    return dst
