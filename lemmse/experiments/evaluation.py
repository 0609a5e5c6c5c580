"""Evaluating the trained networks against the LE-MMSE of their own training set.

Every study compares a network and an LE-MMSE on the same measurement ``y = A x + σ e``, with
the noise of :func:`noise_seed` (one generator per image) and the images of
:func:`eval_images`; :func:`lemmse_outputs` computes (or reuses from a cache) the LE-MMSE side.

- :func:`evaluate_agreement`: PSNR(net, LE-MMSE), PSNR(net, truth), PSNR(LE-MMSE, truth) per
  setting, split and σ (``results/agreement.csv``; book chapters 9 ``book/09_agreement.md``,
  10 ``book/10_physics_networks.md`` and 15 ``book/15_superresolution.md``);
- :func:`evaluate_budget`: the same for the networks of each training budget
  (``results/training_budget.csv``, chapter 9);
- :func:`evaluate_patch_size`: each network against the LE-MMSEs of several patch sizes
  (``results/patch_size.csv``, chapter 11 ``book/11_analysis.md``);
- :func:`evaluate_groups`: group-averaged networks against the LE-MMSE of each group orbit
  (``results/groups.csv``, chapter 14 ``book/14_symmetry.md``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import torch

from lemmse._io import atomic_path
from lemmse.data import load_dataset
from lemmse.experiments.grid import BUDGET_STEPS, EVAL_SPLITS, SIGMAS, Experiment, _scale
from lemmse.experiments.runs import _default_roots, find_checkpoint
from lemmse.groups import GROUPS as GROUPS_OF_NETS
from lemmse.metrics import psnr
from lemmse.train import PHYSICS, load_checkpoint, make_operator, predict

__all__ = [
    "noise_seed",
    "eval_images",
    "lemmse_outputs",
    "evaluate_agreement",
    "evaluate_budget",
    "evaluate_patch_size",
    "evaluate_groups",
]

PathLike = Union[str, os.PathLike]

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


def _row(exp: Experiment, split: str, sigma, n_train: int, x: torch.Tensor, **values) -> dict:
    """A row of a table: the setting of ``exp``, ``split``, σ, ``n_train``, ``len(x)``, ``values``."""
    return {"dataset": exp.dataset, "task": exp.task, "arch": exp.arch, "physics": exp.physics,
            "split": split, "sigma": float(sigma), "n_train": n_train, "n_images": int(x.shape[0]),
            **values}


def _psnrs(x_net, x_le, x, p_le_truth: float) -> dict:
    """The three PSNR columns (means over the images, dB) of a network's output ``x_net``."""
    return {"psnr_net_lemmse": _mean(psnr(x_net, x_le)), "psnr_net_truth": _mean(psnr(x_net, x)),
            "psnr_lemmse_truth": p_le_truth}


def _network(config, roots):
    """The trained network of ``config``, from the first of ``roots`` that holds it."""
    return load_checkpoint(find_checkpoint(config, roots))[0]


def _bank(dataset: str, task: str, n_train: int, data_root):
    """The first ``n_train`` training images (the LE-MMSE's and the networks') and the operator."""
    train = load_dataset(dataset, "train", n=n_train, root=data_root)
    return train, make_operator(task, tuple(train.shape[1:]))


def _cache_key(dataset, task, physics, patch_size, n_train) -> dict:
    """What names an LE-MMSE in the cache of :func:`lemmse_outputs` (with its training images)."""
    return {"dataset": dataset, "task": task, "physics": physics, "P": patch_size, "n_train": n_train}


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
    roots: Optional[Iterable] = None,
    data_root=None,
    seed: int = 0,
    progress: bool = True,
    return_images: bool = False,
    cache: Optional[PathLike] = None,
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
        One per experiment, split and σ, with the keys of ``CSV_COLUMNS``; the PSNRs (dB)
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
    roots = _default_roots() if roots is None else tuple(roots)
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
            models = {e: _network(c, roots) for e, c in configs.items()}
            n_train = next(iter(configs.values())).n_train
            train, op = _bank(dataset, task, n_train, data_root)
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
                    key = _cache_key(dataset, task, physics, patch_size, n_train)
                    y, x_le = lemmse_outputs(est, train, op, key, x, split, sigma, seed, cache)
                    p_le_truth = _mean(psnr(x_le, x))
                    store = {"x": x, "y": y, "lemmse": x_le}
                    for exp in exps:
                        x_net = predict(models[exp], y, float(sigma))
                        store[exp.arch] = x_net
                        rows.append(_row(exp, split, sigma, n_train, x,
                                         **_psnrs(x_net, x_le, x, p_le_truth)))
                    if return_images:
                        images[(dataset, task, physics, split, float(sigma))] = store
                    bar.update(1)
    return (rows, images) if return_images else rows


