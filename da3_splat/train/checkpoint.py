"""Crash-safe training checkpoints in safetensors + JSON (never pickle).

Layout of one checkpoint, ``<directory>/step_000123/``::

    model.safetensors       model tensors, keys as given
    optimizer.safetensors   every tensor of optimizer.state_dict(), keys ``state.{param_idx}.{name}``
                            (and ``param_groups.{i}.{key}`` for tensor-valued group settings)
    state.safetensors       tensors inside the scheduler state, run_state and RNG states (e.g. torch's RNG)
    state.json              step, the structure of the optimizer / scheduler / run / RNG state with tensors
                            replaced by references into the files above, and each file's size and SHA-256

Each file is written atomically into a temporary folder that is renamed to ``step_XXXXXX`` only once
complete, so a crash never leaves a half checkpoint under a real name. Then the ``latest`` marker (a text
file naming that folder) is replaced atomically and checkpoints beyond ``keep`` are removed (renamed away
first, so a crash mid-delete leaves no half folder either). One writer per directory is assumed.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from da3_splat.errors import InputError
from da3_splat.files import atomic_write

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
TENSORS_FILE = "state.safetensors"
STATE_FILE = "state.json"
LATEST_FILE = "latest"
TMP_SUFFIX = ".tmp"
_STEP_RE = re.compile(r"^step_(\d+)$")
_RESERVED = ("__tensor__", "__ndarray__", "__tuple__", "__items__")


class CheckpointError(InputError):
    """A checkpoint is missing, truncated or corrupt, or a state cannot be stored without pickle."""


@dataclass
class Checkpoint:
    """One loaded checkpoint. ``optimizer_state`` is ready for ``optimizer.load_state_dict``,
    ``scheduler_state`` for ``scheduler.load_state_dict``; ``rng`` goes to :func:`restore_rng`."""

    path: Path
    step: int
    model_state: dict[str, Tensor]
    optimizer_state: dict | None
    scheduler_state: dict | None
    run_state: dict
    rng: dict | None


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


# --------------------------------------------------------------------------------------------------
# JSON-safe encoding: tensors go to a side table, tuples and non-string dict keys are tagged.


def _encode(obj: Any, tensors: dict[str, Tensor], key: str) -> Any:
    if isinstance(obj, Tensor):
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        # safetensors/torch lack some unsigned types (numpy's RNG key is uint32): widen, remember the dtype.
        arr = obj.astype(np.int64) if obj.dtype.kind == "u" and obj.dtype != np.uint8 else obj
        tensors[key] = torch.from_numpy(np.ascontiguousarray(arr)).clone()
        return {"__ndarray__": key, "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            if any(k in _RESERVED for k in obj):
                raise CheckpointError(f"state key at {key!r} uses a reserved name ({', '.join(_RESERVED)})")
            return {k: _encode(v, tensors, f"{key}.{k}") for k, v in obj.items()}
        return {"__items__": [[_encode(k, tensors, key), _encode(v, tensors, f"{key}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{key}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{key}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise CheckpointError(
        f"cannot store a {type(obj).__name__} at {key!r} in a checkpoint (only tensors, arrays, numbers, "
        "strings, None, lists, tuples and dicts; nothing is pickled)"
    )


def _decode(obj: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return tensors[obj["__ndarray__"]].numpy().astype(obj["dtype"])
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__items__"]}
    return {k: _decode(v, tensors) for k, v in obj.items()}


def _tensor_bytes(tensors: dict[str, Tensor]) -> bytes:
    seen: set[int] = set()
    out = {}
    for k, t in tensors.items():
        t = t.detach().cpu()
        ptr = t.untyped_storage().data_ptr() if t.numel() else -1
        # safetensors refuses tensors that share memory (tied weights): give repeats their own copy.
        if ptr in seen or not t.is_contiguous():
            t = t.clone(memory_format=torch.contiguous_format)
        seen.add(ptr)
        out[k] = t
    return st_save(out, metadata={"format": "pt"})


# --------------------------------------------------------------------------------------------------
# RNG


def capture_rng() -> dict:
    """Python, numpy and torch (CPU, and CUDA when initialised) RNG states."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(ckpt: Checkpoint | dict) -> None:
    """Put back the RNG states saved with a checkpoint (no-op when it has none)."""
    rng = ckpt.rng if isinstance(ckpt, Checkpoint) else ckpt
    if not rng:
        return
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


