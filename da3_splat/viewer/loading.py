"""``da3-splat view PATH``: which kind of scene PATH is, and its loader (see :mod:`da3_splat.viewer.scene`)."""

from __future__ import annotations

from pathlib import Path

from da3_splat.errors import InputError
from da3_splat.viewer.nerfstudio_run import NS_MODELS, find_ns_config, load_nerfstudio_run
from da3_splat.viewer.scene import POINTS_FILE, SPLAT_FILE, ViewScene, load_output_folder, load_ply


def load_scene(path: Path, thumbnail_size: int = 160) -> ViewScene:
    """The scene for ``da3-splat view PATH`` (see the module docstring for the kinds of PATH)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"not found: {path}")
    if path.is_file():
        if path.suffix.lower() == ".ply":
            return load_ply(path, thumbnail_size)
        if path.suffix == ".ckpt":
            path = path.parent.parent  # outputs/.../nerfstudio_models/step-N.ckpt -> the run folder
        elif path.suffix not in (".yml", ".yaml"):
            raise InputError(f"{path}: expected a .ply, a nerfstudio config.yml or a folder")
    if path.is_dir() and (
        (path / "transforms.json").is_file() or (path / SPLAT_FILE).is_file() or (path / POINTS_FILE).is_file()
    ):
        return load_output_folder(path, thumbnail_size)
    config = find_ns_config(path)
    if config is None:
        raise InputError(
            f"{path}: not a splat PLY, a da3-splat output folder (transforms.json, splat.ply or points.ply) "
            f"or a nerfstudio run (config.yml + {NS_MODELS}/)"
        )
    return load_nerfstudio_run(config, thumbnail_size)
