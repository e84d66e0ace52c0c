"""One clear line for bad input inside nerfstudio's commands.

``ns-train``, ``ns-eval`` and friends are nerfstudio's programs: an exception raised in our code would end them
with a traceback. At the few places where user data or weights enter (dataparser, datamanager, model set-up),
:func:`one_line_errors` turns the errors that mean "bad input" into ``error: ...`` on stderr and exit status 1.
Anything else (a bug) still raises with its traceback.
"""

from __future__ import annotations

import contextlib
import sys

from da3_splat.errors import InputError, WeightsError


class DataError(InputError):
    """Bad or unusable training data (too few images, a transforms.json pointing outside its folder, ...)."""


def fail(message: str) -> None:
    """Print ``error: message`` (one line) and exit with status 1."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    raise SystemExit(1)


@contextlib.contextmanager
def one_line_errors(what: str = "the data"):
    """Report user-input errors raised inside the block as one line and exit 1; ``what`` names the source of
    file-system errors (e.g. "the training images")."""
    try:
        yield
    except (InputError, WeightsError) as e:
        fail(str(e))
    except FileNotFoundError as e:
        fail(f"file not found while reading {what}: {e.filename or e}")
    except OSError as e:  # PIL.UnidentifiedImageError, truncated files, permissions
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        fail(f"cannot read {what}: {reason}")
