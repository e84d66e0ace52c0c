"""What the viewer shows, loaded from what ``da3-splat view PATH`` points at (no viser here).

PATH kinds (:func:`da3_splat.viewer.loading.load_scene`):

- a PLY: a 3DGS PLY (Gaussians) or a coloured point cloud (``x y z red green blue``, e.g. predict's points.ply);
  a transforms.json next to it adds the cameras;
- a da3-splat output folder: ``splat`` (splat.ply) or ``predict`` (depth/*.npz -> head-free Gaussians rebuilt
  from depth, so the confidence threshold works; points.ply), with transforms.json + images/ as cameras;
- a nerfstudio run (:mod:`da3_splat.viewer.nerfstudio_run`); :mod:`da3_splat.viewer.loading` picks the kind.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from da3_splat.errors import InputError
from da3_splat.gaussians import Gaussians

SPLAT_FILE = (
    "splat.ply"  # what `da3-splat splat` writes (commands.splat.SPLAT_FILE; a library does not import a command)
)
POINTS_FILE = "points.ply"
# nerfstudio's exporter writes this header comment; its frame is z-up after auto-orientation.
_Z_UP_COMMENT = "Vertical Axis: z"


@dataclass
class CameraView:
    """One input camera: pose and intrinsics in the scene's frame, and a small copy of its image."""

    name: str
    c2w: np.ndarray  # (4, 4) camera-to-world, OpenCV axes (x right, y down, z forward)
    K: np.ndarray  # (3, 3) in pixels of an image of `size`
    size: tuple[int, int]  # (H, W)
    image: np.ndarray | None = None  # thumbnail, uint8 RGB

    @property
    def fov_y(self) -> float:
        return 2.0 * math.atan(self.size[0] / (2.0 * float(self.K[1, 1])))

    @property
    def aspect(self) -> float:
        # Width over height of the image plane in focal units, so fx != fy still gives the right frustum.
        return (self.size[1] / float(self.K[0, 0])) / (self.size[0] / float(self.K[1, 1]))


@dataclass
class ViewScene:
    """Everything one scene contributes. ``gaussians`` is the full set (unreduced), or None when the Gaussians
    are rebuilt from ``prediction`` (depth) by the selection; ``points`` is a point cloud from the source files
    (None: the viewer shows the Gaussian centres instead)."""

    title: str
    gaussians: Gaussians | None = None
    prediction: object | None = None  # da3_splat.model.inference.Prediction (or the same fields)
    points: np.ndarray | None = None  # (N, 3) float32
    point_colors: np.ndarray | None = None  # (N, 3) uint8
    cameras: list[CameraView] = field(default_factory=list)
    up_hint: np.ndarray | None = None  # world up when the source says so (cameras give their own)
    save_dir: Path = field(default_factory=Path.cwd)

    @property
    def has_confidence(self) -> bool:
        return self.prediction is not None

    def up_direction(self) -> np.ndarray:
        """World up: the cameras' mean up (-y) axis when they agree, else the source's hint, else -y (the
        OpenCV world of DA3 and COLMAP, where the first camera's y points down)."""
        if self.cameras:
            up = -np.mean([c.c2w[:3, 1] for c in self.cameras], axis=0)
            if np.linalg.norm(up) > 0.3:  # cameras rolled every which way have no common up
                return up / np.linalg.norm(up)
        if self.up_hint is not None:
            return np.asarray(self.up_hint, dtype=np.float64)
        return np.array([0.0, -1.0, 0.0])

    def content_points(self) -> np.ndarray:
        """Positions that describe where the scene is (for framing and display scale)."""
        if self.gaussians is not None and self.gaussians.num_gaussians:
            return self.gaussians.means.numpy()
        if self.points is not None and len(self.points):
            return self.points
        if self.prediction is not None:
            from da3_splat.export import confident_world_points

            return confident_world_points(self.prediction, 30.0, 200_000)[0]
        return np.zeros((0, 3), np.float32)


# --------------------------------------------------------------------------------------------------
# Small readers


def thumbnail(image: np.ndarray, longest: int) -> np.ndarray:
    import cv2

    h, w = image.shape[:2]
    s = longest / max(h, w)
    if s >= 1.0:
        return np.ascontiguousarray(image)
    return cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


def _try_image(path: Path, longest: int) -> np.ndarray | None:
    from da3_splat.model.preprocess import load_image

    try:
        return thumbnail(load_image(path), longest)
    except InputError:
        return None  # a camera without its picture is still worth showing


