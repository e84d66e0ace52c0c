"""Writing a DA3 prediction to disk: images, depth, confidence, cameras (transforms.json) and a point cloud.

Every file is written atomically (a temporary file in the same folder, then ``os.replace``), so an interrupted
run never leaves a half-written file under its final name.

Layout of an output folder (``write_prediction``)::

    images/<name>.png        the processed images the network saw
    depth/<name>.npz         depth, depth_conf (float32, processed resolution) + that view's camera
    depth/<name>.png         depth colourised (turbo on inverse depth)
    confidence/<name>.png    confidence, grey
    transforms.json          cameras, nerfstudio convention (OpenGL camera-to-world)
    points.ply               coloured world points, filtered by confidence
    prediction.json          summary
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from da3_splat.files import atomic_write, write_json, write_npz, write_png

OUTPUT_DIRS = ("images", "depth", "confidence")
POINTS_FILE = "points.ply"
SUMMARY_FILE = "prediction.json"
DEFAULT_CONF_PERCENTILE = 30.0
DEFAULT_MAX_POINTS = 2_000_000
POINTS_SEED = 0


def write_point_cloud_ply(path, points: np.ndarray, colors: np.ndarray) -> Path:
    """Binary little-endian PLY with float32 ``x y z`` and uchar ``red green blue`` per vertex."""
    from plyfile import PlyData, PlyElement

    points = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    colors = np.asarray(colors).reshape(-1, 3)
    if colors.shape[0] != points.shape[0]:
        raise ValueError(f"{points.shape[0]} points but {colors.shape[0]} colours")
    if colors.dtype != np.uint8:
        raise ValueError(f"colours must be uint8, got {colors.dtype}")
    dtype = [("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
    vertex = np.empty(points.shape[0], dtype=dtype)
    for i, axis in enumerate("xyz"):
        vertex[axis] = points[:, i]
    for i, ch in enumerate(("red", "green", "blue")):
        vertex[ch] = colors[:, i]
    ply = PlyData([PlyElement.describe(vertex, "vertex")], text=False, byte_order="<")
    return atomic_write(path, ply.write)


def robust_range(values: np.ndarray, lo: float = 2.0, hi: float = 98.0) -> tuple[float, float]:
    """Percentile range of the finite values (a degenerate range is widened so it can be divided by)."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return 0.0, 1.0
    a, b = (float(x) for x in np.percentile(v, [lo, hi]))
    return (a, b) if b > a else (a, a + 1e-6 * max(1.0, abs(a)))


def colorize_depth(depth: np.ndarray, vrange: tuple[float, float] | None = None) -> np.ndarray:
    """Depth (H, W) -> uint8 RGB (H, W, 3): turbo colour map on inverse depth (near is red, far is blue) over
    the robust 2-98 % range (or ``vrange`` of inverse depth). Invalid pixels (<= 0, not finite) are black."""
    depth = np.asarray(depth, dtype=np.float32)
    valid = np.isfinite(depth) & (depth > 0)
    inv = np.where(valid, 1.0 / np.where(valid, depth, 1.0), np.nan)
    lo, hi = vrange if vrange is not None else robust_range(inv)
    norm = np.clip((np.nan_to_num(inv, nan=lo) - lo) / (hi - lo), 0.0, 1.0)
    bgr = cv2.applyColorMap((norm * 255.0 + 0.5).astype(np.uint8), cv2.COLORMAP_TURBO)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    rgb[~valid] = 0
    return rgb


def grey_confidence(conf: np.ndarray, vrange: tuple[float, float]) -> np.ndarray:
    """Confidence (H, W) -> uint8 grey, ``vrange`` mapped to 0..255."""
    lo, hi = vrange
    norm = np.clip((np.nan_to_num(np.asarray(conf, np.float32), nan=lo) - lo) / (hi - lo), 0.0, 1.0)
    return (norm * 255.0 + 0.5).astype(np.uint8)


def confident_pixels(
    depth: np.ndarray,
    conf: np.ndarray,
    conf_percentile: float = DEFAULT_CONF_PERCENTILE,
    max_points: int = DEFAULT_MAX_POINTS,
    seed: int = POINTS_SEED,
) -> np.ndarray:
    """Flat indices (ascending) into ``depth`` (S, H, W) of the pixels with a finite positive depth whose
    confidence is at or above ``conf_percentile`` (over all views), randomly subsampled (fixed seed) to at most
    ``max_points``. The selection behind points.ply and the COLMAP export's points3D."""
    if not 0.0 <= conf_percentile < 100.0:
        raise ValueError(f"conf_percentile must be in [0, 100), got {conf_percentile}")
    depth, conf = np.asarray(depth, dtype=np.float32), np.asarray(conf, dtype=np.float32)
    keep = np.isfinite(depth) & (depth > 0) & np.isfinite(conf)
    if keep.any():
        keep &= conf >= np.percentile(conf[keep], conf_percentile)
    idx = np.flatnonzero(keep)
    if idx.size > max_points:
        idx = idx[np.sort(np.random.default_rng(seed).choice(idx.size, size=max_points, replace=False))]
    return idx


