"""DL3DV-style scenes (nerfstudio ``transforms.json`` + ``images_k/``): finding, reading and loading views.

Layouts understood (see the nerfstudio integration reference, section 13):

- DL3DV-10K and our synthetic scenes: ``<scene>/transforms.json`` with ``images_4/`` (or ``images_8/``, ...),
  scenes possibly grouped one level deeper (``1K/<hash>/``);
- DL3DV-Benchmark: ``<hash>/nerfstudio/transforms.json`` with ``images_2/``, ``images_4/``, ``images_8/``.

Frames keep the order of ``transforms.json``; ``Scene.frame_ids`` maps each frame read to its position there
(the numbering evaluation index files use), since missing or unreadable frames are skipped.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
import torch
from PIL import Image

from da3_splat.data.sampling import INDEX_FILE, parse_eval_index
from da3_splat.data.transforms import TRANSFORMS_FILE, read_transforms
from da3_splat.errors import InputError

DOWNSCALES = (1, 2, 4, 8)  # images/, images_2/, images_4/, images_8/, tried in this order
BENCHMARK_SUBDIR = "nerfstudio"
# OpenCV's distortion vector order; nerfstudio's OPENCV model uses k1 k2 p1 p2 (k3 is read when present)
DISTORTION_ORDER = ("k1", "k2", "p1", "p2", "k3")


@dataclass
class Scene:
    """One scene's frames as read: cameras in OpenCV convention, intrinsics in pixels of the images read."""

    name: str
    root: Path  # the folder holding transforms.json
    image_paths: list[Path]
    w2c: np.ndarray  # (N, 4, 4) float64 OpenCV world-to-camera
    intrinsics: np.ndarray  # (N, 3, 3) float64, pixels of the (undistorted) images read; pixel centres at +0.5
    height: int
    width: int
    depth_paths: list[Path] | None = None  # planar z-depth .npy per frame (synthetic scenes)
    eval_index: dict | None = None  # eval_index.json next to transforms.json, as stored
    downscale: int = 1  # the image folder read: 1 -> images/, k -> images_k/
    frame_ids: list[int] = field(default_factory=list)  # each frame's position in transforms.json
    # When the images on disk have lens distortion (undistorted on load): their intrinsics and OpenCV k1 k2 p1 p2 k3
    raw_intrinsics: np.ndarray | None = None
    distortion: np.ndarray | None = None  # (N, 5)

    def __len__(self) -> int:
        return len(self.image_paths)

    def positions(self, frame_ids) -> list[int]:
        """Positions in this Scene of transforms.json frame numbers; InputError if one was not read."""
        where = {f: i for i, f in enumerate(self.frame_ids)}
        missing = [int(f) for f in frame_ids if int(f) not in where]
        if missing:
            raise InputError(f"scene {self.name}: frames {missing[:5]} were not read (missing or out of range)")
        return [where[int(f)] for f in frame_ids]


# --------------------------------------------------------------------------------------------------
# Finding scenes


def _transforms_in(folder: Path) -> Path | None:
    for file in (folder / TRANSFORMS_FILE, folder / BENCHMARK_SUBDIR / TRANSFORMS_FILE):
        if file.is_file():
            return file
    return None


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))  # skip .partial


