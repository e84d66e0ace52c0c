"""What the viewer needs around viser: its import, the Gaussian-splat call of every viser version, the display
frame, and a worker that keeps only the latest request.

Works with viser 0.2.7 (nerfstudio 1.1.5's pin: Gaussians only through ``scene._add_gaussian_splats``) and
later versions (``scene.add_gaussian_splats``); every call passes its options by keyword, which both accept.

Display frame: the browser gets the scene moved to its centre and scaled to a radius of DISPLAY_RADIUS.
DA3 scenes come in arbitrary units, and viser sends covariances in float16 and clips at fixed near planes, so
tiny or huge scenes would otherwise lose their Gaussians. Only what is drawn is transformed: thresholds,
budgets and saved PLYs use the scene's own coordinates.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from da3_splat.errors import InputError
from da3_splat.viewer.scene import ViewScene

DISPLAY_RADIUS = 5.0


def import_viser():
    try:
        import viser
    except ImportError:
        raise InputError('the viewer needs viser: pip install -e ".[viewer]" (viser==0.2.7)') from None
    return viser


def add_gaussian_splats(scene_api, name: str, **kwargs):
    """viser >= 0.2.9 has ``add_gaussian_splats``; 0.2.4-0.2.8 only the experimental ``_add_gaussian_splats``."""
    add = getattr(scene_api, "add_gaussian_splats", None) or scene_api._add_gaussian_splats
    return add(name, **kwargs)


@dataclass(frozen=True)
class DisplayFrame:
    """Scene coordinates -> browser coordinates: x -> (x - center) * scale."""

    center: np.ndarray
    scale: float

    @classmethod
    def fit(cls, scene: ViewScene) -> DisplayFrame:
        pts = np.asarray(scene.content_points(), dtype=np.float64).reshape(-1, 3)
        cams = np.array([c.c2w[:3, 3] for c in scene.cameras]).reshape(-1, 3)
        pts, cams = pts[np.isfinite(pts).all(1)], cams[np.isfinite(cams).all(1)]
        both = np.concatenate([pts, cams])
        if len(both) == 0:
            return cls(np.zeros(3), 1.0)
        center = np.median(pts if len(pts) else cams, axis=0)
        # 90th percentile: a few far floaters (DA3's sky, flying pixels) should not shrink the scene.
        radius = float(np.percentile(np.linalg.norm(both - center, axis=1), 90))
        return cls(center, DISPLAY_RADIUS / radius if radius > 1e-12 and np.isfinite(radius) else 1.0)

    def points(self, x) -> np.ndarray:
        return np.ascontiguousarray((np.asarray(x, np.float64) - self.center) * self.scale, dtype=np.float32)


class LatestOnly:
    """Runs ``fn(arg)`` on a background thread; requests made while it runs collapse into the newest one, so
    dragging a slider never queues up a backlog of expensive recomputations."""

    def __init__(self, fn: Callable, on_error: Callable[[BaseException], None]):
        self._fn, self._on_error = fn, on_error
        self._lock = threading.Lock()
        self._pending: tuple | None = None
        self._running = False
        self.idle = threading.Event()
        self.idle.set()

    def submit(self, arg) -> None:
        with self._lock:
            self._pending = (arg,)
            if not self._running:
                self._running = True
                self.idle.clear()
                threading.Thread(target=self._loop, daemon=True, name="da3-view-worker").start()

    def _loop(self) -> None:
        while True:
            with self._lock:
                if self._pending is None:
                    self._running = False
                    self.idle.set()
                    return
                (arg,), self._pending = self._pending, None
            try:
                self._fn(arg)
            except Exception as e:  # noqa: BLE001 -- reported in the GUI; the viewer keeps running
                self._on_error(e)


def wxyz(R: np.ndarray) -> np.ndarray:
    """A rotation matrix as viser's wxyz quaternion."""
    from da3_splat.geometry import matrix_to_quat_wxyz

    return matrix_to_quat_wxyz(torch.as_tensor(R, dtype=torch.float64)).numpy()
