"""Command line: ``python -m lemmse COMMAND ...`` (also installed as ``lemmse``).

Every subcommand lives here; ``lemmse/__main__.py`` only calls :func:`main`. Book chapter 8
(``book/08_training.md``) runs them.

Commands
--------
train
    Train a network for a :class:`lemmse.train.TrainConfig` (one option per field), or load it
    if its checkpoint already exists under ``--root``; prints where the checkpoint is.
export
    Write a small (fp16) copy of a finished checkpoint, loadable by ``load_checkpoint``.
shard
    LE-MMSE outputs for a data set split, the training set sharded over the processes of
    ``torchrun`` (:mod:`lemmse.distributed`), written to a ``.pt`` file.
experiment
    The experiment grid of the book (:mod:`lemmse.experiments`): ``experiment train``,
    ``experiment export``, ``experiment agreement``, ``experiment budget``,
    ``experiment patch-size`` and ``experiment groups``. A default path under ``results/``
    means :func:`lemmse.experiments.results_root` (the checkout's ``results/`` folder, or
    ``$LEMMSE_RESULTS``); ``checkpoints/`` is relative to the current folder.

Errors a user can fix (a ``ValueError`` or ``FileNotFoundError`` of a command) are reported by
:func:`main` in one line, ``error: ...`` on stderr, with exit code 1; bad options are argparse's
usage errors (exit code 2).

Adding a command: write ``_add_NAME(subparsers)`` that creates its subparser and sets
``func`` (a function of the parsed arguments returning an exit code), and list it in
:data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path

__all__ = ["COMMANDS", "build_parser", "main"]


# --------------------------------------------------------------------------- train, export


def _width(text: str):
    if text in ("default", "reference"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"width must be an integer, 'default' or 'reference', got {text!r}") from None


def _add_train(sub):
    from lemmse.nets import ARCHS
    from lemmse.train import DATASETS, PHYSICS, SPLITS, TASKS, TrainConfig

    p = sub.add_parser(
        "train",
        help="train a network (or load its checkpoint if it exists)",
        description="Train a σ-conditioned network on (B(A x + σ e), x), σ ~ U[0, sigma_max]; "
        "if the checkpoint of this exact config exists under --root, nothing is trained. "
        "An interrupted run resumes from its last checkpoint.",
    )
    choices = {"dataset": DATASETS, "split": SPLITS, "task": tuple(TASKS), "physics": tuple(PHYSICS),
               "arch": ARCHS}
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        kwargs = {"dest": field.name, "default": None, "help": f"(default: {field.default!r})"}
        if field.name in choices:
            kwargs["choices"] = choices[field.name]
        elif field.name == "width":
            kwargs["type"] = _width
            kwargs["help"] = "integer, 'default' or 'reference' (default: the arch's CPU-sized width)"
        elif hints[field.name] is bool:  # --compile: a switch
            kwargs.update(action="store_const", const=True,
                          help="run the training forward through torch.compile (faster after "
                               "about 30 s of compilation; default: off)")
        elif hints[field.name] in (int, float):
            kwargs["type"] = hints[field.name]
        p.add_argument(flag, **kwargs)
    p.add_argument("--root", default="checkpoints", help="checkpoint folder (default: checkpoints)")
    _data_root(p, "no progress bar")
    p.set_defaults(func=_run_train, parser=p)


def _data_root(p, no_progress_help: str):
    p.add_argument("--data-root", default=None,
                   help="data folder (default: $LEMMSE_DATA or ~/.cache/lemmse/data)")
    p.add_argument("--no-progress", action="store_true", help=no_progress_help)


def _run_train(args) -> int:
    from lemmse.train import TrainConfig, checkpoint_path, load_checkpoint, train_or_load

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
              if getattr(args, f.name) is not None}
    try:
        config = TrainConfig(**values)
    except (TypeError, ValueError) as err:
        args.parser.error(str(err))
    for flag, folder in (("--root", args.root), ("--data-root", args.data_root)):
        if folder is not None and Path(folder).exists() and not Path(folder).is_dir():
            args.parser.error(f"{flag} must be a folder, got the file {folder}")
    path = checkpoint_path(config, args.root)
    existed = path.exists()
    partial = path.with_name(path.name[: -len(".pt")] + ".partial.pt")
    if not existed and partial.exists():
        import torch

        try:
            done = int(torch.load(partial, map_location="cpu", weights_only=False)["step"])
            print(f"resuming from step {done} of {config.steps} ({partial})")
        except Exception:  # train_or_load reports a broken partial checkpoint itself
            pass
    if config.warmup_steps >= config.steps:
        print(f"warning: warmup_steps={config.warmup_steps} >= steps={config.steps}: the learning "
              f"rate never leaves its linear warm-up", file=sys.stderr)
    train_or_load(config, args.root, data_root=args.data_root, progress=not args.no_progress)
    _, _, history = load_checkpoint(path)
    loss = history["loss"]
    tail = loss[-min(len(loss), 50) :].mean().item() if len(loss) else float("nan")
    print(f"{'loaded existing' if existed else 'trained'} {config.arch} P={config.patch_size} "
          f"({config.task}, {config.physics}, {config.steps} steps); final loss {tail:.4g} "
          f"(mean of the last {min(len(loss), 50)} steps)")
    print(f"checkpoint: {path}")
    return 0


def _add_export(sub):
    p = sub.add_parser(
        "export",
        help="write a small fp16 copy of a finished checkpoint",
        description="Keep only the EMA weights (fp16 unless --full-precision), config and loss history.",
    )
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--full-precision", action="store_true", help="keep float32 weights")
    p.set_defaults(func=_run_export, parser=p)


def _run_export(args) -> int:
    from lemmse.train import export_checkpoint

    dst = export_checkpoint(args.src, args.dst, half=not args.full_precision)
    print(f"exported: {dst} ({dst.stat().st_size / 1e6:.2f} MB)")
    return 0


# --------------------------------------------------------------------------- experiment


def _add_experiment(sub):
    """Register ``python -m lemmse experiment {train,export,agreement,budget,patch-size,groups}``."""
    from lemmse.experiments import BUDGET_STEPS, SIGMAS, results_root

    p = sub.add_parser(
        "experiment",
        help="the experiment grid of the book: train, export, agreement",
        description="Train, export and evaluate the networks of the experiment grid "
                    "(lemmse.experiments).",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    results = results_root()

    t = _action(actions, "train", "train (or load) the selected networks", _run_grid_train)
    t.add_argument("--root", default="checkpoints", help="checkpoint folder (default: checkpoints)")
    t.add_argument("--device", default="auto",
                   help="auto (CUDA when available), cpu, cuda, ... (default: auto)")
    t.add_argument("--compile", action="store_true",
                   help="train through torch.compile (0.96-1.67x the eager speed on a 2-core CPU, "
                        "1.24-1.63x for the grid's U-Net, after about 30 s of compilation per "
                        "network; the checkpoints are the same experiments)")

    e = _action(actions, "export", "export finished checkpoints (fp16) with a manifest",
                _run_grid_export)
    e.add_argument("--root", default="checkpoints",
                   help="where the finished checkpoints are (default: checkpoints)")
    e.add_argument("--out", default=str(results / "checkpoints"),
                   help="(default: results/checkpoints)")

    a = _action(actions, "agreement", "PSNR(net, LE-MMSE) etc. for the selected networks -> CSV",
                _run_agreement)
    _out(a, results, "agreement.csv")
    _study_options(a, results, SIGMAS, per_split=True)

    b = _action(actions, "budget", "the training-budget study: agreement against steps -> CSV",
                _run_budget)
    b.add_argument("--budget-steps", type=int, nargs="+", default=list(BUDGET_STEPS),
                   help=f"the budgets, in steps (default: {' '.join(map(str, BUDGET_STEPS))})")
    _out(b, results, "training_budget.csv")
    _study_options(b, results, SIGMAS, per_split=True)

    ps = _action(actions, "patch-size",
                 "PSNR(net with patch size P, LE-MMSE with patch size P') -> CSV", _run_patch_size)
    ps.set_defaults(grid="all")
    _out(ps, results, "patch_size.csv")
    ps.add_argument("--lemmse-patch-size", type=int, nargs="+", default=[3, 5, 7, 9],
                    help="(default: 3 5 7 9)")
    _study_options(ps, results, (0.1, 0.2, 0.5), per_split=False)

    from lemmse.groups import GROUPS

    gr = _action(actions, "groups", "PSNR(group-averaged net, LE-MMSE of a group orbit) -> CSV",
                 _run_groups)
    gr.set_defaults(grid="analysis")
    _out(gr, results, "groups.csv")
    gr.add_argument("--net-group", nargs="+", choices=tuple(GROUPS), default=["translations", "d4"],
                    help="the networks' groups (default: translations d4)")
    gr.add_argument("--lemmse-group", nargs="+", choices=tuple(GROUPS),
                    default=["translations", "flips", "d4"],
                    help="the LE-MMSEs' groups (default: translations flips d4)")
    _study_options(gr, results, (0.1, 0.2, 0.5), per_split=False)


def _action(actions, name: str, help: str, func):
    """The subparser of ``experiment NAME`` with the options that select experiments."""
    from lemmse.experiments import GRIDS, SCALES
    from lemmse.groups import GROUPS

    q = actions.add_parser(name, help=help)
    q.add_argument("--scale", choices=tuple(SCALES), default="cpu", help="(default: cpu)")
    for key in ("dataset", "task", "arch", "physics"):
        q.add_argument(f"--{key}", nargs="+", default=None, help=f"only these {key} values (default: all)")
    q.add_argument("--grid", choices=tuple(GRIDS), default="main",
                   help="main: the agreement grid; analysis: the dataset-size and patch-size "
                        "networks; sr: the x2 super-resolution networks (default: main)")
    q.add_argument("--patch-size", type=int, nargs="+", default=None,
                   help="only these patch sizes (default: all)")
    q.add_argument("--n-train", type=int, nargs="+", default=None,
                   help="only experiments with these numbers of training images (default: all)")
    q.add_argument("--steps", type=int, default=None,
                   help="optimiser steps (default: the experiment's at the scale; the "
                        "training-budget study)")
    q.add_argument("--group", default="translations", choices=tuple(GROUPS),
                   help="networks averaged over this group of grid symmetries (default: translations)")
    _data_root(q, "no progress bars")
    q.set_defaults(func=func)
    return q


def _out(q, results: Path, name: str):
    q.add_argument("--out", default=str(results / name),
                   help=f"CSV, updated in place (default: results/{name})")


def _study_options(q, results: Path, sigmas, per_split: bool):
    """The options of the four studies after their own: images, σ, split, roots, cache."""
    from lemmse.experiments import EVAL_SPLITS

    q.add_argument("--n-images", type=int, default=8,
                   help=f"images{' per split' if per_split else ''} (default: 8)")
    q.add_argument("--sigma", type=float, nargs="+", default=list(sigmas),
                   help=f"(default: {' '.join(map(str, sigmas))})")
    if per_split:
        q.add_argument("--split", nargs="+", choices=EVAL_SPLITS, default=list(EVAL_SPLITS))
    else:
        q.add_argument("--split", choices=EVAL_SPLITS, default="test", help="(default: test)")
    q.add_argument("--roots", nargs="+", default=[str(results / "checkpoints"), "checkpoints"],
                   help="checkpoint folders searched in order (default: results/checkpoints checkpoints)")
    q.add_argument("--cache", default="checkpoints/cache",
                   help="folder where LE-MMSE outputs are reused, or 'none' (default: checkpoints/cache)")


def _selection(args) -> dict:
    from lemmse.experiments import select

    sel = {k: getattr(args, k) for k in ("dataset", "task", "arch", "physics", "grid", "patch_size",
                                         "n_train")}
    if not select(**sel, scale=args.scale):
        raise ValueError("no experiment matches the filters")
    return sel


def _selected(args) -> list:
    from lemmse.experiments import select

    return select(**_selection(args), scale=args.scale)


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


def _study_kwargs(args) -> dict:
    """The keywords every ``evaluate_*`` study takes from the command line."""
    return dict(sigmas=args.sigma, n_images=args.n_images, roots=args.roots, data_root=args.data_root,
                progress=not args.no_progress, cache=None if args.cache == "none" else args.cache)


#: How a row of a study's table is printed (``str.format`` of the row).
_PSNR_LINE = ("net-LE {psnr_net_lemmse:6.2f}  net-x {psnr_net_truth:6.2f}  "
              "LE-x {psnr_lemmse_truth:6.2f}")


def _report(out, rows: list, columns: tuple, line: str) -> int:
    """Merge ``rows`` into the CSV ``out``, print each row with the template ``line``."""
    from lemmse.experiments.tables import _merge_into

    out = _merge_into(out, rows, columns)
    for r in rows:
        print(line.format(**r))
    print(f"wrote {out} ({len(rows)} rows updated)")
    return 0


def _run_grid_train(args) -> int:
    from lemmse.experiments import train_grid
    from lemmse.train import checkpoint_path

    models = train_grid(args.scale, **_selection(args), root=args.root, data_root=args.data_root,
                        device=args.device, progress=not args.no_progress,
                        **_overrides(args), **({"compile": True} if args.compile else {}))
    for exp, model in models.items():
        print(f"{exp.dataset} {exp.task} {exp.physics} {exp.arch}: "
              f"{checkpoint_path(model.train_config, args.root)}")
    return 0


def _run_grid_export(args) -> int:
    from lemmse.experiments import export_grid

    path = export_grid(args.scale, **_selection(args), src=args.root, dst=args.out, **_overrides(args))
    print(f"manifest: {path}")
    return 0


def _run_agreement(args) -> int:
    from lemmse.experiments import CSV_COLUMNS, evaluate_agreement

    rows = evaluate_agreement(_selected(args), args.scale, splits=args.split, **_study_kwargs(args),
                              **_overrides(args))
    return _report(args.out, rows, CSV_COLUMNS,
                   "{dataset} {task} {physics} {arch:8s} {split:5s} σ={sigma:<4g} " + _PSNR_LINE)


def _run_budget(args) -> int:
    from lemmse.experiments import BUDGET_CSV_COLUMNS, evaluate_budget

    if args.steps is not None:
        raise ValueError("use --budget-steps to choose the budgets of the study, not --steps")
    rows = evaluate_budget(_selected(args), args.budget_steps, args.scale, splits=args.split,
                           **_study_kwargs(args))
    return _report(args.out, rows, BUDGET_CSV_COLUMNS,
                   "{arch:8s} {split:5s} steps={steps:<6d} σ={sigma:<4g} " + _PSNR_LINE)


def _run_groups(args) -> int:
    from lemmse.experiments import GROUP_CSV_COLUMNS, evaluate_groups

    if args.group != "translations":
        raise ValueError("use --net-group to choose the networks' groups, not --group")
    rows = evaluate_groups(_selected(args), args.scale, net_groups=args.net_group,
                           lemmse_groups=args.lemmse_group, split=args.split, **_study_kwargs(args))
    return _report(args.out, rows, GROUP_CSV_COLUMNS,
                   "{arch:8s} net {group_net:12s} LE {group_lemmse:12s} σ={sigma:<4g} " + _PSNR_LINE)


def _run_patch_size(args) -> int:
    from lemmse.experiments import PATCH_CSV_COLUMNS, evaluate_patch_size

    rows = evaluate_patch_size(_selected(args), args.scale, lemmse_patch_sizes=args.lemmse_patch_size,
                               split=args.split, **_study_kwargs(args))
    return _report(args.out, rows, PATCH_CSV_COLUMNS,
                   "{arch:8s} P_net={patch_net} P_LE={patch_lemmse} σ={sigma:<4g} "
                   "net-LE {psnr_net_lemmse:6.2f}")


# --------------------------------------------------------------------------- shard
def _add_shard(sub):
    """Register ``python -m lemmse shard`` (defined beside the sharded estimators)."""
    from lemmse._shard_run import add_shard_command

    add_shard_command(sub)


# --------------------------------------------------------------------------- the program


#: Subcommands, in the order ``--help`` lists them.
COMMANDS = [_add_train, _add_export, _add_experiment, _add_shard]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lemmse", description="lemmse command line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def _run(args) -> int:
    """``args.func(args)``; a ``ValueError`` or ``FileNotFoundError`` is ``error: ...``, exit 1."""
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def main(argv=None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit code.

    Run as a program (``argv`` None), it first tunes the memory allocator for CPU training
    (:func:`lemmse.train.tune_allocator`, process-wide); called with ``argv`` (tests, notebooks)
    it leaves the process alone.
    """
    args = build_parser().parse_args(argv)
    if argv is None:
        from lemmse.train import tune_allocator

        tune_allocator()
    return _run(args)