def find_scenes(root) -> list[Path]:
    """Scene folders under ``root``, sorted: ``[root]`` if it is a scene itself, else its sub-folders that are
    scenes (``<scene>/transforms.json`` or Benchmark ``<hash>/nerfstudio/transforms.json``) and, in the other
    sub-folders, theirs (``1K/<hash>/``). Hidden folders (like unfinished ``.scene.partial``) are skipped."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"scene folder not found: {root}")
    if _transforms_in(root):
        return [root]
    found = []
    for sub in _subdirs(root):
        found.extend([sub] if _transforms_in(sub) else [s for s in _subdirs(sub) if _transforms_in(s)])
    return sorted(found)


# --------------------------------------------------------------------------------------------------
# Reading a scene


def _locate(path) -> tuple[Path, str]:
    """(transforms file, scene name) of a scene folder, a Benchmark ``<hash>/`` folder or a transforms file."""
    path = Path(path)
    file = path if path.is_file() else _transforms_in(path) if path.is_dir() else None
    if file is None:
        raise InputError(f"no {TRANSFORMS_FILE} in {path} (nor in {path / BENCHMARK_SUBDIR})")
    folder = file.resolve().parent
    return file, folder.parent.name if folder.name == BENCHMARK_SUBDIR else folder.name


def _image_path(root: Path, file_path: str, downscale: int) -> Path:
    # nerfstudio's rule: with a downscale factor k the image is images_k/<file name>, whatever folder
    # file_path names (DL3DV stores images/frame_00001.png while the files sit in images_4/)
    return root / file_path if downscale == 1 else root / f"images_{downscale}" / PurePosixPath(file_path).name


def _pick_downscale(root: Path, file_paths: list[str], downscale: int | None) -> int:
    if downscale is not None:
        if downscale < 1:
            raise InputError(f"downscale must be a positive integer, got {downscale}")
        return downscale
    for k in DOWNSCALES:
        if any(_image_path(root, fp, k).is_file() for fp in file_paths):
            return k
    raise InputError(f"no images of {root / TRANSFORMS_FILE} found in images/, images_2/, images_4/ or images_8/")


def _image_size(path: Path) -> tuple[int, int] | str:
    """(H, W) from the file's header, or why it cannot be read."""
    if not path.is_file():
        return "missing"
    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        return f"unreadable ({type(e).__name__})"


def _distortion(meta: dict, frame: dict) -> np.ndarray:
    values = []
    for key in DISTORTION_ORDER:
        value = meta.get(key, frame.get(key, 0.0))
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
            raise InputError(f"distortion coefficient {key} must be a finite number, got {value!r}")
        values.append(float(value))
    return np.array(values)


def _undistorted_intrinsics(K: np.ndarray, dist: np.ndarray, h: int, w: int) -> np.ndarray:
    """Intrinsics of the undistorted image (same size, only valid pixels kept)."""
    if not dist.any():
        return K.copy()
    # OpenCV puts pixel centres at integers, nerfstudio at +0.5: shift into OpenCV's convention and back
    shift = np.array([[1.0, 0, -0.5], [0, 1, -0.5], [0, 0, 1]])
    new, _ = cv2.getOptimalNewCameraMatrix(shift @ K, dist, (w, h), 0.0, (w, h))
    return np.linalg.inv(shift) @ new


def _depth_paths(root: Path, frames: list[dict], keep: list[int], downscale: int, name: str) -> list[Path] | None:
    # depths_k/<stem>.npy next to images_k/ (only the file name of depth_file_path is used, as for images)
    folder = root / ("depths" if downscale == 1 else f"depths_{downscale}")
    paths = []
    for i in keep:
        given = frames[i].get("depth_file_path")
        file = PurePosixPath(given).name if isinstance(given, str) and given else None
        paths.append(folder / (file or f"{PurePosixPath(frames[i]['file_path']).stem}.npy"))
    present = sum(p.is_file() for p in paths)
    if 0 < present < len(paths):
        warnings.warn(
            f"scene {name}: depth maps for only {present} of {len(paths)} frames in {folder}; ignoring depth",
            stacklevel=2,
        )
    return paths if present == len(paths) else None


def _read_eval_index(root: Path, name: str) -> dict | None:
    file = root / INDEX_FILE
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        parse_eval_index(data, name, str(file))  # validates it
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, InputError) as e:
        warnings.warn(f"scene {name}: ignoring {file}: {e}", stacklevel=2)
        return None
    return data


def _warn_skipped(name: str, problems: list[tuple[Path, str]], total: int) -> None:
    if problems:
        shown = ", ".join(f"{p.name} ({why})" for p, why in problems[:3])
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        warnings.warn(f"scene {name}: skipped {len(problems)} of {total} frames: {shown}{more}", stacklevel=2)


