"""What the viewer shows, loaded from what ``da3-splat view PATH`` points at (no viser here).

PATH kinds (:func:`load_scene`):

- a PLY: a 3DGS PLY (Gaussians) or a coloured point cloud (``x y z red green blue``, e.g. predict's points.ply);
  a transforms.json next to it adds the cameras;
- a da3-splat output folder: ``splat`` (splat.ply) or ``predict`` (depth/*.npz -> head-free Gaussians rebuilt
  from depth, so the confidence threshold works; points.ply), with transforms.json + images/ as cameras;
- a nerfstudio run: a folder with config.yml (or that file, or a folder above runs: the newest is taken). The
  Gaussians come from the newest nerfstudio_models/step-*.ckpt (splatfacto's ``gauss_params``, read with
  ``torch.load(weights_only=True)``), the cameras from the dataset's transforms.json moved into the run's
  normalised frame (dataparser_transforms.json). nerfstudio itself is not imported: config.yml is read with a
  YAML loader that turns its python tags into plain data.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from da3_splat.errors import InputError
from da3_splat.gaussians import SPLATFACTO_KEYS, Gaussians

SPLAT_FILE = (
    "splat.ply"  # what `da3-splat splat` writes (commands.splat.SPLAT_FILE; a library does not import a command)
)
POINTS_FILE = "points.ply"
NS_CONFIG = "config.yml"
NS_MODELS = "nerfstudio_models"
NS_DATAPARSER_TRANSFORMS = "dataparser_transforms.json"
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


# --------------------------------------------------------------------------------------------------
# nerfstudio runs


def _yaml_loader():
    """A safe YAML loader that reads nerfstudio's config.yml without nerfstudio: every ``!!python/...`` node
    becomes plain data (mappings, lists, strings), and pathlib paths become ``Path``."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def construct(loader, suffix, node):
        if isinstance(node, yaml.MappingNode):
            data = loader.construct_mapping(node, deep=True)
            if suffix.endswith("Path") and isinstance(data.get("args"), list):
                return Path(*map(str, data["args"]))
            return data
        if isinstance(node, yaml.SequenceNode):
            items = loader.construct_sequence(node, deep=True)
            return Path(*map(str, items)) if suffix.endswith("Path") and items else items
        return loader.construct_scalar(node)

    Loader.add_multi_constructor("tag:yaml.org,2002:python/", construct)
    return Loader


