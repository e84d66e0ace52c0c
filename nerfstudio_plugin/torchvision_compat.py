"""Lets a CUDA build of torchvision import beside a CPU-only torch.

nerfstudio imports torchvision at the top of ``nerfstudio.cameras.cameras``. The torch build this project uses on
CPU machines (2.13.0+cpu) has no matching CPU torchvision on the package index it can reach, only the CUDA build
(0.28.0), whose compiled ops cannot load without libtorch_cuda. torchvision copes with that (``_has_ops()`` is
False) except in ``torchvision/_meta_registrations.py``, which registers fake kernels for ``torchvision::nms`` and
``torchvision::qnms`` unconditionally and fails with "operator torchvision::nms does not exist".

The fix: just before that module runs, and only when the compiled ops did not load, declare the two operator
schemas (no kernels), so the registrations succeed. Nothing in nerfstudio or da3-splat calls those ops; calling
them would still fail, as it would without the ops. ``python -m nerfstudio_plugin.torchvision_compat --install``
(run by the Makefile) adds a one-line .pth file to site-packages that imports this module at start-up, but only
where ``import torchvision`` fails that way; importing it costs one finder on ``sys.meta_path`` (no torch import).
"""

from __future__ import annotations

import importlib.abc
import sys

_TARGET = "torchvision._meta_registrations"
_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
PTH_NAME = "da3_splat_torchvision_compat.pth"
_libraries: list = []  # torch.library.Library objects; a schema is dropped when its Library is collected


class _DeclareMissingOps(importlib.abc.MetaPathFinder):
    """Runs a side effect when torchvision's meta registrations are about to be imported; finds nothing."""

    def find_spec(self, fullname, path, target=None):
        if fullname == _TARGET and not _libraries:
            declare_missing_ops()
        return None  # the regular finders import the module


def declare_missing_ops() -> bool:
    """Declare the schemas when torchvision's compiled ops are missing; -> whether anything was declared."""
    import torch
    from torchvision import extension

    if extension._has_ops():
        return False
    lib = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS:
        name = schema.split("(", 1)[0]
        if not hasattr(torch.ops.torchvision, name):
            lib.define(schema)
    _libraries.append(lib)
    return True


def install_finder() -> None:
    if not any(isinstance(f, _DeclareMissingOps) for f in sys.meta_path):
        sys.meta_path.insert(0, _DeclareMissingOps())


def _torchvision_import_error() -> str | None:
    """The error ``import torchvision`` gives in a fresh interpreter without this fix, or None."""
    import subprocess

    code = "import torchvision"
    # -S would skip site-packages altogether; instead drop the .pth's effect by running without it.
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env_without_fix())
    return None if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["?"])[-1]


def _env_without_fix() -> dict:
    import os

    return {**os.environ, "DA3_SPLAT_NO_TORCHVISION_COMPAT": "1"}


def _install_pth() -> int:
    """Write the .pth file where it is needed (and only there); print what was done."""
    import sysconfig
    from pathlib import Path

    pth = Path(sysconfig.get_paths()["purelib"]) / PTH_NAME
    error = _torchvision_import_error()
    if error is None:
        pth.unlink(missing_ok=True)
        print("torchvision imports as it is; no compatibility hook needed")
        return 0
    if "torchvision::nms" not in error:
        print(f"error: torchvision does not import, and not for the reason this hook fixes: {error}", file=sys.stderr)
        return 1
    line = (
        "import os, importlib.util; os.environ.get('DA3_SPLAT_NO_TORCHVISION_COMPAT') or "
        "importlib.util.find_spec('nerfstudio_plugin') is None or "
        "__import__('nerfstudio_plugin.torchvision_compat').torchvision_compat.install_finder()\n"
    )
    pth.write_text(line)
    print(f"installed {pth}: torchvision's missing CPU ops are declared at import")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] != ["--install"]:
        print("usage: python -m nerfstudio_plugin.torchvision_compat --install", file=sys.stderr)
        sys.exit(2)
    sys.exit(_install_pth())
