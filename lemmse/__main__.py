"""Command line: ``python -m lemmse COMMAND ...`` (also installed as ``lemmse``).

Commands
--------
train
    Train a network for a :class:`lemmse.train.TrainConfig` (one option per field), or load it
    if its checkpoint already exists under ``--root``; prints where the checkpoint is.
export
    Write a small (fp16) copy of a finished checkpoint, loadable by ``load_checkpoint``.
experiment
    The experiment grid of the book (``lemmse.experiments``): ``experiment train``,
    ``experiment export`` and ``experiment agreement``.

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


def _width(text: str):
    if text in ("default", "reference"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"width must be an integer, 'default' or 'reference', got {text!r}") from None


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
    choices = {"dataset": DATASETS, "split": SPLITS, "task": tuple(TASKS), "physics": tuple(PHYSICS), "arch": ARCHS}
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
    p.add_argument("--data-root", default=None, help="data folder (default: $LEMMSE_DATA or ~/.cache/lemmse/data)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_train, parser=p)


def _run_train(args) -> int:
    import dataclasses as dc

    from lemmse.train import TrainConfig, checkpoint_path, load_checkpoint, train_or_load

    values = {f.name: getattr(args, f.name) for f in dc.fields(TrainConfig) if getattr(args, f.name) is not None}
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
        print(f"warning: warmup_steps={config.warmup_steps} >= steps={config.steps}: the learning rate "
              f"never leaves its linear warm-up", file=sys.stderr)
    try:
        train_or_load(config, args.root, data_root=args.data_root, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
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

    try:
        dst = export_checkpoint(args.src, args.dst, half=not args.full_precision)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"exported: {dst} ({dst.stat().st_size / 1e6:.2f} MB)")
    return 0


def _add_experiment(sub):
    from lemmse.experiments import _add_cli

    _add_cli(sub)


#: Subcommands, in the order ``--help`` lists them.
COMMANDS = [_add_train, _add_export, _add_experiment]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lemmse", description="lemmse command line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


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
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
