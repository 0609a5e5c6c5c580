"""Training the experiment grid, exporting it to ``results/checkpoints`` and finding checkpoints.

:func:`train_grid` trains (or loads) the networks that :func:`~lemmse.experiments.select`
picks; :func:`export_grid` copies their EMA weights (fp16) to ``results_root() /
"checkpoints"`` with a ``MANIFEST.json`` (config, command, data, steps, training time,
sha256); :func:`find_checkpoint` looks a network up among the exported and the local
checkpoints. Book chapter 8 (``book/08_training.md``) runs and reads them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

import torch

from lemmse._io import write_text_atomic
from lemmse._paths import results_root
from lemmse.experiments.grid import Experiment, Scale, _scale, select
from lemmse.train import TrainConfig, checkpoint_path, train_or_load

__all__ = ["RESULTS_CHECKPOINTS", "train_grid", "export_grid", "find_checkpoint"]

PathLike = Union[str, os.PathLike]

#: Where the committed (exported, fp16) checkpoints live, relative to the repository root; the
#: package looks for them in ``results_root() / "checkpoints"``.
RESULTS_CHECKPOINTS = Path("results") / "checkpoints"


def _default_roots() -> tuple:
    """The checkpoint folders searched by default: the committed exports, then ``checkpoints``."""
    return (results_root() / "checkpoints", "checkpoints")


def _grid_configs(scale, dataset, task, arch, physics, grid, patch_size, n_train,
                  **overrides) -> Iterator[tuple]:
    """``(experiment, TrainConfig)`` for each experiment :func:`select` picks, one at a time."""
    s = _scale(scale)
    for exp in select(dataset, task, arch, physics, grid, patch_size, n_train, s):
        yield exp, exp.config(s, **overrides)


def train_grid(scale="cpu", *, dataset=None, task=None, arch=None, physics=None, grid="main",
               patch_size=None, n_train=None, root: PathLike = "checkpoints", data_root=None,
               device: str = "auto", progress: bool = True, **overrides) -> dict:
    """Train (or load) every selected experiment at ``scale``; returns {Experiment: model}.

    Each network is ``lemmse.train.train_or_load(experiment.config(scale), root)``: nothing is
    retrained when its checkpoint exists; an interrupted run resumes. ``grid``, ``patch_size``
    and ``n_train`` select as in :func:`select`; ``overrides`` are extra TrainConfig fields.
    """
    return {exp: train_or_load(config, root, data_root=data_root, progress=progress)
            for exp, config in _grid_configs(scale, dataset, task, arch, physics, grid,
                                             patch_size, n_train, device=device, **overrides)}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _manifest_entry(exp: Experiment, scale: Scale, config: TrainConfig, out: Path) -> dict:
    """What ``MANIFEST.json`` says about the exported checkpoint ``out`` of ``exp``."""
    ckpt = torch.load(out, map_location="cpu", weights_only=False)
    loss = ckpt["history"]["loss"]
    return {
        "experiment": exp.as_dict(),
        "scale": scale.name,
        "config": config.identity(),
        "command": exp.command(scale, config.steps, config.group),
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


def export_grid(scale="cpu", *, dataset=None, task=None, arch=None, physics=None, grid="main",
                patch_size=None, n_train=None, src: PathLike = "checkpoints",
                dst: Optional[PathLike] = None, **overrides) -> Path:
    """Export the selected finished checkpoints (EMA weights, fp16) and update ``dst/MANIFEST.json``.

    ``dst`` defaults to ``results_root() / "checkpoints"``. Each exported file keeps the
    checkpoint's name (so :func:`find_checkpoint` and ``train_or_load(config, dst)`` find it).
    The manifest maps each file name to its config, the command that trained it, the data it
    saw, its steps, training time and sha256. Returns the manifest's path.
    """
    from lemmse.train import export_checkpoint

    dst = results_root() / "checkpoints" if dst is None else Path(dst)
    manifest_path = dst / "MANIFEST.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"files": {}}
    s = _scale(scale)
    for exp, config in _grid_configs(s, dataset, task, arch, physics, grid, patch_size, n_train,
                                     **overrides):
        path = checkpoint_path(config, src)
        if not path.exists():
            raise FileNotFoundError(
                f"no finished checkpoint {path}; train it first: {exp.command(s, config.steps, config.group)}"
            )
        out = export_checkpoint(path, dst / path.name, half=True)
        manifest["files"][out.name] = _manifest_entry(exp, s, config, out)
    manifest["files"] = dict(sorted(manifest["files"].items()))
    write_text_atomic(manifest_path, json.dumps(manifest, indent=2) + "\n")
    return manifest_path


def find_checkpoint(config: TrainConfig, roots: Optional[Iterable] = None) -> Path:
    """The first existing checkpoint of ``config`` among ``roots`` (committed exports first).

    ``roots`` defaults to ``results_root() / "checkpoints"``, then ``checkpoints``.
    """
    tried = []
    for root in _default_roots() if roots is None else roots:
        path = checkpoint_path(config, root)
        if path.exists():
            return path
        tried.append(str(path))
    raise FileNotFoundError(f"no checkpoint for this config; looked for {', '.join(tried)}")
