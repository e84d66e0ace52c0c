"""The ``da3-splat`` command line: argument parsing (tyro), dispatch to one library function per subcommand,
and the error boundary.

A subcommand is a dataclass (its fields are the options, its docstrings the help) plus a ``run(config)``
function, registered in :data:`SUBCOMMANDS`. User-caused problems raise ``InputError`` / ``WeightsError`` and
come out as one ``error: ...`` line on stderr with exit status 1; anything else is reported the same way as
unexpected (set ``DA3_SPLAT_DEBUG=1`` for the traceback); Ctrl-C prints one line, marks the output
folder incomplete and exits 130.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence

from da3_splat import __version__
from da3_splat.commands.demo import DemoConfig
from da3_splat.commands.eval import EvalConfig
from da3_splat.commands.make_synthetic import MakeSyntheticCommand
from da3_splat.commands.predict import PredictConfig
from da3_splat.commands.splat import SplatConfig
from da3_splat.errors import DEBUG_ENV, USER_ERRORS, describe_error
from da3_splat.files import clear_incomplete, mark_incomplete
from da3_splat.train.config import TrainConfig
from da3_splat.viewer import ViewConfig

PROG = "da3-splat"
DESCRIPTION = (
    f"da3-splat {__version__}: photos to 3D Gaussian Splatting, with Depth Anything 3 as the geometry backbone. "
    f"Run `{PROG} COMMAND --help` for the options of each command."
)

# name -> (config dataclass, "module:function" that runs it; imported only when that command runs)
SUBCOMMANDS: dict[str, tuple[type, str]] = {
    "predict": (PredictConfig, "da3_splat.commands.predict:run_predict"),
    "splat": (SplatConfig, "da3_splat.commands.splat:run_splat"),
    "make-synthetic": (MakeSyntheticCommand, "da3_splat.commands.make_synthetic:run_make_synthetic"),
    "train": (TrainConfig, "da3_splat.commands.train:run_train"),
    "eval": (EvalConfig, "da3_splat.commands.eval:run_eval"),
    "view": (ViewConfig, "da3_splat.commands.view:run_view"),
    "demo": (DemoConfig, "da3_splat.commands.demo:run_demo"),
}


def parse(argv: Sequence[str] | None = None):
    import tyro

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train" and not {"-h", "--help"} & set(argv[1:2]):
        # presets: the named config becomes the default that command-line fields override
        from da3_splat.commands.train import parse as parse_train

        return parse_train(argv[1:])

    return tyro.extras.subcommand_cli_from_dict(
        {name: cls for name, (cls, _) in SUBCOMMANDS.items()}, prog=PROG, description=DESCRIPTION, args=argv
    )


def runner_for(config) -> Callable:
    for cls, target in SUBCOMMANDS.values():
        if isinstance(config, cls):
            module, func = target.split(":")
            return getattr(importlib.import_module(module), func)
    raise TypeError(f"no command runs {type(config).__name__}")


def run(config) -> int:
    """Run a parsed command inside the error boundary; returns the exit status."""
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    # A command's output folder is marked while it runs, so that an interrupted run is recognisable later;
    # a training run has its own record (checkpoints, --resume).
    out = None if isinstance(config, TrainConfig) else getattr(config, "output", None)
    try:
        runner_for(config)(config)
        clear_incomplete(out)
        return 0
    except KeyboardInterrupt:
        if debug:
            raise
        where = f"; {out} may be incomplete (rerun with --overwrite)" if mark_incomplete(out) else ""
        print(f"error: interrupted{where}", file=sys.stderr, flush=True)
        return 130
    except Exception as exc:
        if debug:
            raise
        print(f"error: {describe_error(exc)}", file=sys.stderr, flush=True)
        return 1


def main(argv: Sequence[str] | None = None) -> None:
    try:
        config = parse(argv)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
    except USER_ERRORS as exc:  # e.g. an unknown training preset, found while parsing
        print(f"error: {describe_error(exc)}", file=sys.stderr, flush=True)
        sys.exit(1)
    sys.exit(run(config))


if __name__ == "__main__":
    main()
