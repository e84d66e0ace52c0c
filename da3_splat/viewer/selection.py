"""The viewer's selection: which Gaussians are shown (thresholds and a budget) and saving them as a PLY.

No viser here, so the logic is testable without a browser. The order is always the one of
``da3_splat.reduce.reduce_to_budget``: confidence percentile, then opacity, then merging neighbours down to the
budget, so "save selection" writes what `da3-splat splat` would have with the same settings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from da3_splat.errors import InputError
from da3_splat.gaussians import Gaussians
from da3_splat.viewer.scene import ViewScene

DEFAULT_SAVE_NAME = "selection.ply"
# write_ply stores logit(opacity): checkpoint sigmoids can round to exactly 0 or 1 in float32.
_OPACITY_EPS = 2.0**-20


@dataclass(frozen=True)
class SelectionParams:
    max_gaussians: int
    min_opacity: float = 0.0
    conf_percentile: float = 0.0  # used only for scenes built from depth (ViewScene.prediction)


class Selector:
    """Applies :class:`SelectionParams` to a scene, caching the two expensive steps: rebuilding Gaussians
    from depth (per confidence percentile) and the last result (per parameters)."""

    def __init__(self, scene: ViewScene):
        self.scene = scene
        self._base_key: float | None = None
        self._base: Gaussians | None = None
        self._last: tuple[SelectionParams, Gaussians] | None = None

    @property
    def available(self) -> bool:
        return self.scene.gaussians is not None or self.scene.prediction is not None

    def base(self, conf_percentile: float) -> Gaussians:
        """All Gaussians before the opacity threshold and the budget."""
        if self.scene.prediction is None:
            if self.scene.gaussians is None:
                raise InputError("this scene has no Gaussians")
            return self.scene.gaussians
        if self._base is None or self._base_key != conf_percentile:
            from da3_splat.build import gaussians_from_prediction

            # No budget here: merging comes after the opacity threshold, in select().
            self._base, _ = gaussians_from_prediction(self.scene.prediction, None, conf_percentile)
            self._base_key = conf_percentile
        return self._base

    def select(self, params: SelectionParams) -> Gaussians:
        from da3_splat.reduce import reduce_to_budget

        if params.max_gaussians < 1:
            raise InputError(f"the Gaussian budget must be at least 1, got {params.max_gaussians}")
        if self._last is not None and self._last[0] == params:
            return self._last[1]
        g = reduce_to_budget(
            self.base(params.conf_percentile), max_gaussians=params.max_gaussians, min_opacity=params.min_opacity
        )
        self._last = (params, g)
        return g


# --------------------------------------------------------------------------------------------------
# Display arrays


def splat_colors(g: Gaussians) -> np.ndarray:
    """(N, 3) float RGB in [0, 1]: the SH DC colour (viser draws no view-dependent colour)."""
    from da3_splat.sh import SH2RGB

    return SH2RGB(g.sh[:, 0, :].float()).clamp(0.0, 1.0).numpy()


def display_covariances(g: Gaussians, scale: float, min_sigma: float) -> np.ndarray:
    """(N, 3, 3) float64 covariances of the Gaussians scaled by ``scale``, each standard deviation at least
    ``min_sigma``. viser Cholesky-factors them and sends float16: float32 covariances of flat Gaussians
    (merged splats are often disks) are not positive definite, and sub-``min_sigma`` axes underflow."""
    g64 = g.to(dtype=torch.float64)
    R = g64.rotation_matrices()
    sigma = (g64.scales * scale).clamp(min=min_sigma)
    return ((R * sigma[:, None, :].square()) @ R.mT).numpy()


# --------------------------------------------------------------------------------------------------
# Saving


def safe_file_name(name: str) -> str:
    """A plain ``*.ply`` file name from what was typed in the GUI (no folders: the viewer may be exposed
    with --host, and its Save button must only ever write inside the save folder)."""
    name = Path(str(name).strip().replace("\\", "/")).name
    name = re.sub(r"[^\w.\-]+", "_", name).lstrip(".")
    if not name or name.lower() == "ply":
        name = DEFAULT_SAVE_NAME
    return name if name.lower().endswith(".ply") else f"{name}.ply"


def free_path(path: Path) -> Path:
    """``path`` when nothing is there, else the first free ``stem_1.ply``, ``stem_2.ply``, ..."""
    if not path.exists():
        return path
    stem = re.sub(r"_\d+$", "", path.stem)
    i = 1
    while (candidate := path.with_name(f"{stem}_{i}{path.suffix}")).exists():
        i += 1
    return candidate


def save_selection(g: Gaussians, folder: Path, name: str = DEFAULT_SAVE_NAME) -> Path:
    """Write ``g`` as a 3DGS PLY in ``folder`` under ``name``, or under a new name when that file exists
    (never overwrites). Returns the path written."""
    from da3_splat.ply import write_ply

    if g.num_gaussians == 0:
        raise InputError("nothing to save: the selection is empty (lower the thresholds)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    g = Gaussians(g.means, g.quats, g.scales, g.opacities.clamp(_OPACITY_EPS, 1.0 - _OPACITY_EPS), g.sh)
    path = folder / safe_file_name(name)
    for _ in range(100):  # another writer may take the free name between the check and the write
        path = free_path(path)
        try:
            return write_ply(path, g, overwrite=False)
        except FileExistsError:
            continue
    raise InputError(f"could not find a free file name next to {path}")
