"""A DA3 prediction as a COLMAP sparse model, for tools that start from COLMAP (the original 3DGS code, gsplat's
``examples/simple_trainer.py``, 2DGS, nerfstudio's ``colmap`` dataparser). Written with pycolmap (the optional
extra ``da3-splat[colmap]``), imported only when a model is written.

Layout under the output folder, beside the ``images/`` the cameras describe::

    sparse/0/{cameras,images,points3D}.bin      the model, binary (what those tools read)
    sparse/0_text/{cameras,images,points3D}.txt the same model as text, for reading and diffing

(pycolmap also writes its ``rigs`` and ``frames`` files, one trivial rig and frame per image; older readers ignore
them). The text copy has a folder of its own: nerfstudio reads ``cameras.txt`` before ``cameras.bin`` when both are
in one folder, and the text format cannot hold an image name with a space (COLMAP's own reader, too, splits lines
on whitespace), which the binary one can: with such a name there is no text copy.

Each view is one PINHOLE camera (its own K) and one image with the predicted world-to-camera pose (COLMAP stores
it as we do: OpenCV axes). Each 3D point is a confident depth pixel of one view (the selection of points.ply),
observed once: its track is that pixel, which its image lists as a 2D point at the pixel's centre.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from da3_splat.errors import InputError
from da3_splat.export import DEFAULT_CONF_PERCENTILE, DEFAULT_MAX_POINTS, POINTS_SEED, SUMMARY_FILE, confident_pixels

MODEL_DIR = "sparse/0"
TEXT_DIR = "sparse/0_text"
INSTALL_HINT = 'pip install "da3-splat[colmap]"'
# COLMAP's pixel convention: the centre of the top-left pixel is the image point (0.5, 0.5). da3-splat's is the
# same (``depth_to_world_points(..., offset=0.5)``, see da3_splat.build.PIXEL_OFFSET): DA3 puts the principal
# point at (W/2, H/2), the image centre in that convention. So K goes into the camera as it is, and the pixel in
# row y, column x is unprojected, and listed as a 2D point, at (x + 0.5, y + 0.5).
PIXEL_OFFSET = 0.5


def require_pycolmap():
    """pycolmap, or an InputError that says how to install it (checked before any heavy work)."""
    try:
        return importlib.import_module("pycolmap")
    except ImportError as e:
        raise InputError(f"--colmap needs pycolmap, which is not installed ({e}); {INSTALL_HINT}") from None


def write_colmap_model(
    out_dir,
    image_names: Sequence[str],
    images: np.ndarray,
    depth: np.ndarray,
    conf: np.ndarray,
    w2c: np.ndarray,
    K: np.ndarray,
    conf_percentile: float = DEFAULT_CONF_PERCENTILE,
    max_points: int = DEFAULT_MAX_POINTS,
    seed: int = POINTS_SEED,
    text: bool = True,
) -> dict:
    """Write the COLMAP model of S views under ``out_dir`` (layout above); -> a summary (paths, counts).

    image_names: the S file names relative to ``out_dir/images`` (COLMAP's image names); images (S, H, W, 3)
    uint8, the images those files hold; depth, conf (S, H, W) planar z-depth and its confidence; w2c (S, 3|4, 4)
    world-to-camera, OpenCV axes; K (S, 3, 3) in pixels of those H x W images. 3D points: the pixels that
    :func:`da3_splat.export.confident_pixels` selects (``conf_percentile``, ``max_points``, ``seed``).
    ``text=False`` skips the text copy, as does an image name with whitespace (the text format splits on it).
    Both copies are written to temporary folders and moved into place together at the end, so an interrupted
    export never leaves half a model; a previous text copy that is not replaced is removed.
    """
    pycolmap = require_pycolmap()
    images, depth, conf, w2c, K = _checked(image_names, images, depth, conf, w2c, K)
    S, H, W = depth.shape
    idx = confident_pixels(depth, conf, conf_percentile, max_points, seed)
    view, pixel = np.divmod(idx, H * W)
    y, x = np.divmod(pixel, W)
    # idx ascends, so the points come grouped by view: view i's are bounds[i]:bounds[i + 1], and a point's
    # 2D-point index in its image is its rank there.
    bounds = np.searchsorted(view, np.arange(S + 1))
    point2d_idx = np.arange(idx.size) - bounds[view]
    xyz = _world_points(depth, K, w2c, pixel, bounds)
    colors = images.reshape(-1, 3)[idx]
    keypoints = np.stack([x + PIXEL_OFFSET, y + PIXEL_OFFSET], axis=-1).astype(np.float64)

    rec = pycolmap.Reconstruction()
    for i in range(S):
        fx, fy, cx, cy = (float(v) for v in (K[i, 0, 0], K[i, 1, 1], K[i, 0, 2], K[i, 1, 2]))
        camera = pycolmap.Camera(model="PINHOLE", width=W, height=H, params=[fx, fy, cx, cy], camera_id=i + 1)
        rec.add_camera_with_trivial_rig(camera)  # camera i + 1 is the only sensor of rig i + 1
        keys = keypoints[bounds[i] : bounds[i + 1]]
        image = pycolmap.Image(name=image_names[i], keypoints=keys, camera_id=i + 1, image_id=i + 1)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(w2c[i, :3, :4]))
    # One call per point (pycolmap has no bulk insert): about 3 us each.
    for k, (image_id, p2d) in enumerate(zip((view + 1).tolist(), point2d_idx.tolist())):
        track = pycolmap.Track()
        track.add_element(image_id, p2d)
        rec.add_point3D(xyz[k], track, colors[k])  # also marks the 2D point as observing it
    rec.update_point_3d_errors()  # reprojection errors (~0) instead of "unknown", for readers that filter on them

    out_dir = Path(out_dir)
    text = text and not any(c.isspace() for name in image_names for c in name)
    targets = [(out_dir / MODEL_DIR, rec.write_binary)] + ([(out_dir / TEXT_DIR, rec.write_text)] if text else [])
    with _atomic_dirs([dest for dest, _ in targets]) as tmps:
        for tmp, (_, write) in zip(tmps, targets):
            write(str(tmp))
    if not text:  # a previous run's copy would describe other cameras
        shutil.rmtree(out_dir / TEXT_DIR, ignore_errors=True)
    return {
        "path": MODEL_DIR,
        "text_path": TEXT_DIR if text else None,
        "num_cameras": S,
        "num_images": S,
        "num_points": int(idx.size),
        "image_size": [H, W],
        "camera_model": "PINHOLE",
        "conf_percentile": float(conf_percentile),
    }


def write_prediction_model(
    pred,
    out_dir,
    names: Sequence[str],
    conf_percentile: float = DEFAULT_CONF_PERCENTILE,
    max_points: int = DEFAULT_MAX_POINTS,
) -> dict:
    """The COLMAP model of a prediction whose images :func:`da3_splat.export.write_prediction` wrote to
    ``out_dir/images/<name>.png``; checks that those files have the size the cameras describe."""
    from PIL import Image

    if pred.extrinsics is None or pred.intrinsics is None:
        raise InputError("a COLMAP model needs cameras, and this model predicts none")
    out_dir = Path(out_dir)
    H, W = pred.depth.shape[1:]
    files = [f"{n}.png" for n in names]
    for f in files:
        with Image.open(out_dir / "images" / f) as im:  # reads the header only
            if im.size != (W, H):
                raise ValueError(f"images/{f} is {im.size[0]}x{im.size[1]}, but its camera describes {W}x{H}")
    return write_colmap_model(
        out_dir,
        files,
        pred.processed_images,
        pred.depth,
        pred.depth_conf,
        pred.extrinsics,
        pred.intrinsics,
        conf_percentile=conf_percentile,
        max_points=max_points,
    )


def recorded_model(out_dir) -> bool:
    """Whether ``out_dir/prediction.json`` records a COLMAP model written by an earlier run."""
    try:
        data = json.loads((Path(out_dir) / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and bool(data.get("colmap"))


def remove_model(out_dir) -> None:
    """Delete the model folders (after --overwrite without --colmap: their cameras no longer match images/)."""
    for rel in (MODEL_DIR, TEXT_DIR):
        shutil.rmtree(Path(out_dir) / rel, ignore_errors=True)
    with contextlib.suppress(OSError):
        (Path(out_dir) / "sparse").rmdir()  # only when nothing else is in it


# --------------------------------------------------------------------------------------------------
# Internals


def _checked(names, images, depth, conf, w2c, K):
    images, depth, conf = np.asarray(images), np.asarray(depth), np.asarray(conf)
    w2c, K = np.asarray(w2c, dtype=np.float64), np.asarray(K, dtype=np.float64)
    if depth.ndim != 3:
        raise ValueError(f"depth must be (S, H, W), got {depth.shape}")
    S, H, W = depth.shape
    expected = {
        "images": (images.shape, (S, H, W, 3)),
        "conf": (conf.shape, (S, H, W)),
        "K": (K.shape, (S, 3, 3)),
        "w2c": (w2c.shape[:1] + w2c.shape[2:], (S, 4)),
    }
    for what, (got, want) in expected.items():
        if tuple(got) != want:
            raise ValueError(f"{what} must be {want} for depth {depth.shape}, got {tuple(got)}")
    if w2c.shape[1] not in (3, 4):
        raise ValueError(f"w2c must be (S, 3|4, 4), got {w2c.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {images.dtype}")
    if len(names) != S or len(set(names)) != S or not all(names):
        raise ValueError(f"need {S} distinct, non-empty image names, got {list(names)!r}")
    if np.abs(K[:, 0, 1]).max() > 1e-6 * np.abs(K[:, 0, 0]).max():
        raise ValueError("intrinsics with skew cannot be a PINHOLE camera")
    return images, depth, conf, w2c, K


def _world_points(depth, K, w2c, pixel, bounds) -> np.ndarray:
    """World points (float64) of the selected pixels, view i's being ``pixel[bounds[i]:bounds[i + 1]]``; one
    view at a time, to bound memory."""
    import torch

    from da3_splat.geometry import depth_to_world_points

    xyz = np.empty((pixel.size, 3))
    for i in range(depth.shape[0]):
        a, b = bounds[i], bounds[i + 1]
        if a == b:
            continue
        pts = depth_to_world_points(
            torch.from_numpy(depth[i].astype(np.float64)),
            torch.from_numpy(K[i]),
            torch.from_numpy(w2c[i]),
            offset=PIXEL_OFFSET,
        )
        xyz[a:b] = pts.reshape(-1, 3).numpy()[pixel[a:b]]
    return xyz


@contextlib.contextmanager
def _atomic_dirs(dests: list[Path]) -> Iterator[list[Path]]:
    """Yield one empty temporary folder beside each of ``dests``; once the block completes, each replaces its
    destination (a previous one is moved aside first, then deleted). On an error they are removed instead."""
    tmps = []
    try:
        for dest in dests:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmps.append(Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")))
        yield tmps
        for tmp, dest in zip(tmps, dests):
            os.chmod(tmp, 0o755)  # mkdtemp makes it private
            old = None
            if dest.exists() or dest.is_symlink():
                old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".old"))
                os.replace(dest, old / dest.name)
            os.replace(tmp, dest)
            if old is not None:
                shutil.rmtree(old)
    finally:
        for tmp in tmps:
            shutil.rmtree(tmp, ignore_errors=True)
