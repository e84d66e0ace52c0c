"""User-facing error types and the one line each problem is reported as; importable without torch so the
commands can report bad input quickly."""

from __future__ import annotations

import errno

DEBUG_ENV = "DA3_SPLAT_DEBUG"  # set to 1 for tracebacks instead of one-line errors
# Environment problems a user can fix (permissions, a full or read-only disk): one line, no traceback.
_USER_OS_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EDQUOT}


class InputError(ValueError):
    """A user-caused input problem; the message is one clear line (the CLI prints it and exits 1)."""


class WeightsError(ValueError):
    """Weights could not be found, read or matched to the architecture; the message says what to do."""


# FileExistsError: we refused to overwrite something (the message says which flag allows it).
USER_ERRORS = (InputError, WeightsError, FileExistsError)


def one_line(text: str) -> str:
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def describe_error(exc: BaseException) -> str:
    """The one line printed for ``exc`` (after ``error: ``)."""
    if isinstance(exc, USER_ERRORS):
        return one_line(str(exc))
    if isinstance(exc, OSError) and exc.errno in _USER_OS_ERRNOS:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or one_line(str(exc))}{where}"
    if (
        isinstance(exc, MemoryError)
        or type(exc).__name__ == "OutOfMemoryError"
        or (isinstance(exc, RuntimeError) and "not enough memory" in str(exc))
    ):
        return "out of memory; try a smaller --process-res or fewer views"
    return f"unexpected {type(exc).__name__}: {one_line(str(exc))} (set {DEBUG_ENV}=1 for the traceback)"
