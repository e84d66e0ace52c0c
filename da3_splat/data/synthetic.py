"""Synthetic DL3DV-style scenes: textured procedural rooms, smooth camera paths, exact depth.

Each scene is a closed room (floor, four walls, ceiling) with boxes and spheres, every surface carrying its own
procedural texture (checker, stripes, fractal noise, bricks, dots, gradients, marble; random colours), lit by
an ambient term and one or two point/directional lights with hard shadows (Lambertian, so appearance is
multi-view consistent). A camera follows a smooth orbit arc, forward dolly or figure-eight. Frames are ray cast
with numpy, a whole frame at a time, and written in the DL3DV / nerfstudio layout::

    scene_0000/
      transforms.json        OpenGL camera-to-world, PINHOLE intrinsics at downscale x the rendered size
      images_4/frame_00001.png
      depths_4/frame_00001.npy   planar z-depth, float32, metres
      eval_index.json        targets every 8th frame, farthest-point context views
      scene.json             generator config; render_scene(config, seed) with its "config" and "seed"
                             re-renders the scene (make_synthetic derives seed from base_seed and index)

Pixel convention: pixel (row i, column j) is the image point (j + 0.5, i + 0.5), as in COLMAP / nerfstudio, so
intrinsics scale exactly with the image size (``depth_to_world_points(..., offset=0.5)`` unprojects a depth map).

    da3-splat make-synthetic OUT --scenes 50 --workers 2
"""

from __future__ import annotations

import ctypes
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from da3_splat.data._synth_layout import TRAJECTORIES, TRAJECTORY_KINDS, look_at_w2c, sample_scene
from da3_splat.data._synth_raycast import SceneGeometry, screen_windows, shade, trace
from da3_splat.data._synth_textures import noise_table
from da3_splat.data.sampling import eval_views_for_cameras
from da3_splat.files import write_json

CONTEXT_SIZES = (2, 4, 8, 12)
TARGET_STRIDE = 8
# 2x2 rotated-grid offsets (pixels) for the extra samples taken at object silhouettes and room corners
_AA_OFFSETS = ((0.125, 0.375), (0.375, -0.125), (-0.125, -0.375), (-0.375, 0.125))
_SRGB_LUT = (np.linspace(0, 1, 4096) ** (1 / 2.2) * 255 + 0.5).astype(np.uint8)


@dataclass
class SyntheticConfig:
    frames: int = 60
    height: int = 270
    width: int = 480
    hfov_deg: tuple[float, float] = (55.0, 80.0)  # horizontal field of view range, degrees
    room_width: tuple[float, float] = (4.0, 8.0)  # metres, along x
    room_depth: tuple[float, float] = (4.0, 8.0)  # metres, along z
    room_height: tuple[float, float] = (2.5, 3.5)  # metres, along y (up)
    boxes: tuple[int, int] = (3, 6)  # inclusive range of the number of boxes
    spheres: tuple[int, int] = (2, 4)
    lights: tuple[int, int] = (1, 2)
    trajectories: tuple[str, ...] = TRAJECTORIES  # drawn uniformly per scene
    min_view_distance: float = 1.8  # metres from every camera to the wall it looks at (60% at the image sides)
    shadows: bool = True
    antialias: bool = True  # 4 extra samples per pixel where surfaces meet
    texture_filter: float = 1.5  # width (pixels) of the box filter textures are pre-filtered with; 0: none
    seed: int = 0

    def __post_init__(self):
        if self.texture_filter < 0:
            raise ValueError(f"texture_filter must be >= 0 pixels, got {self.texture_filter}")
        if self.frames < 1 or self.height < 8 or self.width < 8:
            raise ValueError(
                f"need frames >= 1 and images of at least 8x8, got {self.frames} of {self.height}x{self.width}"
            )
        for name in ("hfov_deg", "room_width", "room_depth", "room_height", "boxes", "spheres", "lights"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"{name} must be a range (low, high) with 0 <= low <= high, got {(lo, hi)}")
        if min(self.room_width[0], self.room_depth[0]) < 2.5 or self.room_height[0] < 2.2:
            raise ValueError("rooms must be at least 2.5 m wide/deep and 2.2 m high to fit a camera path")
        if not self.trajectories or set(self.trajectories) - set(TRAJECTORY_KINDS):
            raise ValueError(f"trajectories must be a non-empty subset of {TRAJECTORY_KINDS}, got {self.trajectories}")


