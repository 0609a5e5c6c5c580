"""Checkpoints of training runs: the file layout, its integrity checks, loading and export.

A checkpoint (format :data:`CHECKPOINT_FORMAT`) is a dict written by ``torch.save``: the
config, the model's hyper-parameters, the EMA weights and the loss history, and, while training,
everything a resumed run reads (network weights, optimizer and scheduler states, both
generators' states, the data permutation): ``_save_training`` writes it, ``_resume_training`` reads it back
(book chapter 8: a resumed run is bitwise identical to an uninterrupted one on the CPU).
Every file carries the sha256 of its EMA weights and of its training state and the fingerprint
of its training images (:func:`data_fingerprint`); a ``MANIFEST.json`` beside exported files
lists their sha256. Loading checks all of them and says which file to restore or delete.
:func:`export_checkpoint` keeps only the EMA weights (fp16), for committing trained networks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Union

import torch

from lemmse._io import atomic_path
from lemmse._runtime import resolve_device
from lemmse.config import TrainConfig
from lemmse.nets import make_model

__all__ = ["CHECKPOINT_FORMAT", "checkpoint_path", "data_fingerprint", "load_checkpoint",
           "export_checkpoint"]

#: The "format" entry of every checkpoint this module writes (and the only one it reads).
CHECKPOINT_FORMAT = "lemmse-train-v1"


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


# --------------------------------------------------------------------------- training state


def _save_training(path: Path, config: TrainConfig, parts: dict, stream, noise_gen, *,
                   step: int, history: dict, data_shape, fingerprint: str, elapsed: float):
    """Write the checkpoint of a run at ``step``: ``parts`` are the objects with a state dict
    saved under their key ("model", "ema", "optimizer", "scheduler"), ``stream`` the data order
    and ``noise_gen`` the noise generator."""
    _atomic_save(
        {
            "format": CHECKPOINT_FORMAT,
            "config": config.to_dict(),
            "model_hparams": parts["model"].hparams,
            "data_shape": list(data_shape),
            "data_sha256": fingerprint,
            "step": step,
            "complete": step == config.steps,
            **{k: part.state_dict() for k, part in parts.items()},
            "rng": {"data": stream.state_dict(), "noise": noise_gen.get_state(),
                    "noise_device": noise_gen.device.type},
            "history": _history_tensors(history),
            "elapsed_s": elapsed,
            "torch_version": str(torch.__version__),
        },
        path,
    )


def _resume_training(path: Path, config: TrainConfig, parts: dict, stream, noise_gen, *,
                     fingerprint: str, data_shape, stop: int):
    """Load the run saved by ``_save_training`` at ``path`` into ``parts``, ``stream`` and
    ``noise_gen``, after checking it is this config's, on these images, resumable and intact.

    Returns ``(step, history, elapsed)``: the completed steps, the lists ``loss`` and ``lr``,
    and the training time so far.
    """
    ckpt = _read_checkpoint(path)
    _check_same(config, _config_from(ckpt, path), path)
    if "optimizer" not in ckpt:
        raise ValueError(f"checkpoint {path} is an export (EMA weights only) and cannot be resumed")
    _check_resume_state(ckpt, path)
    _check_data(ckpt, fingerprint, path)
    data_shape = tuple(data_shape)
    if tuple(ckpt.get("data_shape", data_shape)) != data_shape:
        raise ValueError(f"checkpoint {path} was trained on images {ckpt['data_shape']}, data has {data_shape}")
    step = int(ckpt["step"])
    if step > stop:
        raise ValueError(f"checkpoint {path} is at step {step}, past until_step={stop}")
    for k, part in parts.items():  # model, ema, optimizer, scheduler, in that order
        part.load_state_dict(ckpt[k])
    stream.load_state_dict(ckpt["rng"]["data"])
    device = noise_gen.device
    if ckpt["rng"]["noise_device"] == device.type:
        noise_gen.set_state(ckpt["rng"]["noise"])
    else:
        warnings.warn(
            f"checkpoint {path} was written on {ckpt['rng']['noise_device']}, resuming on {device.type}: "
            "the noise stream is re-seeded, so the run will not match an uninterrupted one bitwise",
            stacklevel=3,  # the caller of train_model
        )
        noise_gen.manual_seed(config.seed + 1 + step)
    history = {k: [float(v) for v in ckpt["history"][k]] for k in ("loss", "lr")}
    return step, history, float(ckpt.get("elapsed_s", 0.0))


# --------------------------------------------------------------------------- loading and export


def checkpoint_path(config: TrainConfig, root: Union[str, os.PathLike] = "checkpoints") -> Path:
    """Where :func:`~lemmse.train.train_or_load` keeps the checkpoint of ``config``:
    ``root / config.filename()``."""
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
    TypeError, ValueError
        ``device`` neither a device string ("auto", "cpu", "cuda:0", ...) nor a torch.device;
        an unknown or meta device; CUDA where there is none.
    """
    device = resolve_device(device)  # a bad device fails before the file is read
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
    model = model.to(device).eval()
    model.requires_grad_(False)
    model.train_config = config
    history = {k: torch.as_tensor(ckpt["history"][k]) for k in ("loss", "lr")}
    return model, config, history


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