def cameras_from_transforms(file: Path, longest: int, image_dirs: tuple[str, ...] = ()) -> list[CameraView]:
    """Cameras of a nerfstudio transforms.json, with thumbnails of the images it names (when readable).
    ``image_dirs``: other folders to look in (nerfstudio's images_2/4/8 when the data was downscaled)."""
    from da3_splat.data.transforms import read_transforms
    from da3_splat.geometry import rigid_inverse

    paths, w2c, K, sizes = read_transforms(file)
    c2w = rigid_inverse(torch.from_numpy(w2c)).numpy()
    root = file.parent
    cams = []
    for i, rel in enumerate(paths):
        candidates = [root / rel] + [root / d / Path(rel).name for d in image_dirs]
        image = next((im for p in candidates if p.is_file() and (im := _try_image(p, longest)) is not None), None)
        cams.append(CameraView(Path(rel).stem, c2w[i], K[i], (int(sizes[i][0]), int(sizes[i][1])), image))
    return cams


def read_points_ply(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A coloured point cloud (x y z, optional red green blue) -> (points float32, colours uint8)."""
    from plyfile import PlyData

    try:
        v = PlyData.read(str(path))["vertex"].data
        pts = np.stack([np.asarray(v[a], np.float32) for a in "xyz"], axis=1)
    except Exception as e:  # noqa: BLE001 -- plyfile raises many types for damaged or foreign files
        raise InputError(
            f"{path}: not a readable point cloud PLY ({str(e).splitlines()[0] if str(e) else e!r})"
        ) from None
    names = set(v.dtype.names or ())
    if {"red", "green", "blue"} <= names:
        cols = np.stack([np.asarray(v[c]) for c in ("red", "green", "blue")], axis=1)
        cols = cols if cols.dtype == np.uint8 else np.clip(cols * (255 if cols.max() <= 1 else 1), 0, 255)
    else:
        cols = np.full_like(pts, 200)
    return pts, cols.astype(np.uint8)


def _ply_comments(path: Path, limit: int = 1 << 16) -> list[str]:
    """The ``comment`` lines of a PLY header (read up to ``end_header`` only: the data may be large)."""
    try:
        with open(path, "rb") as f:
            head = f.read(limit)
    except OSError:
        return []  # a hint only; read errors surface from the real reader
    lines = head.split(b"end_header", 1)[0].decode("ascii", "replace").splitlines()
    return [line[len("comment ") :] for line in lines if line.startswith("comment ")]


# --------------------------------------------------------------------------------------------------
# PATH kinds


def load_ply(path: Path, longest: int = 160) -> ViewScene:
    """A 3DGS PLY (Gaussians) or a point-cloud PLY; cameras from a transforms.json in the same folder."""
    from da3_splat.ply import read_ply

    scene = ViewScene(title=str(path), save_dir=path.parent)
    try:
        scene.gaussians = read_ply(path)
    except InputError as e:
        if "not a 3DGS PLY" not in str(e):
            raise
        scene.points, scene.point_colors = read_points_ply(path)
    if any(_Z_UP_COMMENT in c for c in _ply_comments(path)):
        scene.up_hint = np.array([0.0, 0.0, 1.0])
    if (path.parent / "transforms.json").is_file():
        scene.cameras = cameras_from_transforms(path.parent / "transforms.json", longest)
    return scene


def _prediction_from_depth(folder: Path, names: list[str], cams: list[CameraView]):
    """A Prediction rebuilt from predict's depth/<name>.npz and images/<name>.png; None when any is missing."""
    from da3_splat.model.inference import Prediction
    from da3_splat.model.preprocess import load_image

    depth, conf, images, w2c, K = [], [], [], [], []
    for name, _cam in zip(names, cams):
        npz, png = folder / "depth" / f"{name}.npz", folder / "images" / f"{name}.png"
        if not (npz.is_file() and png.is_file()):
            return None
        with np.load(npz) as z:
            if "extrinsics" not in z or "intrinsics" not in z:
                return None
            depth.append(z["depth"])
            conf.append(z["depth_conf"])
            w2c.append(z["extrinsics"][:3])
            K.append(z["intrinsics"])
        images.append(load_image(png))
    if len({d.shape for d in depth}) != 1 or any(im.shape[:2] != depth[0].shape for im in images):
        return None
    return Prediction(np.stack(depth), np.stack(conf), np.stack(images), np.stack(w2c), np.stack(K))


def load_output_folder(folder: Path, longest: int = 160) -> ViewScene:
    """A `da3-splat splat` (splat.ply) or `predict` (depth/*.npz, points.ply) output folder."""
    scene = ViewScene(title=str(folder), save_dir=folder)
    names: list[str] = []
    if (folder / "transforms.json").is_file():
        scene.cameras = cameras_from_transforms(folder / "transforms.json", longest)
        names = [c.name for c in scene.cameras]
    if (folder / SPLAT_FILE).is_file():
        from da3_splat.ply import read_ply

        scene.gaussians = read_ply(folder / SPLAT_FILE)
    elif names:
        scene.prediction = _prediction_from_depth(folder, names, scene.cameras)
    if (folder / POINTS_FILE).is_file():
        scene.points, scene.point_colors = read_points_ply(folder / POINTS_FILE)
    if scene.gaussians is None and scene.prediction is None and scene.points is None:
        raise InputError(f"{folder}: no {SPLAT_FILE}, depth/*.npz or {POINTS_FILE} to show")
    return scene
