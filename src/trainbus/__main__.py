"""The ``trainbus`` command: ``trainbus demo`` trains a small network on bundled digits."""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line: ``trainbus demo [options]``."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="trainbus", description="trainbus: a typed event bus for PyTorch training loops."
    )
    parser.add_argument("--version", action="version", version=f"trainbus {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="train a small network on scikit-learn's bundled 8x8 digits",
        description="Train a small network on scikit-learn's bundled 8x8 handwritten digits "
        "(no download) and print a per-epoch table and the final validation accuracy.",
    )
    demo.add_argument("--epochs", type=_positive_int, default=12, help="most epochs (default 12)")
    demo.add_argument(
        "--lr", type=_positive_float, default=1e-2, help="peak one-cycle learning rate (1e-2)"
    )
    demo.add_argument("--bs", type=_positive_int, default=64, help="batch size (default 64)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument(
        "--patience", type=_positive_int, default=3, help="early-stopping patience (default 3)"
    )
    demo.add_argument(
        "--save-dir", type=Path, default=None, help="keep the best model's file in this folder"
    )
    demo.add_argument("--plot", type=Path, default=None, help="write the loss curve to this PNG")
    demo.add_argument(
        "--tensorboard",
        type=Path,
        default=None,
        metavar="DIR",
        help='log the run to TensorBoard event files in DIR (pip install "trainbus[tensorboard]")',
    )
    demo.add_argument(
        "--mlflow",
        nargs="?",
        const="",
        default=None,
        metavar="URI",
        help="log the run to MLflow, experiment trainbus-demo: to the tracking URI given, "
        'else to ./mlflow.db (pip install "trainbus[mlflow]")',
    )
    return parser


def _writable_folder(folder: Path) -> str | None:
    """Why files cannot be written in ``folder``, or ``None`` when they can (tried)."""
    if not folder.exists():
        return f"folder {folder} does not exist"
    if not folder.is_dir():
        return f"{folder} is not a folder"
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        return f"folder {folder} is not writable ({error.strerror or error})"
    return None


def _path_problem(option: str, path: Path | None, *, folder: bool) -> str | None:
    """What is wrong with ``path`` for ``option`` (a file to write, or a folder to fill)."""
    if path is None:
        return None
    if folder:
        if path.exists() and not path.is_dir():
            return f"{option} {path}: a file is there, not a folder"
        target = path if path.is_dir() else path.parent
    else:
        if path.is_dir():
            return f"{option} {path}: is a folder; give a file name, e.g. {path / 'loss.png'}"
        target = path.parent
    problem = _writable_folder(target)
    return None if problem is None else f"{option} {path}: {problem}"


def _check_paths(args: argparse.Namespace) -> str | None:
    """The first problem with the paths given, checked before any training."""
    checks = (
        ("--plot", args.plot, False),
        ("--save-dir", args.save_dir, True),
        ("--tensorboard", args.tensorboard, True),
    )
    for option, path, folder in checks:
        problem = _path_problem(option, path, folder=folder)
        if problem is not None:
            return problem
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2: bad arguments, 130: Ctrl-C)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    problem = _check_paths(args)
    if problem is not None:
        print(f"trainbus demo: error: {problem}", file=sys.stderr)
        return 2
    from ._demo import run_demo  # after parsing: --help stays fast
    from ._distributed import is_rank_zero

    try:
        result = run_demo(
            epochs=args.epochs,
            lr=args.lr,
            bs=args.bs,
            seed=args.seed,
            patience=args.patience,
            save_dir=args.save_dir,
            plot=args.plot,
            tensorboard=args.tensorboard,
            mlflow=args.mlflow,
        )
    except (RuntimeError, ImportError) as error:
        print(f"trainbus: {error}", file=sys.stderr)
        return 1
    if is_rank_zero():  # under torchrun, one report (the values are the same on every rank)
        print(f"best epoch: {result.best_epoch} of {result.epochs_run} run")
        print(f"valid accuracy: {result.valid_accuracy:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
