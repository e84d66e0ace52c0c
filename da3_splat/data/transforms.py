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
from da3_splat.export import atomic_write
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
            "fl_x": float(K[i, 0, 0]), "fl_y": float(K[i, 1, 1]), "cx": float(K[i, 0, 2]), "cy": float(K[i, 1, 2]),
            "w": int(sizes[i][1]), "h": int(sizes[i][0]),
        }  # fmt: skip
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


def _matrix(value, where: str) -> np.ndarray:
    try:
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{where}: transform_matrix is not a numeric matrix") from None
    if m.shape == (3, 4):
        m = np.vstack([m, [0.0, 0.0, 0.0, 1.0]])
    if m.shape != (4, 4) or not np.isfinite(m).all():
        raise InputError(f"{where}: transform_matrix must be a finite 4x4 matrix, got shape {m.shape}")
    R = m[:3, :3]
    if not np.allclose(R.T @ R, np.eye(3), atol=1e-3) or np.linalg.det(R) < 0:
        raise InputError(f"{where}: transform_matrix is not a rigid camera-to-world transform (rotation part)")
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
        vals[key] = _number(src[key], f"{where}: '{key}'")
    w, h = vals["w"], vals["h"]
    if w < 1 or h < 1 or w != int(w) or h != int(h) or vals["fl_x"] <= 0 or vals["fl_y"] <= 0:
        raise InputError(f"{where}: invalid intrinsics (w, h must be positive integers and focal lengths positive)")
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