@dataclass
class SyntheticScene:
    images: np.ndarray  # (F, H, W, 3) uint8
    depth: np.ndarray  # (F, H, W) float32 planar z-depth (metres)
    w2c: np.ndarray  # (F, 4, 4) OpenCV world-to-camera
    K: np.ndarray  # (F, 3, 3) at the rendered resolution, pixel centres at +0.5
    info: dict = field(default_factory=dict)  # seed, config, trajectory kind, layout summary


# --------------------------------------------------------------------------------------------------
# Rendering


def intrinsics(cfg: SyntheticConfig, hfov_deg: float) -> np.ndarray:
    f = cfg.width / 2 / np.tan(np.radians(hfov_deg) / 2)
    return np.array([[f, 0, cfg.width / 2], [0, f, cfg.height / 2], [0, 0, 1]])


def _world_dirs(K: np.ndarray, w2c: np.ndarray, cols: np.ndarray, rows: np.ndarray):
    """World ray directions (camera z = 1) through image points (cols, rows), broadcast together."""
    x = ((cols - K[0, 2]) / K[0, 0]).astype(np.float32)
    y = ((rows - K[1, 2]) / K[1, 1]).astype(np.float32)
    R = w2c[:3, :3].astype(np.float32)  # d_world = R^T d_cam
    return tuple(R[0, k] * x + R[1, k] * y + R[2, k] for k in range(3))


def _silhouettes(ids: np.ndarray) -> np.ndarray:
    edge = np.zeros(ids.shape, bool)
    dh, dv = ids[:, 1:] != ids[:, :-1], ids[1:] != ids[:-1]
    edge[:, 1:] |= dh
    edge[:, :-1] |= dh
    edge[1:] |= dv
    edge[:-1] |= dv
    return edge


def render_frame(
    g: SceneGeometry,
    table: np.ndarray,
    K: np.ndarray,
    w2c: np.ndarray,
    height: int,
    width: int,
    antialias: bool = True,
    texture_filter: float = 1.5,
) -> tuple[np.ndarray, np.ndarray]:
    """One view: (H, W, 3) uint8 sRGB image and (H, W) float32 planar depth."""
    origin = -w2c[:3, :3].T @ w2c[:3, 3]
    dx, dy, dz = _world_dirs(K, w2c, np.arange(width)[None] + 0.5, np.arange(height)[:, None] + 0.5)
    depth, ids = trace(g, origin, dx, dy, dz, screen_windows(g, K, w2c, height, width))
    rays = [a.reshape(-1) for a in (dx, dy, dz, depth, ids)]
    if antialias:  # 4 extra sub-pixel rays per pixel where surfaces meet, shaded in the same batch
        rows, cols = np.nonzero(_silhouettes(ids))
        off = np.array(_AA_OFFSETS, np.float32)
        sub = _world_dirs(K, w2c, (cols[None] + 0.5 + off[:, :1]).ravel(), (rows[None] + 0.5 + off[:, 1:]).ravel())
        rays = [np.concatenate([a, b]) for a, b in zip(rays, (*sub, *trace(g, origin, *sub)))]
    rgb = shade(g, table, origin, *rays, texture_filter / K[0, 0])
    n = height * width
    if antialias:
        rgb[:, rows * width + cols] = rgb[:, n:].reshape(3, len(off), -1).mean(1)
    rgb = rgb[:, :n]
    image = _SRGB_LUT[(np.clip(rgb, 0.0, 1.0) * 4095).astype(np.int32)]  # linear -> sRGB, (3, H*W)
    return np.ascontiguousarray(image.T).reshape(height, width, 3), depth


