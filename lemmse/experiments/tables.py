"""The CSV tables of the experiments: their columns, reading, writing and merging.

``results/agreement.csv`` (``CSV_COLUMNS``; book chapters 9 ``book/09_agreement.md``,
10, 13 and 15), ``results/training_budget.csv`` (``BUDGET_CSV_COLUMNS``, chapter 9),
``results/patch_size.csv`` (``PATCH_CSV_COLUMNS``, chapter 11 ``book/11_analysis.md``)
and ``results/groups.csv`` (``GROUP_CSV_COLUMNS``, chapter 14 ``book/14_symmetry.md``),
where ``results/`` is ``lemmse._paths.results_root``. Every table is written atomically,
PSNRs with 3 decimals and rows in a fixed order, so that a rerun changes only what changed;
:func:`merge_rows` updates the rows of an existing table with new ones.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Optional, Sequence, Union

from lemmse._io import write_text_atomic
from lemmse._paths import results_root

__all__ = [
    "CSV_COLUMNS",
    "BUDGET_CSV_COLUMNS",
    "PATCH_CSV_COLUMNS",
    "GROUP_CSV_COLUMNS",
    "merge_rows",
    "write_agreement_csv",
    "read_agreement_csv",
    "write_budget_csv",
    "read_budget_csv",
    "write_patch_size_csv",
    "read_patch_size_csv",
    "write_groups_csv",
    "read_groups_csv",
]

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

#: The file name of each table in ``lemmse._paths.results_root`` (the default ``path`` of
#: its reader and writer).
_FILES = {
    CSV_COLUMNS: "agreement.csv",
    BUDGET_CSV_COLUMNS: "training_budget.csv",
    PATCH_CSV_COLUMNS: "patch_size.csv",
    GROUP_CSV_COLUMNS: "groups.csv",
}

PathLike = Union[str, os.PathLike]

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


def _path(path: Optional[PathLike], columns: tuple) -> Path:
    return results_root() / _FILES[columns] if path is None else Path(path)


def _write_csv(rows: Sequence[dict], path, columns: tuple) -> Path:
    path = _path(path, columns)
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
    write_text_atomic(path, buf.getvalue())
    return path


def _read_csv(path, columns: tuple) -> list:
    path = _path(path, columns)
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


def write_agreement_csv(rows: Sequence[dict], path: Optional[PathLike] = None) -> Path:
    """Write ``rows`` to ``path`` with exactly the columns ``CSV_COLUMNS`` (atomically).

    PSNRs with 3 decimals; rows sorted by dataset, task, physics, arch, split, n_train, n_images, σ.
    ``path`` defaults to ``results_root() / "agreement.csv"`` (as for every table here: its
    file in ``lemmse._paths.results_root``).
    """
    return _write_csv(rows, path, CSV_COLUMNS)


def read_agreement_csv(path: Optional[PathLike] = None) -> list:
    """Rows of ``path`` as dicts (σ and PSNRs as float, n_train and n_images as int).

    ``path`` defaults to ``results_root() / "agreement.csv"``.
    """
    return _read_csv(path, CSV_COLUMNS)


def write_patch_size_csv(rows: Sequence[dict], path: Optional[PathLike] = None) -> Path:
    """Write the rows of :func:`evaluate_patch_size` with the columns ``PATCH_CSV_COLUMNS`` (atomically)."""
    return _write_csv(rows, path, PATCH_CSV_COLUMNS)


def read_patch_size_csv(path: Optional[PathLike] = None) -> list:
    """Rows of ``path`` (default ``results_root() / "patch_size.csv"``; ``PATCH_CSV_COLUMNS``)."""
    return _read_csv(path, PATCH_CSV_COLUMNS)


def write_budget_csv(rows: Sequence[dict], path: Optional[PathLike] = None) -> Path:
    """Write the rows of :func:`evaluate_budget` with the columns ``BUDGET_CSV_COLUMNS`` (atomically)."""
    return _write_csv(rows, path, BUDGET_CSV_COLUMNS)


def read_budget_csv(path: Optional[PathLike] = None) -> list:
    """Rows of ``path`` (default ``results_root() / "training_budget.csv"``; ``BUDGET_CSV_COLUMNS``)."""
    return _read_csv(path, BUDGET_CSV_COLUMNS)


def write_groups_csv(rows: Sequence[dict], path: Optional[PathLike] = None) -> Path:
    """Write the rows of :func:`evaluate_groups` with the columns ``GROUP_CSV_COLUMNS`` (atomically)."""
    return _write_csv(rows, path, GROUP_CSV_COLUMNS)


def read_groups_csv(path: Optional[PathLike] = None) -> list:
    """Rows of ``path`` (default ``results_root() / "groups.csv"``; ``GROUP_CSV_COLUMNS``)."""
    return _read_csv(path, GROUP_CSV_COLUMNS)


def _merge_into(path: Optional[PathLike], rows: Sequence[dict], columns: tuple) -> Path:
    """Update the table ``columns`` at ``path`` with ``rows`` (see :func:`merge_rows`), atomically."""
    path = _path(path, columns)
    old = _read_csv(path, columns) if path.exists() else []
    return _write_csv(merge_rows(old, rows), path, columns)