def read_scene(path, downscale: int | None = None, undistort: bool = True, min_frames: int = 2) -> Scene:
    """Read a scene's cameras and find its images (which are not decoded; only their headers are read).

    ``path``: a scene folder holding transforms.json, a DL3DV-Benchmark ``<hash>/`` folder (holding
    ``nerfstudio/transforms.json``), or the transforms file. Images come from ``images/`` (downscale 1) or
    ``images_k/`` (downscale k) with the file names of transforms.json; ``downscale=None`` takes the first of
    images/, images_2/, images_4/, images_8/ holding any (``Scene.downscale`` says which). Intrinsics are
    rescaled per frame from the transforms file's ``w x h`` to the image size, which all frames must share.
    Lens distortion (OPENCV k1 k2 p1 p2 [k3]): ``undistort`` gives intrinsics of undistorted images, which
    :func:`load_views` produces; otherwise InputError. Missing, unreadable or odd-sized images are skipped with
    one warning; fewer than ``min_frames`` left is an InputError.
    """
    file, name = _locate(path)
    root = file.parent
    file_paths, w2c, K_json, json_sizes = read_transforms(file)
    meta = json.loads(file.read_text(encoding="utf-8"))  # valid: read_transforms parsed it
    frames = meta["frames"]
    k = _pick_downscale(root, file_paths, downscale)

    keep, image_paths, problems, size = [], [], [], None
    for i, fp in enumerate(file_paths):
        image = _image_path(root, fp, k)
        got = _image_size(image)
        if isinstance(got, tuple) and size is not None and got != size:
            got = f"{got[1]}x{got[0]}, not {size[1]}x{size[0]} like the others"
        if isinstance(got, str):
            problems.append((image, got))
            continue
        size = got
        keep.append(i)
        image_paths.append(image)
    _warn_skipped(name, problems, len(file_paths))
    if len(keep) < min_frames and len(keep) == len(file_paths):
        raise InputError(f"scene {name} has {len(keep)} frames; need at least {min_frames}")
    if len(keep) < min_frames:
        raise InputError(
            f"scene {name}: only {len(keep)} of {len(file_paths)} frames have readable images in "
            f"{_image_path(root, file_paths[0], k).parent} (need at least {min_frames})"
        )

    H, W = size
    scale = np.stack([W / json_sizes[keep, 1], H / json_sizes[keep, 0]], axis=1)  # (N, 2): x, y
    if np.any(np.abs(scale[:, 0] - scale[:, 1]) > 0.01 * scale.max(1)):
        warnings.warn(
            f"scene {name}: images are {W}x{H} but transforms.json's w x h has another aspect ratio", stacklevel=2
        )
    K = K_json[keep].copy()
    K[:, 0] *= scale[:, :1]
    K[:, 1] *= scale[:, 1:]

    dist = np.stack([_distortion(meta, frames[i]) for i in keep])
    raw_K = None
    if dist.any():
        if not undistort:
            coeffs = ", ".join(f"{n}={v:g}" for n, v in zip(DISTORTION_ORDER, dist[dist.any(1)][0]) if v)
            raise InputError(f"scene {name} has lens distortion ({coeffs}); read it with undistort=True")
        raw_K, K = K, np.stack([_undistorted_intrinsics(Ki, di, H, W) for Ki, di in zip(K, dist)])

    return Scene(
        name=name,
        root=root,
        image_paths=image_paths,
        w2c=w2c[keep],
        intrinsics=K,
        height=H,
        width=W,
        depth_paths=_depth_paths(root, frames, keep, k, name),
        eval_index=_read_eval_index(root, name),
        downscale=k,
        frame_ids=keep,
        raw_intrinsics=raw_K,
        distortion=dist if raw_K is not None else None,
    )


# --------------------------------------------------------------------------------------------------
# Loading views


