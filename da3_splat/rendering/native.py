"""The compiled twin of the forward-only compositor (`composite.c`), built with the system C compiler at first use.

The torch compositor (`fast_composite.py`) stays the reference and the fallback: where no C compiler is found, the
build fails, or ``DA3_SPLAT_NATIVE=0`` is set, `composite_visible` returns None and the caller takes the torch path
(one warning says why, once). The library is plain C (no Python or torch headers, so it builds in about a second)
and is cached per source, compiler flags and platform under ``$DA3_SPLAT_CACHE`` (default
``~/.cache/da3-splat``), written atomically so that concurrent processes never load a half-written file.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("composite.c")
# -march=native: vector rows in the CPU's widest registers (the cache key names the CPU's features, so a cache on a
# shared home never serves another CPU's build); -ffp-contract=off: no fused multiply-adds, so images do not depend
# on the CPU; -fno-trapping-math: floating-point exceptions are never read, so masked lanes may be computed.
FLAGS = ["-O3", "-std=gnu99", "-march=native", "-shared", "-fPIC", "-pthread", "-ffp-contract=off",
         "-fno-trapping-math", "-Wno-psabi"]  # fmt: skip
_TYPES = {torch.float32: "f32", torch.float64: "f64"}


def enabled() -> bool:
    return os.environ.get("DA3_SPLAT_NATIVE", "1") != "0"


def cache_dir() -> Path:
    return Path(os.environ.get("DA3_SPLAT_CACHE") or Path.home() / ".cache" / "da3-splat")


def build(out_dir: Path | None = None) -> Path:
    """Compile `composite.c` into `out_dir` (default: the cache, or the temporary folder where the cache cannot be
    written) unless already there -> the library's path. Raises RuntimeError with the compiler's message when it
    cannot be built, OSError when no folder can take it."""
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, " ".join(FLAGS).encode(), _cpu().encode()])).hexdigest()
    name = f"composite-{key[:16]}.so"
    if out_dir is not None:
        dirs = [out_dir]
    else:  # a cache we cannot write (a read-only home) falls back to the temporary folder
        dirs = [cache_dir(), Path(tempfile.gettempdir()) / f"da3-splat-{os.getuid() if hasattr(os, 'getuid') else 0}"]
    for folder in dirs:
        if (folder / name).is_file():
            return folder / name
    # A library built earlier needs no compiler: look for one only now.
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        raise RuntimeError("no C compiler found (cc, gcc or clang; or set CC)")
    for i, folder in enumerate(dirs):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
            break
        except OSError:
            if i == len(dirs) - 1:
                raise
    os.close(fd)
    lib = folder / name
    try:
        cmd = [compiler, *FLAGS, str(SOURCE), "-o", tmp, "-lm"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {(done.stderr or done.stdout).strip()[-500:]}")
        os.replace(tmp, lib)  # atomic: a concurrent process sees the old name absent or the whole file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return lib


def _cpu() -> str:
    """The machine and, where /proc/cpuinfo says, the CPU's model and features (what -march=native builds for)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    keep = [line for line in lines if line.startswith(("model name", "flags", "Features"))][:2]
    return "\n".join([platform.machine(), platform.processor(), *keep])


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded library, or None (with one warning) where it cannot be built or loaded."""
    try:
        lib = ctypes.CDLL(str(build()))
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        warnings.warn(f"the compiled renderer is unavailable, using the torch one: {e}", stacklevel=2)
        return None
    for name in _TYPES.values():
        fn = getattr(lib, f"da3_composite_{name}")
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_int64] * 3 + [ctypes.c_int] * 3 + [ctypes.c_void_p] * 9 + [ctypes.c_int]
    return lib


def composite_visible(
    ids: Tensor,
    order: Tensor,
    means2d: Tensor,
    conics: Tensor,
    opacities: Tensor,
    radii: Tensor,
    feats: Tensor,
    width: int,
    height: int,
) -> tuple[Tensor, Tensor] | None:
    """`fast_composite.composite_visible` in C: (C, H, W, D) and (C, H, W, 1), or None where the library is
    unavailable or the inputs are not float32/float64 CPU tensors."""
    dtype = feats.dtype
    if not enabled() or feats.device.type != "cpu" or dtype not in _TYPES or (lib := library()) is None:
        return None
    (C, N), (D, G) = radii.shape, feats.shape
    args = [
        ids.to(torch.int64).contiguous(),
        order.to(torch.int64).contiguous(),
        *(t.to(dtype).contiguous() for t in (means2d, conics, opacities.expand(C, N))),
        radii.to(torch.int32).contiguous(),
        feats.contiguous(),
    ]
    out = feats.new_empty(C, height, width, D)
    alpha = feats.new_empty(C, height, width, 1)
    fn = getattr(lib, f"da3_composite_{_TYPES[dtype]}")
    status = fn(
        C,
        N,
        G,
        D,
        width,
        height,
        *(t.data_ptr() for t in args),
        out.data_ptr(),
        alpha.data_ptr(),
        torch.get_num_threads(),
    )
    if status != 0:
        raise MemoryError("the compiled renderer ran out of memory")
    return out, alpha