def evaluate_patch_size(
    experiments: Sequence[Experiment],
    scale="cpu",
    *,
    lemmse_patch_sizes: Sequence[int] = (3, 5, 7, 9),
    sigmas: Sequence[float] = (0.1, 0.2, 0.5), split: str = "test", n_images: int = 8,
    roots: Optional[Iterable] = None, data_root=None, seed: int = 0, progress: bool = True,
    cache: Optional[PathLike] = None,
) -> list:
    """PSNR between each network and the LE-MMSE of every patch size in ``lemmse_patch_sizes``.

    The networks and the LE-MMSEs of one (dataset, task, physics, n_train) share the training
    images and the measurements (the noise of :func:`noise_seed`). If a network with receptive
    field ``P`` is best explained by the LE-MMSE with the same ``P``, the diagonal of the
    (``patch_net``, ``patch_lemmse``) table is the largest PSNR of its row.

    Returns rows with the keys of ``PATCH_CSV_COLUMNS``.
    """
    from tqdm.auto import tqdm

    from lemmse.estimators import LEMMSE

    s = _scale(scale)
    roots = _default_roots() if roots is None else tuple(roots)
    groups = {}
    for exp in experiments:
        c = exp.config(s)
        groups.setdefault((exp.dataset, exp.task, exp.physics, c.n_train), []).append((exp, c))
    rows = []
    total = sum(len(lemmse_patch_sizes) * len(sigmas) for _ in groups)
    with tqdm(total=total, disable=not progress, desc="patch size", unit="LE-MMSE", dynamic_ncols=True) as bar:
        for (dataset, task, physics, n_train), members in groups.items():
            models = {exp: _network(c, roots) for exp, c in members}
            train, op = _bank(dataset, task, n_train, data_root)
            x = eval_images(dataset, split, n_images, n_train, data_root)
            for P in lemmse_patch_sizes:
                est = LEMMSE(train, op, patch_size=P, preinverse=PHYSICS[physics])
                key = _cache_key(dataset, task, physics, P, n_train)
                for sigma in sigmas:
                    bar.set_postfix_str(f"{dataset} {task} P={P} σ={sigma}")
                    y, x_le = lemmse_outputs(est, train, op, key, x, split, sigma, seed, cache)
                    for exp in models:
                        x_net = predict(models[exp], y, float(sigma))
                        rows.append(_row(exp, split, sigma, n_train, x, patch_net=exp.patch_size,
                                         patch_lemmse=P, psnr_net_lemmse=_mean(psnr(x_net, x_le))))
                    bar.update(1)
    return rows


def evaluate_groups(
    experiments: Sequence[Experiment],
    scale="cpu",
    *,
    net_groups: Sequence[str] = ("translations", "d4"),
    lemmse_groups: Sequence[str] = ("translations", "flips", "d4"),
    sigmas: Sequence[float] = (0.1, 0.2, 0.5), split: str = "test", n_images: int = 8,
    roots: Optional[Iterable] = None, data_root=None, seed: int = 0, progress: bool = True,
    cache: Optional[PathLike] = None,
) -> list:
    """PSNR between each group-averaged network and the LE-MMSE of each group orbit (chapter 14).

    For every experiment and every group of ``net_groups``, the network trained with
    ``TrainConfig(group=...)`` (``"translations"``: the plain network) is compared on the same
    measurements (the noise of :func:`noise_seed`) with ``LEMMSE(train, A, P, group=g)`` for
    every ``g`` of ``lemmse_groups``. If a network is best explained by the LE-MMSE of its own
    group, ``group_lemmse == group_net`` has the largest ``psnr_net_lemmse`` of its row.

    Returns rows with the keys of ``GROUP_CSV_COLUMNS``.
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
    roots = _default_roots() if roots is None else tuple(roots)

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
            models = {(e, g): _network(config(e, g), roots) for e in exps for g in net_groups}
            train, op = _bank(dataset, task, n_train, data_root)
            x = eval_images(dataset, split, n_images, n_train, data_root)
            nets = {}
            for gl in lemmse_groups:
                est = LEMMSE(train, op, patch_size=patch_size, preinverse=PHYSICS[physics], group=gl)
                key = _cache_key(dataset, task, physics, patch_size, n_train)
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
                        rows.append(_row(exp, split, sigma, n_train, x, group_net=gn, group_lemmse=gl,
                                         **_psnrs(x_net, x_le, x, p_le)))
                    bar.update(1)
    return rows


def evaluate_budget(experiments: Sequence[Experiment], steps: Sequence[int] = BUDGET_STEPS,
                    scale="cpu", **kwargs) -> list:
    """The agreement of :func:`evaluate_agreement` for the networks trained ``steps`` steps.

    Each budget is its own training run (the learning rate warms up and decays to 0 at its
    ``steps``), not a snapshot of a longer one. The LE-MMSE outputs do not depend on the
    budget: with a ``cache`` they are computed once. ``kwargs`` go to
    :func:`evaluate_agreement` (``sigmas``, ``splits``, ``n_images``, ``roots``, ``cache``, ...).

    Returns rows with the keys of ``BUDGET_CSV_COLUMNS`` (``images_seen`` = steps × batch).
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