def confident_world_points(
    pred,
    conf_percentile: float = DEFAULT_CONF_PERCENTILE,
    max_points: int = DEFAULT_MAX_POINTS,
    seed: int = POINTS_SEED,
):
    """World points and colours of the pixels :func:`confident_pixels` selects. -> (points (N,3) f32, colors
    (N,3) u8)."""
    import torch

    from da3_splat.geometry import depth_to_world_points

    idx = confident_pixels(pred.depth, pred.depth_conf, conf_percentile, max_points, seed)
    pts = depth_to_world_points(
        torch.from_numpy(pred.depth.astype(np.float32)),
        torch.from_numpy(pred.intrinsics).float(),
        torch.from_numpy(pred.extrinsics).float(),
        offset=0.5,  # pixel centres at +0.5, as the intrinsics (cx = W / 2), build.py and COLMAP have them
    ).numpy()
    return pts.reshape(-1, 3)[idx], pred.processed_images.reshape(-1, 3)[idx]


def _remove_stale(out_dir: Path, old_names: list[str], names: list[str]) -> None:
    """After --overwrite: delete the per-view files of a previous run's views that this run did not write."""
    for name in set(old_names) - set(names):
        if not name or "/" in name or "\\" in name or name.startswith("."):  # only plain names from our own runs
            continue
        for rel in (f"images/{name}.png", f"depth/{name}.npz", f"depth/{name}.png", f"confidence/{name}.png"):
            p = out_dir / rel
            if p.is_file():
                p.unlink()


def write_prediction(
    pred,
    out_dir,
    names: list[str],
    conf_percentile: float = DEFAULT_CONF_PERCENTILE,
    max_points: int = DEFAULT_MAX_POINTS,
    summary: dict | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Write ``pred`` (a :class:`~da3_splat.model.inference.Prediction`) under ``out_dir`` (layout above).

    ``names`` are the S per-view file stems; ``summary`` is merged into prediction.json; ``progress(step)`` is
    called after each file group (S + 3 calls; S + 1 without cameras). Returns what prediction.json holds.
    Models that predict no cameras (mono, metric) get no transforms.json and no points.ply.
    """
    from da3_splat.data.transforms import write_transforms

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    S = pred.num_views
    if len(names) != S or len(set(names)) != S:
        raise ValueError(f"need {S} distinct names, got {names!r}")
    old = _read_summary(out_dir / SUMMARY_FILE)
    tick = progress or (lambda step: None)
    conf_range = robust_range(pred.depth_conf)
    has_cameras = pred.extrinsics is not None and pred.intrinsics is not None
    for i, name in enumerate(names):
        write_png(out_dir / "images" / f"{name}.png", pred.processed_images[i])
        arrays = {"depth": pred.depth[i].astype(np.float32), "depth_conf": pred.depth_conf[i].astype(np.float32)}
        if has_cameras:
            arrays["extrinsics"] = pred.extrinsics[i].astype(np.float32)
            arrays["intrinsics"] = pred.intrinsics[i].astype(np.float32)
        write_npz(out_dir / "depth" / f"{name}.npz", **arrays)
        write_png(out_dir / "depth" / f"{name}.png", colorize_depth(pred.depth[i]))
        write_png(out_dir / "confidence" / f"{name}.png", grey_confidence(pred.depth_conf[i], conf_range))
        tick(f"view {name}")

    n_points = 0
    if has_cameras:
        H, W = pred.depth.shape[1:]
        write_transforms(
            out_dir / "transforms.json",
            [f"images/{n}.png" for n in names],
            pred.extrinsics,
            pred.intrinsics,
            [(H, W)] * S,
            ply_file_path=POINTS_FILE,
        )
        tick("transforms.json")
        points, colors = confident_world_points(pred, conf_percentile, max_points)
        write_point_cloud_ply(out_dir / POINTS_FILE, points, colors)
        n_points = int(points.shape[0])
        tick(POINTS_FILE)
    elif old is not None:  # a previous run's cameras would not match these views
        for stale in ("transforms.json", POINTS_FILE):
            (out_dir / stale).unlink(missing_ok=True)

    if old is not None:
        _remove_stale(out_dir, [str(n) for n in old.get("views", [])], names)
    info = dict(summary or {})
    timings = dict(info.pop("timings_s", {}))
    timings["write"] = round(time.perf_counter() - t0, 3)
    info.update(
        num_views=S,
        processed_size=[int(pred.depth.shape[1]), int(pred.depth.shape[2])],
        is_metric=bool(pred.is_metric),
        has_cameras=has_cameras,
        num_points=n_points,
        conf_percentile=float(conf_percentile),
        timings_s=timings,
        views=list(names),
    )
    write_json(out_dir / SUMMARY_FILE, info)
    tick(SUMMARY_FILE)
    return info


def _read_summary(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None