# --------------------------------------------------------------------------------------------------
# Saving


def _step_dirs(directory: Path) -> list[tuple[int, Path]]:
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _STEP_RE.match(p.name)) and p.is_dir()]
    return sorted(found)


def _move_aside(path: Path) -> Path:
    """Rename ``path`` into a hidden temporary folder (returned), to be deleted afterwards: an interrupted
    delete then leaves only a temporary name, never a half folder under a real one."""
    trash = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.deleting.", suffix=TMP_SUFFIX))
    path.replace(trash / path.name)
    return trash


def _clean_stale_temps(directory: Path) -> None:
    # Left by a crashed save or prune; safe to drop with a single writer.
    for p in directory.glob(f".*{TMP_SUFFIX}"):
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def _write(folder: Path, name: str, data: bytes, manifest: dict) -> None:
    atomic_write(folder / name, lambda f: f.write(data))
    manifest[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def save_checkpoint(
    directory,
    step: int,
    model_state: dict[str, Tensor],
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    run_state: dict | None = None,
    keep: int | None = 3,
    save_rng: bool = True,
) -> Path:
    """Write ``<directory>/step_XXXXXX`` (see the module docstring), point ``latest`` at it and keep only the
    ``keep`` newest checkpoints (None keeps all). ``run_state`` holds JSON-able values and tensors/arrays;
    the global RNG states are saved too unless ``save_rng`` is False. Returns the checkpoint folder."""
    if keep is not None and keep < 1:
        raise ValueError(f"keep must be at least 1 (or None), got {keep}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _clean_stale_temps(directory)
    final = directory / step_dir_name(step)

    opt_tensors: dict[str, Tensor] = {}
    extra: dict[str, Tensor] = {}
    opt_sd = optimizer.state_dict() if optimizer is not None else None
    state = {
        "format": FORMAT_VERSION,
        "step": int(step),
        "optimizer": None if opt_sd is None else {k: _encode(v, opt_tensors, k) for k, v in opt_sd.items()},
        "scheduler": None if scheduler is None else _encode(scheduler.state_dict(), extra, "scheduler"),
        "run_state": _encode(dict(run_state or {}), extra, "run"),
        "rng": _encode(capture_rng(), extra, "rng") if save_rng else None,
        "files": {},
    }

    tmp = Path(tempfile.mkdtemp(dir=directory, prefix=f".{final.name}.", suffix=TMP_SUFFIX))
    replaced = None
    try:
        _write(tmp, MODEL_FILE, _tensor_bytes(model_state), state["files"])
        if opt_sd is not None:
            _write(tmp, OPTIMIZER_FILE, _tensor_bytes(opt_tensors), state["files"])
        _write(tmp, TENSORS_FILE, _tensor_bytes(extra), state["files"])
        text = json.dumps(state, indent=1) + "\n"
        atomic_write(tmp / STATE_FILE, lambda f: f.write(text.encode()))
        replaced = _move_aside(final) if final.exists() else None  # re-saving a step replaces it
        tmp.replace(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if replaced is not None and not final.exists():  # put the previous save of this step back
            (replaced / final.name).replace(final)
            shutil.rmtree(replaced, ignore_errors=True)
        raise
    if replaced is not None:
        shutil.rmtree(replaced)
    atomic_write(directory / LATEST_FILE, lambda f: f.write(f"{final.name}\n".encode()))
    if keep is not None:
        for _, old in _step_dirs(directory)[:-keep]:
            if old != final:
                shutil.rmtree(_move_aside(old))
    return final


def _owned(path: Path) -> bool:
    """Whether ``path`` (an entry of a checkpoint directory) was written by this module."""
    name = path.name
    return (
        (bool(_STEP_RE.match(name)) and path.is_dir())
        or name == LATEST_FILE
        or (name.startswith(".") and name.endswith(TMP_SUFFIX))
    )


def remove_checkpoints(directory) -> None:
    """Delete every checkpoint in ``directory``: the ``step_*`` folders, the ``latest`` marker and leftovers of
    interrupted saves; anything else in it stays, and the directory goes too when nothing else is left. The
    entries are first renamed into one hidden temporary folder (the whole directory when it holds nothing
    else), so an interrupted removal leaves no half checkpoint under a real name."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    entries = list(directory.iterdir())
    if all(_owned(p) for p in entries):
        shutil.rmtree(_move_aside(directory))
        return
    trash = Path(tempfile.mkdtemp(dir=directory, prefix=".removed.", suffix=TMP_SUFFIX))
    marker = directory / LATEST_FILE
    if marker.exists():  # first: without it no folder is taken for the latest one while the rest move
        marker.replace(trash / LATEST_FILE)
    for _, p in reversed(_step_dirs(directory)):  # newest first
        p.replace(trash / p.name)
    shutil.rmtree(trash)
    _clean_stale_temps(directory)


# --------------------------------------------------------------------------------------------------
# Loading


def latest_checkpoint(directory) -> Path | None:
    """The folder named by ``latest``, else the highest-numbered complete ``step_*`` folder, else None."""
    directory = Path(directory)
    marker = directory / LATEST_FILE
    if marker.is_file():
        name = marker.read_text().strip()
        if _STEP_RE.match(name) and (directory / name / STATE_FILE).is_file():
            return directory / name
    complete = [p for _, p in _step_dirs(directory) if (p / STATE_FILE).is_file()]
    return complete[-1] if complete else None


def _damaged(folder: Path, what: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {folder} is damaged: {what}; delete it or resume from an older one")


def _read_tensors(folder: Path, name: str, manifest: dict, verify: bool) -> dict[str, Tensor]:
    path = folder / name
    if name not in manifest:
        raise _damaged(folder, f"{STATE_FILE} does not list {name}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise _damaged(folder, f"cannot read {name} ({e.strerror or e})") from None
    expected = manifest[name]
    if len(data) != expected["bytes"]:
        raise _damaged(folder, f"{name} has {len(data)} bytes, expected {expected['bytes']} (truncated?)")
    if verify and hashlib.sha256(data).hexdigest() != expected["sha256"]:
        raise _damaged(folder, f"{name} does not match its SHA-256 (corrupt)")
    try:
        return st_load(data)
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for a bad file
        raise _damaged(folder, f"{name} is not valid safetensors ({e})") from None


def _resolve(path: Path) -> Path:
    if (path / STATE_FILE).is_file():
        return path
    if _STEP_RE.match(path.name) and path.is_dir():
        raise _damaged(path, f"{STATE_FILE} is missing")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint not found: {path}")
    found = latest_checkpoint(path)
    if found is None:
        raise CheckpointError(f"no checkpoint in {path} (expected step_* folders with {STATE_FILE})")
    return found


def load_checkpoint(directory_or_step_dir, verify: bool = True) -> Checkpoint:
    """Load a checkpoint folder, or the latest one in a run directory. Tensors come back on the CPU.

    ``verify`` checks every file's SHA-256 (sizes are always checked). Raises :class:`CheckpointError`
    (an ``InputError``) with a one-line reason for missing, truncated or corrupt checkpoints.
    """
    folder = _resolve(Path(directory_or_step_dir))
    try:
        state = json.loads((folder / STATE_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _damaged(folder, f"{STATE_FILE} is unreadable ({e})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION or "files" not in state:
        raise _damaged(folder, f"{STATE_FILE} is not a format-{FORMAT_VERSION} checkpoint description")
    files = state["files"]
    model = _read_tensors(folder, MODEL_FILE, files, verify)
    extra = _read_tensors(folder, TENSORS_FILE, files, verify)
    optimizer_state = None
    if state["optimizer"] is not None:
        opt_tensors = _read_tensors(folder, OPTIMIZER_FILE, files, verify)
        optimizer_state = {k: _decode(v, opt_tensors) for k, v in state["optimizer"].items()}
    try:
        return Checkpoint(
            path=folder,
            step=int(state["step"]),
            model_state=model,
            optimizer_state=optimizer_state,
            scheduler_state=_decode(state["scheduler"], extra),
            run_state=_decode(state["run_state"], extra),
            rng=_decode(state["rng"], extra),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise _damaged(folder, f"{STATE_FILE} does not match its tensor files ({type(e).__name__}: {e})") from None
