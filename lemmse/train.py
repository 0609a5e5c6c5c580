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
:func:`load_checkpoint`, :func:`export_checkpoint`. This module holds the training loop and
inference; it re-exports, so that ``lemmse.train.X`` keeps working, the config
(``lemmse.config``), the task registry (``lemmse.tasks``), the checkpoint files
(``lemmse.checkpoints``) and the device helpers (``lemmse._runtime``). Book chapter 8.
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F

from lemmse._runtime import compiled_forward, no_tf32, resolve_device, tune_allocator
from lemmse._validate import check_finite_output, check_int, screen_sigma
from lemmse.checkpoints import (CHECKPOINT_FORMAT, _check_data, _check_same, _history_tensors,
                                _read_checkpoint, _resume_training, _save_training,
                                checkpoint_path, data_fingerprint, export_checkpoint,
                                load_checkpoint)
from lemmse.checkpoints import _weights_sha256  # noqa: F401 (re-exported: tests import it here)
from lemmse.config import RUN_ONLY_FIELDS, TrainConfig  # noqa: F401 (RUN_ONLY_FIELDS re-exported)
from lemmse.data import SPLITS  # noqa: F401 (re-exported: the command line imports it here)
from lemmse.data import DATASETS, load_dataset
from lemmse.nets import SigmaNet, make_model
from lemmse.operators import preinverse
from lemmse.tasks import PHYSICS, TASK_FACTORS, TASKS, make_operator

__all__ = [
    "TASKS", "TASK_FACTORS", "PHYSICS", "DATASETS", "CHECKPOINT_FORMAT",
    "TrainConfig", "TrainResult", "make_operator", "predict", "resolve_device",
    "train_model", "train_or_load", "checkpoint_path", "data_fingerprint",
    "load_checkpoint", "export_checkpoint", "tune_allocator",
]


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


# --------------------------------------------------------------------------- training


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
    stop = config.steps if until_step is None else check_int("until_step", until_step, 0)
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
    parts = {"model": model, "ema": ema, "optimizer": opt, "scheduler": sched}  # saved state dicts
    history = {"loss": [], "lr": []}
    step, elapsed = 0, 0.0
    if path is not None and path.exists():
        step, history, elapsed = _resume_training(path, config, parts, stream, noise_gen,
                                                  fingerprint=fingerprint, data_shape=image_shape,
                                                  stop=stop)

    def save():
        if path is not None:
            _save_training(path, config, parts, stream, noise_gen, step=step, history=history,
                           data_shape=image_shape, fingerprint=fingerprint, elapsed=elapsed)

    from tqdm.auto import tqdm

    bar = tqdm(
        total=config.steps,
        initial=step,
        disable=not progress,
        desc=f"{config.arch} P={config.patch_size} {config.task}",
        unit="step",
        dynamic_ncols=True,
    )
    forward = compiled_forward(model) if config.compile else model
    pending = []  # losses of recent steps, still on the device
    log_every = 10
    model.train()
    with no_tf32(), bar:
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
    device, in float32); [B, C, s H, s W] for super-resolution (``s`` of
    ``lemmse.tasks.TASK_FACTORS``).

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