def render_scene(config: SyntheticConfig | None = None, seed: int | None = None) -> SyntheticScene:
    """Draw and render one scene; the same (config, seed) always gives the same arrays."""
    cfg = config or SyntheticConfig()
    seed = cfg.seed if seed is None else int(seed)
    rng = np.random.default_rng(seed)
    geom, traj, hfov = sample_scene(rng, cfg)
    table = noise_table(rng)
    K = intrinsics(cfg, np.degrees(hfov))
    w2c = np.stack([look_at_w2c(c, t) for c, t in zip(traj.centers, traj.targets)])
    images = np.empty((cfg.frames, cfg.height, cfg.width, 3), np.uint8)
    depth = np.empty((cfg.frames, cfg.height, cfg.width), np.float32)
    for i in range(cfg.frames):
        images[i], depth[i] = render_frame(
            geom, table, K, w2c[i], cfg.height, cfg.width, cfg.antialias, cfg.texture_filter
        )
    info = {
        "seed": seed,
        "trajectory": traj.kind,
        "room_size": (geom.room_hi - geom.room_lo).round(4).tolist(),
        "boxes": geom.n_boxes,
        "spheres": len(geom.sphere_radius),
        "lights": len(geom.lights),
        "textures": [m.kind for m in geom.materials],
        "config": asdict(cfg),
    }
    return SyntheticScene(images, depth, w2c, np.repeat(K[None], cfg.frames, 0), info)


# --------------------------------------------------------------------------------------------------
# Writing


def eval_index(w2c: np.ndarray, name: str) -> dict:
    """Targets every 8th frame; for each k in CONTEXT_SIZES that fits, k context frames among the rest, chosen
    by farthest-point sampling on camera centre and viewing direction (:mod:`da3_splat.data.sampling`)."""
    others = sum(1 for i in range(len(w2c)) if i % TARGET_STRIDE)
    views = eval_views_for_cameras(w2c, [k for k in CONTEXT_SIZES if k <= others], TARGET_STRIDE)
    return {"scene": name, **views}


def write_dl3dv_scene(scene: SyntheticScene, out_dir: str | Path, downscale: int = 4, name: str | None = None) -> Path:
    """Write ``scene`` in the DL3DV layout (see the module docstring); intrinsics are stated at full resolution
    (``downscale`` x the rendered size). ``name`` (default: the folder's) goes into eval_index.json."""
    import cv2

    out = Path(out_dir)
    suffix = f"_{downscale}" if downscale != 1 else ""
    (out / f"images{suffix}").mkdir(parents=True, exist_ok=True)
    (out / f"depths{suffix}").mkdir(parents=True, exist_ok=True)
    frames = []
    flip = np.diag([1.0, -1.0, -1.0, 1.0])  # OpenCV -> OpenGL camera axes
    for i, (image, depth, w2c, K) in enumerate(zip(scene.images, scene.depth, scene.w2c, scene.K)):
        stem = f"frame_{i + 1:05d}"
        if not cv2.imwrite(str(out / f"images{suffix}" / f"{stem}.png"), image[..., ::-1]):
            raise OSError(f"could not write {out / f'images{suffix}' / stem}.png")
        np.save(out / f"depths{suffix}" / f"{stem}.npy", depth.astype(np.float32))
        h, w = image.shape[:2]
        frames.append(
            {
                "file_path": f"images/{stem}.png",
                "transform_matrix": (np.linalg.inv(w2c) @ flip).tolist(),
                "fl_x": float(K[0, 0] * downscale),
                "fl_y": float(K[1, 1] * downscale),
                "cx": float(K[0, 2] * downscale),
                "cy": float(K[1, 2] * downscale),
                "w": int(w * downscale),
                "h": int(h * downscale),
                "depth_file_path": f"depths/{stem}.npy",
            }
        )
    write_json(out / "transforms.json", {"camera_model": "PINHOLE", "frames": frames}, indent=1)
    write_json(out / "eval_index.json", eval_index(scene.w2c, name or out.name), indent=1)
    write_json(
        out / "scene.json",
        {
            "generator": "da3_splat.data.synthetic",
            "downscale": downscale,
            "depth": "planar z-depth in metres",
            **scene.info,
        },
        indent=1,
    )
    return out


