"""The ``da3-splat`` command line: argument parsing (tyro), dispatch to one library function per subcommand,
and the error boundary.

A subcommand is a dataclass (its fields are the options, its docstrings the help) plus a ``run(config)``
function, registered in :data:`SUBCOMMANDS`. User-caused problems raise ``InputError`` / ``WeightsError`` and
come out as one ``error: ...`` line on stderr with exit status 1; anything else is reported the same way as
unexpected (set ``DA3_SPLAT_DEBUG=1`` for the traceback); Ctrl-C exits 130.
"""

from __future__ import annotations

import errno
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from da3_splat import __version__
from da3_splat.data.synthetic import MakeSyntheticCommand
from da3_splat.predict import PredictConfig
from da3_splat.splat import SplatConfig
from da3_splat.eval_protocol import EvalConfig
from da3_splat.train.config import TrainConfig
from da3_splat.viewer import ViewConfig
from da3_splat.demo import DemoConfig

PROG = "da3-splat"
DESCRIPTION = (
    f"da3-splat {__version__}: photos to 3D Gaussian Splatting, with Depth Anything 3 as the geometry backbone. "
    f"Run `{PROG} COMMAND --help` for the options of each command."
)
DEBUG_ENV = "DA3_SPLAT_DEBUG"

# name -> (config dataclass, "module:function" that runs it; imported only when that command runs)
SUBCOMMANDS: dict[str, tuple[type, str]] = {
    "predict": (PredictConfig, "da3_splat.predict:run_predict"),
    "splat": (SplatConfig, "da3_splat.splat:run_splat"),
    "make-synthetic": (MakeSyntheticCommand, "da3_splat.data.synthetic:run_make_synthetic"),
    "train": (TrainConfig, "da3_splat.train.trainer:run_train"),
    "eval": (EvalConfig, "da3_splat.eval_protocol:run_eval"),
    "view": (ViewConfig, "da3_splat.viewer:run_view"),
    "demo": (DemoConfig, "da3_splat.demo:run_demo"),
}
# Environment problems a user can fix (permissions, a full or read-only disk): one line, no traceback.
_USER_OS_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EDQUOT}


def parse(argv: Sequence[str] | None = None):
    import tyro

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train" and not {"-h", "--help"} & set(argv[1:2]):
        # presets: the named config becomes the default that command-line fields override
        from da3_splat.train.config import parse_train_args

        return parse_train_args(argv[1:])

    return tyro.extras.subcommand_cli_from_dict(
        {name: cls for name, (cls, _) in SUBCOMMANDS.items()}, prog=PROG, description=DESCRIPTION, args=argv
    )


def runner_for(config) -> Callable:
    for cls, target in SUBCOMMANDS.values():
        if isinstance(config, cls):
            module, func = target.split(":")
            return getattr(importlib.import_module(module), func)
    raise TypeError(f"no command runs {type(config).__name__}")


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _user_error_types() -> tuple[type, ...]:
    from da3_splat.errors import InputError, WeightsError

    # FileExistsError: we refused to overwrite something (the message says which flag allows it).
    return InputError, WeightsError, FileExistsError


def describe_error(exc: BaseException) -> str:
    """The one line printed for ``exc`` (after ``error: ``)."""
    if isinstance(exc, _user_error_types()):
        return _one_line(str(exc))
    if isinstance(exc, OSError) and exc.errno in _USER_OS_ERRNOS:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or _one_line(str(exc))}{where}"
    if (
        isinstance(exc, MemoryError)
        or type(exc).__name__ == "OutOfMemoryError"
        or (isinstance(exc, RuntimeError) and "not enough memory" in str(exc))
    ):
        return "out of memory; try a smaller --process-res or fewer views"
    msg = _one_line(str(exc))
    return f"unexpected {type(exc).__name__}: {msg} (set {DEBUG_ENV}=1 for the traceback)"


def run(config) -> int:
    """Run a parsed command inside the error boundary; returns the exit status."""
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        runner_for(config)(config)
        return 0
    except KeyboardInterrupt:
        if debug:
            raise
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
        sys.exit(130)
    except _user_error_types() as exc:  # e.g. an unknown training preset, found while parsing
        print(f"error: {describe_error(exc)}", file=sys.stderr, flush=True)
        sys.exit(1)
    sys.exit(run(config))


if __name__ == "__main__":
    main()
