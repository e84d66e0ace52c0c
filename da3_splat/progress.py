"""Progress reporting for the commands: a bar or a spinner on a terminal, nothing when piped or logged."""

from __future__ import annotations

import contextlib


def progress_bar(console, enabled: bool = True, remaining: bool = False, transient: bool = True):
    """A rich Progress with description, bar, done/total and elapsed (and remaining) time."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    cols = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    if remaining:
        cols.append(TimeRemainingColumn())
    # Live displays only on a terminal: piped or logged output gets no spinner frames or blank lines.
    return Progress(*cols, console=console, transient=transient, disable=not (enabled and console.is_terminal))


def status(console, message: str):
    """A spinner with ``message`` while the block runs (terminal only)."""
    return console.status(message) if console.is_terminal else contextlib.nullcontext()
