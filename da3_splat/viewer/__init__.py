"""`da3-splat view`: a viser viewer for splat PLYs, da3-splat output folders and nerfstudio runs, or for DA3
run live on a folder of images.

Layout: :mod:`.scene` loads what PATH points at (no viser, no browser), :mod:`.selection` holds the threshold /
reduce / save logic, :mod:`.app` draws a scene in viser and builds the GUI, :mod:`.live` runs DA3 for
``--images``. This module only defines the viewer's options (``da3-splat view``, :mod:`da3_splat.commands.view`),
so that ``da3-splat --help`` stays fast; viser is imported when the viewer starts (``pip install -e ".[viewer]"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from da3_splat.export import DEFAULT_CONF_PERCENTILE
from da3_splat.runtime import DEFAULT_MODEL

DEFAULT_PORT = 8080
LOOPBACK = "127.0.0.1"


@dataclass
class ViewConfig:
    """Look at Gaussians, points and cameras in the browser (viser), or run DA3 live on a folder of images.

    PATH is a 3DGS PLY, a `da3-splat predict` / `splat` output folder (transforms.json, images/, splat.ply or
    points.ply), or a nerfstudio run (outputs/.../config.yml with nerfstudio_models/*.ckpt, or any folder above
    one). With --images FOLDER instead, DA3 (--model) runs in the viewer and the scene appears as it is computed.
    The GUI has opacity / confidence thresholds, the Gaussian budget, point size, cameras, and "save as PLY".
    Ctrl-C stops the server."""

    path: Annotated[Path | None, tyro.conf.Positional, tyro.conf.arg(metavar="PATH")] = None
    """What to show (see above); leave out with --images."""
    images: Path | None = None
    """Run DA3 live on this image folder (or one image) instead of opening PATH."""
    model: str = DEFAULT_MODEL
    """With --images: weights (Hugging Face repo id, folder, .safetensors file, random:CONFIG)."""
    host: str = LOOPBACK
    """Address to listen on; 0.0.0.0 exposes the viewer (and its Save button) to the network."""
    port: int = DEFAULT_PORT
    """First port to try; the next free one is used when it is taken."""
    max_gaussians: int = 500_000
    """Gaussians sent to the browser at start (neighbours are merged to fit); the GUI changes it."""
    min_opacity: float = 0.0
    """Hide Gaussians below this opacity at start (GUI slider)."""
    conf_percentile: float = DEFAULT_CONF_PERCENTILE
    """Scenes built from depth (predict folders, --images): keep pixels at or above this confidence percentile."""
    process_res: int | None = None
    """With --images: longest side, in pixels, of the images the network sees
    (default: the model's own: 504 for the official models, the training resolution for models trained here)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """With --images: where to run the model."""
    save_dir: Path | None = None
    """Folder for "Save selection as PLY" (default: the scene's folder; with --images, the current folder)."""
    thumbnail_size: int = 160
    """Longest side, in pixels, of the input images shown on the camera frustums."""


def check_config(cfg: ViewConfig) -> None:
    """Raise InputError for options that cannot work (before anything heavy starts)."""
    from da3_splat.errors import InputError

    if (cfg.path is None) == (cfg.images is None):
        raise InputError("give either PATH (a PLY, an output folder or a nerfstudio run) or --images FOLDER")
    checks = [
        (0 <= cfg.port <= 65535, f"--port must be in [0, 65535], got {cfg.port}"),
        (cfg.max_gaussians >= 1, f"--max-gaussians must be at least 1, got {cfg.max_gaussians}"),
        (0.0 <= cfg.min_opacity <= 1.0, f"--min-opacity must be in [0, 1], got {cfg.min_opacity}"),
        (0 <= cfg.conf_percentile < 100, f"--conf-percentile must be in [0, 100), got {cfg.conf_percentile}"),
        (cfg.process_res is None or cfg.process_res >= 14, f"--process-res must be at least 14, got {cfg.process_res}"),
        (cfg.thumbnail_size >= 8, f"--thumbnail-size must be at least 8, got {cfg.thumbnail_size}"),
    ]
    for ok, message in checks:
        if not ok:
            raise InputError(message)
    if cfg.path is not None and not cfg.path.exists():
        raise InputError(f"not found: {cfg.path}")
    if cfg.save_dir is not None and cfg.save_dir.exists() and not cfg.save_dir.is_dir():
        raise InputError(f"--save-dir {cfg.save_dir} is not a folder")