def read_ns_config(file: Path) -> dict:
    import yaml

    try:
        data = yaml.load(file.read_text(encoding="utf-8"), Loader=_yaml_loader())  # noqa: S506 -- safe loader
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise InputError(f"{file}: not a readable nerfstudio config ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise InputError(f"{file}: not a nerfstudio config (expected a mapping)")
    return data


def find_ns_config(path: Path, max_depth: int = 4) -> Path | None:
    """config.yml for PATH: the file itself, PATH/config.yml, or the newest run config.yml below PATH."""
    if path.is_file():
        return path if path.suffix in (".yml", ".yaml") else None
    if (path / NS_CONFIG).is_file():
        return path / NS_CONFIG
    found = [p for d in range(1, max_depth + 1) for p in path.glob("/".join(["*"] * d + [NS_CONFIG]))]
    found = [p for p in found if (p.parent / NS_MODELS).is_dir()]
    return max(found, key=lambda p: (p.stat().st_mtime, str(p))) if found else None


def latest_checkpoint(models_dir: Path) -> Path | None:
    def step(p: Path) -> int:
        m = re.search(r"(\d+)", p.stem)
        return int(m.group(1)) if m else -1

    ckpts = sorted(models_dir.glob("*.ckpt"), key=lambda p: (step(p), p.name))
    return ckpts[-1] if ckpts else None


def gaussians_from_checkpoint(ckpt: Path) -> Gaussians:
    """splatfacto-style ``gauss_params`` from a nerfstudio checkpoint's pipeline state."""
    from da3_splat.sh import RGB2SH

    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- pickle and zip errors of many kinds
        raise InputError(f"{ckpt}: not a readable checkpoint ({str(e).splitlines()[0] if str(e) else e!r})") from None
    pipeline = state.get("pipeline", state) if isinstance(state, dict) else None
    params = {}
    for key, value in (pipeline or {}).items():
        head, _, name = key.rpartition(".")
        if head.endswith("gauss_params") and name in SPLATFACTO_KEYS:
            params[name] = value.float()
    missing = [k for k in SPLATFACTO_KEYS if k not in params]
    if missing:
        raise InputError(f"{ckpt}: no Gaussians in the pipeline state (missing gauss_params: {', '.join(missing)})")
    rest = params["features_rest"]
    dc = params["features_dc"]
    if rest.shape[-2] == 0:  # splatfacto with sh_degree 0 stores logit(rgb) as features_dc, not an SH coefficient
        dc, rest = RGB2SH(torch.sigmoid(dc)), None
    g = Gaussians.from_splatfacto_params(
        params["means"], params["scales"], params["quats"], dc, rest, params["opacities"]
    )
    keep = torch.isfinite(torch.cat([g.means, g.scales, g.quats, g.opacities[:, None]], 1)).all(1)
    return g[keep]


def _dataset_path(cfg: dict, run_dir: Path) -> Path | None:
    """The training data of a run. Relative paths in config.yml are relative to where ns-train ran, which is
    not recorded: try the current folder and the folder holding outputs/ (runs live in
    <there>/<output_dir>/<experiment>/<method>/<timestamp>)."""
    dm = (cfg.get("pipeline") or {}).get("datamanager") or {}
    roots = [Path.cwd()]
    out_parts = len(Path(cfg.get("output_dir") or "outputs").parts)
    if len(run_dir.parents) > 2 + out_parts:
        roots.append(run_dir.parents[2 + out_parts])
    for value in ((dm.get("dataparser") or {}).get("data"), dm.get("data"), cfg.get("data")):
        if not value:
            continue
        p = Path(value)
        for q in [p] if p.is_absolute() else [r / p for r in roots]:
            if q.exists():
                return q
    return None


def _cameras_in_run_frame(data: Path, run_dir: Path, longest: int) -> list[CameraView]:
    from da3_splat.data.transforms import transforms_file

    tf_file = data if data.suffix == ".json" else transforms_file(data)
    dp = run_dir / NS_DATAPARSER_TRANSFORMS
    if not tf_file.is_file() or not dp.is_file():
        return []
    cams = cameras_from_transforms(tf_file, longest, image_dirs=("images_2", "images_4", "images_8"))
    meta = json.loads(dp.read_text())
    T = np.eye(4)
    T[:3] = np.asarray(meta["transform"], dtype=np.float64).reshape(3, 4)
    s = float(meta.get("scale", 1.0))
    for c in cams:
        # nerfstudio: c2w' = T @ c2w, then translation * scale. T is a rigid motion, so the same applies to
        # OpenCV-axis c2w (the axis flip multiplies on the right).
        c2w = T @ c.c2w
        c2w[:3, 3] *= s
        c.c2w = c2w
    return cams


def load_nerfstudio_run(config_file: Path, longest: int = 160) -> ViewScene:
    cfg = read_ns_config(config_file)
    run_dir = config_file.parent
    models = str(cfg.get("relative_model_dir") or NS_MODELS)
    ckpt = latest_checkpoint(run_dir / models)
    if ckpt is None:
        raise InputError(f"{run_dir}: no checkpoint in {models}/ (train longer, or pass an exported PLY)")
    method = cfg.get("method_name") or "nerfstudio"
    scene = ViewScene(title=f"{method} run {run_dir} ({ckpt.name})", save_dir=run_dir)
    scene.gaussians = gaussians_from_checkpoint(ckpt)
    scene.up_hint = np.array([0.0, 0.0, 1.0])  # nerfstudio's dataparsers orient the scene z-up
    data = _dataset_path(cfg, run_dir)
    if data is not None:
        try:
            scene.cameras = _cameras_in_run_frame(data, run_dir, longest)
        except (InputError, ValueError, KeyError, OSError):
            scene.cameras = []  # the Gaussians alone are still worth showing
    return scene


# --------------------------------------------------------------------------------------------------


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