def crop_geometry(height: int, width: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(resized H, resized W, top, left) for resizing an image so it covers ``size`` (H, W) keeping its
    aspect ratio, then centre-cropping ``size`` out of it."""
    s = max(size[0] / height, size[1] / width)
    rh, rw = max(size[0], round(height * s)), max(size[1], round(width * s))
    return rh, rw, (rh - size[0]) // 2, (rw - size[1]) // 2


def crop_intrinsics(K: np.ndarray, height: int, width: int, size: tuple[int, int]) -> np.ndarray:
    """Intrinsics (..., 3, 3) after :func:`crop_geometry`'s resize and centre crop (pixel centres at +0.5,
    so a resize scales every entry of a row exactly)."""
    rh, rw, top, left = crop_geometry(height, width, size)
    K = np.array(K, dtype=np.float64)
    K[..., 0, :] *= rw / width
    K[..., 1, :] *= rh / height
    K[..., 0, 2] -= left
    K[..., 1, 2] -= top
    return K


def _resize_crop(array: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    h, w = array.shape[:2]
    rh, rw, top, left = crop_geometry(h, w, size)
    if (rh, rw) != (h, w):
        # INTER_NEAREST_EXACT samples pixel centres (plain INTER_NEAREST is off by half a pixel)
        interp = cv2.INTER_NEAREST_EXACT if nearest else cv2.INTER_AREA if rh < h else cv2.INTER_LINEAR
        array = cv2.resize(array, (rw, rh), interpolation=interp)
    return array[top : top + size[0], left : left + size[1]]


def _undistort(array: np.ndarray, K: np.ndarray, dist: np.ndarray, new_K: np.ndarray, nearest: bool) -> np.ndarray:
    h, w = array.shape[:2]
    shift = np.array([[1.0, 0, -0.5], [0, 1, -0.5], [0, 0, 1]])  # to OpenCV's integer pixel centres
    maps = cv2.initUndistortRectifyMap(shift @ K, dist, None, shift @ new_K, (w, h), cv2.CV_32FC1)
    return cv2.remap(array, *maps, cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _read_image(path: Path) -> np.ndarray:
    # no EXIF rotation: the header size read_scene saw (and nerfstudio's loader) ignores it too
    image = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise InputError(f"cannot read image {path}")
    return np.ascontiguousarray(image[..., ::-1])


def _read_depth(path: Path, h: int, w: int) -> np.ndarray:
    try:
        depth = np.load(path).astype(np.float32)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read depth map {path}: {e}") from None
    if depth.ndim != 2:
        raise InputError(f"depth map {path} has shape {depth.shape}, not (H, W)")
    if depth.shape != (h, w):  # stored at another resolution than the images
        depth = cv2.resize(depth, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
    return depth


def load_views(scene: Scene, indices, size: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
    """Decode views ``indices`` (positions in ``scene``) into tensors.

    Returns images (S, 3, H, W) float32 in [0, 1], w2c (S, 4, 4), intrinsics (S, 3, 3) and, when the scene
    has depth, depth (S, H, W) planar z-depth, all float32. Distorted images are undistorted. With ``size``
    (H, W) each image is resized (keeping its aspect ratio) to the least size covering ``size``, then
    centre-cropped to it; the intrinsics follow (:func:`crop_intrinsics`), depth is resized nearest-neighbour.
    """
    indices = [int(i) for i in indices]
    if any(not 0 <= i < len(scene) for i in indices):
        raise InputError(f"scene {scene.name}: view indices {indices} out of range (it has {len(scene)} frames)")
    images, depths = [], []
    for i in indices:
        image = _read_image(scene.image_paths[i])
        if image.shape[:2] != (scene.height, scene.width):
            raise InputError(
                f"{scene.image_paths[i]} is {image.shape[1]}x{image.shape[0]}, not "
                f"{scene.width}x{scene.height} like when the scene was read"
            )
        depth = _read_depth(scene.depth_paths[i], scene.height, scene.width) if scene.depth_paths else None
        if scene.distortion is not None and scene.distortion[i].any():
            undo = (scene.raw_intrinsics[i], scene.distortion[i], scene.intrinsics[i])
            image = _undistort(image, *undo, nearest=False)
            depth = None if depth is None else _undistort(depth, *undo, nearest=True)
        if size is not None:
            image = _resize_crop(image, size, nearest=False)
            depth = None if depth is None else _resize_crop(depth, size, nearest=True)
        images.append(image)
        depths.append(depth)

    K = scene.intrinsics[indices]
    if size is not None:
        K = crop_intrinsics(K, scene.height, scene.width, size)
    out = {
        "images": torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0),
        "w2c": torch.from_numpy(scene.w2c[indices]).float(),
        "intrinsics": torch.from_numpy(np.ascontiguousarray(K)).float(),
    }
    if scene.depth_paths:
        out["depth"] = torch.from_numpy(np.stack(depths))
    return out


def scene_list(roots) -> list[Path]:
    """Every scene under the given folders (scene folders or folders of scenes); an error for a missing folder or
    no scene at all."""
    scenes = []
    for r in roots:
        if not Path(r).exists():
            raise InputError(f"data folder {r} does not exist")
        scenes += find_scenes(r)
    if not scenes:
        raise InputError(f"no scenes (transforms.json) under {', '.join(map(str, roots))}")
    return scenes
