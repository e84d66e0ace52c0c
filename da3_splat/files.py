"""Output folders and files that are never half-written: every file goes to a temporary name beside its
destination and is moved into place (``os.replace``) only once complete. Imports nothing heavy but numpy/cv2
where an encoder needs them."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from da3_splat.errors import InputError


@contextlib.contextmanager
def atomic_path(path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block completes it replaces ``path`` (else it is removed).
    For writers that take a file name (safetensors, ffmpeg)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600 files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path, write: Callable) -> Path:
    """Call ``write(binary_file)`` on a temporary file next to ``path``, then move it into place."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)
    return Path(path)


def write_png(path, rgb: np.ndarray) -> Path:
    """HxW (grey) or HxWx3 RGB uint8 -> PNG."""
    import cv2

    img = rgb if rgb.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise OSError(f"PNG encoding failed for {path}")
    return atomic_write(path, lambda f: f.write(buf.tobytes()))


def write_npz(path, **arrays) -> Path:
    """Uncompressed .npz (depth compresses poorly; reading stays fast)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return atomic_write(path, lambda f: f.write(buf.getvalue()))


def _first_non_finite(data, where: str = "") -> str | None:
    if isinstance(data, float) and not math.isfinite(data):
        return f"{where or '<top>'} = {data}"
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, (list, tuple)) else ()
    for key, value in items:
        found = _first_non_finite(value, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None


def write_json(path, data, indent: int = 2) -> Path:
    """JSON, indented; a NaN or infinity anywhere is refused (strict JSON readers reject them)."""
    try:
        text = json.dumps(data, indent=indent, allow_nan=False) + "\n"
    except ValueError:
        raise ValueError(f"refusing to write a non-finite number to {path}: {_first_non_finite(data)}") from None
    return atomic_write(path, lambda f: f.write(text.encode()))


INCOMPLETE_MARKER = ".incomplete"  # in an output folder whose command was interrupted


def mark_incomplete(out) -> bool:
    """Mark the existing folder ``out`` as holding an interrupted run; -> whether it was marked."""
    if out is None or not Path(out).is_dir():
        return False
    try:
        (Path(out) / INCOMPLETE_MARKER).write_text("interrupted before it finished; rerun with --overwrite\n")
    except OSError:
        return False
    return True


def clear_incomplete(out) -> None:
    if out is not None:
        (Path(out) / INCOMPLETE_MARKER).unlink(missing_ok=True)


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse an output that is a file, a non-empty folder (unless ``overwrite``) or a path that cannot be
    created, before any work is done."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        if (out / INCOMPLETE_MARKER).exists():
            raise InputError(f"output folder {out} holds an interrupted run; pass --overwrite to replace its files")
        raise InputError(f"output folder {out} is not empty; pass --overwrite to replace its files")
    check_creatable(out)


def check_creatable(out: Path) -> None:
    """The folder ``out`` exists and is writable, or its nearest existing ancestor is a writable folder."""
    probe = Path(out).absolute()
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"cannot create output {out}: {probe} is not a folder")
    try:  # a real probe: permission bits do not tell (root, read-only mounts, /proc)
        os.rmdir(tempfile.mkdtemp(dir=probe, prefix=".da3-splat-probe-"))
    except OSError as e:
        raise InputError(f"cannot create output {out}: {e.strerror or e} ({probe})") from None