# --------------------------------------------------------------------------------------------------
# Many scenes


def scene_seed(seed: int, index: int) -> int:
    """Seed of scene ``index`` of a run with base ``seed``, independent of how the run is split up."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _init_worker() -> None:
    """Per generating process: one OpenCV thread (the pool is the parallelism), and glibc malloc settings
    that keep freed memory in the heap. Without them every frame-sized numpy temporary is handed back to
    the OS and page-faulted in again, which costs more than the arithmetic (a 2x slowdown here)."""
    import cv2

    cv2.setNumThreads(1)
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return
    libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
    libc.mallopt(-1, 128 << 20)  # M_TRIM_THRESHOLD
    libc.mallopt(-2, 16 << 20)  # M_TOP_PAD


def _make_one(out_dir: Path, index: int, config: SyntheticConfig, seed: int, overwrite: bool) -> Path:
    final = out_dir / f"scene_{index:04d}"
    tmp = out_dir / f".{final.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    scene = render_scene(config, scene_seed(seed, index))
    scene.info.update(base_seed=seed, index=index)
    write_dl3dv_scene(scene, tmp, name=final.name)
    # rename into place: a scene folder is either complete or absent
    if final.exists():
        if any(final.iterdir()) and not overwrite:
            raise FileExistsError(f"{final} appeared while rendering; not overwriting it")
        shutil.rmtree(final)
    tmp.rename(final)
    return final


def make_synthetic(
    out_dir: str | Path,
    scenes: int,
    config: SyntheticConfig | None = None,
    seed: int | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    progress: Callable[[Path], None] | None = None,
) -> list[Path]:
    """Render ``scenes`` scenes into ``out_dir/scene_0000 ...``; returns their folders in order.

    The output depends only on (config, seed), not on ``workers``. Existing non-empty scene folders are an
    error unless ``overwrite``, which replaces them.
    """
    cfg = config or SyntheticConfig()
    if seed is not None:
        cfg = replace(cfg, seed=int(seed))  # scene.json then records the run's seed in its config
    seed = cfg.seed
    out = Path(out_dir)
    names = [out / f"scene_{i:04d}" for i in range(scenes)]
    taken = [p for p in names if p.is_dir() and any(p.iterdir())]
    if taken and not overwrite:
        raise FileExistsError(
            f"{len(taken)} scene folder(s) already exist and are not empty, e.g. {taken[0]}; "
            "pass overwrite=True (--overwrite) to replace them or choose another output folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    workers = max(1, min(workers or os.cpu_count() or 1, scenes))
    jobs = [(out, i, cfg, seed, overwrite) for i in range(scenes)]
    if workers == 1:
        _init_worker()
        done = []
        for job in jobs:
            done.append(_make_one(*job))
            if progress:
                progress(done[-1])
        return done
    # spawn, not fork: the parent may hold torch / OpenMP threads that do not survive a fork
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker) as pool:
        futures = [pool.submit(_make_one, *job) for job in jobs]
        done = []
        try:
            for fut in futures:
                done.append(fut.result())
                if progress:
                    progress(done[-1])
        except BaseException:  # a failed scene or Ctrl-C: do not render the rest first
            for fut in futures:
                fut.cancel()
            raise
    return done
