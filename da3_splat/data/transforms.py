"""nerfstudio ``transforms.json``: cameras in, cameras out.

The file stores camera-to-world matrices in OpenGL/Blender axes (x right, y up, z back) and pinhole intrinsics
(``fl_x fl_y cx cy``) in pixels of an image of size ``w`` x ``h``, either at the top level (shared by every frame)
or per frame. Inside da3-splat cameras are OpenCV world-to-camera matrices and 3x3 intrinsics; this module
converts between the two. It is the core that dataset readers (DL3DV, ...) build on.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from da3_splat.errors import InputError
from da3_splat.files import atomic_write
from da3_splat.geometry import opencv_w2c_to_opengl_c2w, opengl_c2w_to_opencv_w2c

TRANSFORMS_FILE = "transforms.json"
INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h")
DISTORTION_KEYS = ("k1", "k2", "p1", "p2")
PINHOLE_MODELS = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE")


# --------------------------------------------------------------------------------------------------
# Writing


def write_transforms(path, image_paths_rel, w2c, K, sizes, ply_file_path: str | None = None) -> Path:
    """Write a nerfstudio ``transforms.json`` (atomically).

    image_paths_rel: S paths relative to the file's folder; w2c (S, 3|4, 4) OpenCV world-to-camera;
    K (S, 3, 3) in pixels of each image; sizes (S, 2) as [H, W]. Intrinsics are written per frame, and also at
    the top level when every frame shares them. ``ply_file_path`` (relative) lets nerfstudio initialise
    splatfacto from those points.
    """
    w2c = np.asarray(w2c, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    sizes = np.asarray(sizes).reshape(-1, 2)
    paths = [PurePosixPath(Path(p).as_posix()).as_posix() for p in image_paths_rel]
    S = len(paths)
    if w2c.shape[0] != S or K.shape != (S, 3, 3) or sizes.shape[0] != S or w2c.shape[1:] not in ((3, 4), (4, 4)):
        raise ValueError(f"write_transforms: got {S} paths, w2c {w2c.shape}, K {K.shape}, sizes {sizes.shape}")
    c2w_gl = opencv_w2c_to_opengl_c2w(torch.from_numpy(w2c)).numpy()

    frames, intrinsics = [], []
    for i in range(S):
        intr = {
            "fl_x": float(K[i, 0, 0]),
            "fl_y": float(K[i, 1, 1]),
            "cx": float(K[i, 0, 2]),
            "cy": float(K[i, 1, 2]),
            "w": int(sizes[i][1]),
            "h": int(sizes[i][0]),
        }
        intrinsics.append(intr)
        frames.append({"file_path": paths[i], "transform_matrix": c2w_gl[i].tolist(), **intr})

    meta: dict = {"camera_model": "OPENCV"}
    if S and all(intr == intrinsics[0] for intr in intrinsics):
        meta.update(intrinsics[0])
    meta.update({k: 0.0 for k in DISTORTION_KEYS})
    if ply_file_path is not None:
        meta["ply_file_path"] = PurePosixPath(Path(ply_file_path).as_posix()).as_posix()
    meta["frames"] = frames

    path = Path(path)
    text = json.dumps(meta, indent=2) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))
    return path


# --------------------------------------------------------------------------------------------------
# Reading


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _safe_relative(file_path, where: str) -> str:
    if not isinstance(file_path, str) or not file_path.strip():
        raise InputError(f"{where}: 'file_path' must be a non-empty string")
    p = file_path.replace("\\", "/")
    norm = os.path.normpath(p).replace("\\", "/")
    if p.startswith("/") or PurePosixPath(p).is_absolute() or (len(p) > 1 and p[1] == ":"):
        raise InputError(f"{where}: file_path {file_path!r} is absolute; it must be relative to the file's folder")
    if norm == ".." or norm.startswith("../"):
        raise InputError(f"{where}: file_path {file_path!r} points outside the folder of the transforms file")
    return norm


# Bounds on what a camera can plausibly be. Far beyond any photographed scene, and they keep every later step
# finite: the model, the renderer and the exported files work in float32 (about 7 significant digits), where a
# camera 1e6 units from the origin already has a position resolution of about 0.06 units, and values like 1e200
# overflow to inf (then NaN) the moment they are squared, inverted or cast down.
MAX_TRANSLATION = 1e6  # |each camera-centre coordinate|, in the file's units (metres for real captures: 1000 km)
MAX_IMAGE_SIDE = 1_000_000  # pixels; no camera image is a million pixels on a side
# Focal length in pixels, relative to the longer image side. Deliberately loose (1e-4 is a field of view of
# about 180 degrees, 1e6 of about 6e-5 degrees): it refuses only what float32 arithmetic cannot carry, since
# cameras predicted by a poorly trained model, written back by `da3-splat predict`, must still read.
FOCAL_RANGE = (1e-4, 1e6)
# Principal point: within 10 image widths/heights of the image (off-centre crops can put it outside the image).
MAX_PRINCIPAL_OFFSET = 10.0
ROTATION_TOL = 1e-3  # |R^T R - I| entries, and the bottom row's distance from [0, 0, 0, 1]


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _matrix(value, where: str) -> np.ndarray:
    rows = value if isinstance(value, list) and all(isinstance(r, list) for r in value) else None
    if rows is None or not all(_is_number(x) for r in rows for x in r):
        raise InputError(f"{where}: transform_matrix is not a numeric matrix (a list of rows of numbers)")
    try:
        m = np.asarray(rows, dtype=np.float64)
    except (TypeError, ValueError):  # ragged rows
        raise InputError(f"{where}: transform_matrix is not a numeric matrix (rows of different lengths)") from None
    if m.shape == (3, 4):
        m = np.vstack([m, [0.0, 0.0, 0.0, 1.0]])
    if m.shape != (4, 4):
        raise InputError(f"{where}: transform_matrix must be a 4x4 (or 3x4) matrix, got shape {m.shape}")
    bad = np.argwhere(~np.isfinite(m))
    if len(bad):
        r, c = (int(i) for i in bad[0])
        raise InputError(f"{where}: transform_matrix has a non-finite value ({m[r, c]} at row {r}, col {c})")
    R = m[:3, :3]
    # Entries of a rotation are within [-1, 1]; checking that first also keeps R^T R from overflowing.
    if (
        np.abs(R).max() > 1 + ROTATION_TOL
        or not np.allclose(R.T @ R, np.eye(3), atol=ROTATION_TOL)
        or (np.linalg.det(R) < 0)
    ):
        raise InputError(
            f"{where}: transform_matrix is not a rigid camera-to-world transform (its rotation part, rows 0-2 x "
            f"cols 0-2, is not orthonormal with determinant +1 within {ROTATION_TOL:g})"
        )
    if not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0], atol=ROTATION_TOL):
        raise InputError(f"{where}: transform_matrix bottom row must be [0, 0, 0, 1], got {m[3].tolist()}")
    r = int(np.argmax(np.abs(m[:3, 3])))
    if abs(m[r, 3]) > MAX_TRANSLATION:
        raise InputError(
            f"{where}: transform_matrix[{r}][3] = {m[r, 3]:g} is out of range (camera positions must be within "
            f"{MAX_TRANSLATION:g} of the origin; rescale the scene)"
        )
    return m


def _intrinsics(frame: dict, meta: dict, where: str) -> tuple[np.ndarray, tuple[int, int]]:
    # nerfstudio's rule: a top-level value applies to every frame; otherwise each frame carries its own.
    vals = {}
    for key in INTRINSIC_KEYS:
        src = meta if key in meta else frame
        if key not in src:
            raise InputError(
                f"{where}: no '{key}' (nerfstudio transforms need fl_x, fl_y, cx, cy, w, h at the top level "
                "or per frame)"
            )
        vals[key] = _number(src[key], f"{where}: '{key}'" + (" (top level)" if src is meta else ""))

    def refuse(key: str, rule: str):
        level = " (top level)" if key in meta else ""
        raise InputError(f"{where}: '{key}'{level} = {vals[key]:g} is out of range: invalid intrinsics ({rule})")

    for key in ("w", "h"):
        if not 1 <= vals[key] <= MAX_IMAGE_SIDE or vals[key] != int(vals[key]):
            refuse(key, f"image sizes must be whole numbers of pixels from 1 to {MAX_IMAGE_SIDE}")
    w, h = vals["w"], vals["h"]
    lo, hi = FOCAL_RANGE[0] * max(w, h), FOCAL_RANGE[1] * max(w, h)
    for key in ("fl_x", "fl_y"):
        if not lo <= vals[key] <= hi:
            refuse(key, f"focal lengths of a {w:g}x{h:g} pinhole camera must be from {lo:g} to {hi:g} pixels")
    for key, size in (("cx", w), ("cy", h)):
        if abs(vals[key] - size / 2) > MAX_PRINCIPAL_OFFSET * size:
            rule = f"the principal point must be within {MAX_PRINCIPAL_OFFSET:g} image sizes of the {w:g}x{h:g} image"
            refuse(key, rule)
    K = np.array([[vals["fl_x"], 0.0, vals["cx"]], [0.0, vals["fl_y"], vals["cy"]], [0.0, 0.0, 1.0]])
    return K, (int(h), int(w))


def transforms_file(path) -> Path:
    """``path`` itself, or ``path/transforms.json`` when ``path`` is a folder."""
    path = Path(path)
    return path / TRANSFORMS_FILE if path.is_dir() else path


def read_transforms(path):
    """Read a nerfstudio ``transforms.json`` (or a folder holding one).

    Returns ``(file_paths, w2c, K, sizes)``: S normalised relative paths (as written; join them with the file's
    folder), w2c (S, 4, 4) OpenCV world-to-camera, K (S, 3, 3) in pixels of each frame's ``w`` x ``h``, sizes
    (S, 2) int as [H, W]. Lens distortion is not applied (da3-splat treats images as pinhole). Raises
    :class:`InputError` with a one-line message for anything that is not a usable transforms file.
    """
    file = transforms_file(path)
    if not file.is_file():
        raise InputError(f"transforms file not found: {file}")
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {file}: {e}") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{file} is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list):
        raise InputError(f"{file} is not a nerfstudio transforms file: it has no 'frames' list")
    if not meta["frames"]:
        raise InputError(f"{file} has no frames")
    model = meta.get("camera_model", "OPENCV")
    if model not in PINHOLE_MODELS:
        raise InputError(f"{file}: camera_model {model!r} is not supported (use one of {', '.join(PINHOLE_MODELS)})")

    paths, c2ws, Ks, sizes = [], [], [], []
    for i, frame in enumerate(meta["frames"]):
        where = f"{file} frame {i}"
        if not isinstance(frame, dict):
            raise InputError(f"{where} is not an object")
        if "file_path" not in frame:
            raise InputError(f"{where} has no 'file_path'")
        paths.append(_safe_relative(frame["file_path"], where))
        if "transform_matrix" not in frame:
            raise InputError(f"{where} ({frame['file_path']}) has no 'transform_matrix'")
        where = f"{where} ({frame['file_path']})"
        c2ws.append(_matrix(frame["transform_matrix"], where))
        K, size = _intrinsics(frame, meta, where)
        Ks.append(K)
        sizes.append(size)

    w2c = opengl_c2w_to_opencv_w2c(torch.from_numpy(np.stack(c2ws))).numpy()
    return paths, w2c, np.stack(Ks), np.asarray(sizes, dtype=np.int64)


# --------------------------------------------------------------------------------------------------
# Matching frames to images


def match_frames(file_paths: list[str], names: list[str], image_paths: list[Path] | None, source) -> list[int]:
    """Index into ``file_paths`` (a transforms file's frames) for each input. Images match by file name, else by
    stem (images/a.png in the file matches an input a.jpg); inputs without ``image_paths`` (video frames) match
    by ``names``. ``source`` names the file in errors. Raises InputError for a missing or ambiguous match."""
    by_name: dict[str, list[int]] = {}
    by_stem: dict[str, list[int]] = {}
    for j, fp in enumerate(file_paths):
        by_name.setdefault(Path(fp).name, []).append(j)
        by_stem.setdefault(Path(fp).stem, []).append(j)
    picked, missing = [], []
    for i, name in enumerate(names):
        if image_paths:  # an image file: the same file name, else the same stem
            label = image_paths[i].name
            hits = by_name.get(label) or by_stem.get(image_paths[i].stem, [])
        else:  # a video frame, named frame_00001, ...
            label, hits = name, by_stem.get(name, [])
        if len(hits) > 1:
            raise InputError(f"{source} has {len(hits)} frames matching {label}")
        (picked if hits else missing).append(hits[0] if hits else label)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise InputError(
            f"{len(missing)} of {len(names)} inputs have no frame in {source} (matched by file name): {shown}"
        )
    return picked


def select_cameras(poses, idx: list[int], names: list[str], sizes: list[tuple[int, int]]):
    """(w2c, K, warnings) of the frames ``idx`` of ``poses`` (a :func:`read_transforms` result) for images of
    the given sizes (H, W): intrinsics are rescaled from each frame's w x h to the image's actual size."""
    _, w2c, K, json_sizes = poses
    Ks, warnings = K[idx].copy(), []
    for i, j in enumerate(idx):
        (h, w), (jh, jw) = sizes[i], json_sizes[j]
        sx, sy = w / jw, h / jh
        if abs(sx - sy) > 0.01 * max(sx, sy):
            warnings.append(f"{names[i]} is {w}x{h} but its camera in the poses file is for {jw}x{jh} (aspect differs)")
        Ks[i, 0] *= sx
        Ks[i, 1] *= sy
    return w2c[idx], Ks, warnings
