"""Image loading and the DA3 input pipeline (spec §2).

The numerics reproduce the official pre-processing exactly: a boundary resize to ``process_res``, then
both sides made multiples of the 14-pixel patch (a second small resize, or a centre crop), intrinsics
carried through every step, and ImageNet normalisation. Everything runs on uint8 numpy arrays with
OpenCV, so results are bit-identical to the official pipeline for uint8 RGB input.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from da3_splat.errors import InputError

PATCH = 14
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
METHODS = ("upper_bound_resize", "upper_bound_crop", "lower_bound_resize", "lower_bound_crop")
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm"})


# ----------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------
def _to_8bit(arr: np.ndarray) -> np.ndarray:
    # High byte: inverts the usual 8->16 bit expansion (v*257) exactly and matches what Pillow
    # itself does for 16-bit RGB PNGs, so grey and colour 16-bit files agree.
    return (np.clip(arr, 0, 65535).astype(np.uint32) >> 8).astype(np.uint8)


def _pil_to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode.startswith("I;16") or img.mode == "I":
        return _grey_to_rgb(_to_8bit(np.asarray(img)))
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        scale = 255.0 if arr.size and np.nanmax(arr) <= 1.0 else 1.0  # float images are usually 0..1
        return _grey_to_rgb(np.clip(np.nan_to_num(arr) * scale + 0.5, 0, 255).astype(np.uint8))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # avoids Pillow's palette-transparency warning; alpha dropped below
    # convert("RGB") drops alpha without compositing, as the official pipeline does.
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def _grey_to_rgb(arr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(arr[..., None], 3, axis=2))


def _array_to_rgb(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint16:
        arr = _to_8bit(arr)
    elif arr.dtype != np.uint8:
        raise InputError(f"image arrays must be uint8 or uint16, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        return _grey_to_rgb(arr)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        return np.ascontiguousarray(arr[..., :3])  # channels are taken as RGB(A)
    raise InputError(f"image arrays must be HxW, HxWx3 or HxWx4, got shape {arr.shape}")


def load_image(src) -> np.ndarray:
    """Load ``src`` (path, ndarray or PIL image) as an HxWx3 uint8 RGB array.

    Grayscale, palette, RGBA (alpha dropped) and 16-bit inputs are converted; EXIF orientation is
    applied (the official pipeline ignores it, which yields sideways phone photos).
    """
    if isinstance(src, np.ndarray):
        return _array_to_rgb(src)
    if isinstance(src, Image.Image):
        return _pil_to_rgb(ImageOps.exif_transpose(src))
    if not isinstance(src, (str, Path)):
        raise InputError(f"unsupported image input of type {type(src).__name__}")
    path = Path(src)
    if not path.is_file():
        raise InputError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()  # decode now so that truncated files fail here, not later
            return _pil_to_rgb(ImageOps.exif_transpose(img))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"cannot read image {path}: {reason}") from None


def _natural_key(name: str):
    # re.split with a capture group alternates text/number, so element types line up across names.
    parts = re.split(r"(\d+)", name.lower())
    return [int(p) if i % 2 else p for i, p in enumerate(parts)], name


def list_images(path) -> list[Path]:
    """One image file, or the images in a folder (non-recursive, natural order, hidden files skipped)."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            raise InputError(f"not a supported image file: {path}")
        return [path]
    if not path.is_dir():
        raise InputError(f"no such file or folder: {path}")
    # Hidden files include macOS "._name.jpg" resource forks, which are not images.
    found = [
        p for p in path.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    ]
    if not found:
        exts = " ".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
        raise InputError(f"no images ({exts}) found in {path}")
    return sorted(found, key=lambda p: _natural_key(p.name))


def read_video_frames(path, max_frames: int | None = None, stride: int | str = 1) -> list[np.ndarray]:
    """RGB uint8 frames of a video: black and duplicate frames dropped, then every ``stride``-th (or "auto":
    spaced by motion), at most ``max_frames`` (:mod:`da3_splat.frame_selection`, which reads the video twice so
    only the kept frames are decoded in full)."""
    from da3_splat.frame_selection import read_frames_at, select_frames, video_signatures

    selection = select_frames(video_signatures(path), stride, max_frames)
    return read_frames_at(path, selection.kept)


# ----------------------------------------------------------------------------------------------------
# DA3 pre-processing
# ----------------------------------------------------------------------------------------------------
@dataclass
class Preprocessed:
    images: torch.Tensor  # (S,3,H,W) float32, ImageNet-normalised, H and W multiples of 14
    images_uint8: np.ndarray  # (S,H,W,3) uint8: the processed RGB images
    intrinsics: np.ndarray | None  # (S,3,3) float32 in pixels of the processed images
    extrinsics: np.ndarray | None  # (S,4,4) float32 world-to-camera, unchanged
    original_sizes: list[tuple[int, int]]  # (H, W) of each input before processing


def _resize(img: np.ndarray, w: int, h: int, upscale: bool) -> np.ndarray:
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_CUBIC if upscale else cv2.INTER_AREA)


def _scale_k(K: np.ndarray | None, old_w: int, old_h: int, new_w: int, new_h: int) -> None:
    # Row-wise in K's own dtype and as two separate steps per resize: this is what makes float32
    # intrinsics bit-identical to the official results.
    if K is not None:
        K[0] *= new_w / float(old_w)
        K[1] *= new_h / float(old_h)


def _nearest_multiple(x: int) -> int:
    down = (x // PATCH) * PATCH
    return down + PATCH if (down + PATCH - x) <= (x - down) else down  # ties go up


def _process_one(img: np.ndarray, K: np.ndarray | None, res: int, method: str):
    h, w = img.shape[:2]
    # 1) Boundary resize: the longest (upper_bound) or shortest (lower_bound) side becomes `res`.
    side = max(w, h) if method.startswith("upper") else min(w, h)
    if side != res:
        scale = res / float(side)
        nw, nh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
        img = _resize(img, nw, nh, upscale=scale > 1.0)
        _scale_k(K, w, h, nw, nh)
        w, h = nw, nh
    # 2) Patch divisibility.
    if method.endswith("resize"):
        nw, nh = max(1, _nearest_multiple(w)), max(1, _nearest_multiple(h))
        if (nw, nh) != (w, h):
            img = _resize(img, nw, nh, upscale=nw > w or nh > h)
            _scale_k(K, w, h, nw, nh)
    else:
        nw, nh = (w // PATCH) * PATCH, (h // PATCH) * PATCH
        img, K = _centre_crop(img, K, nh, nw)
    if img.shape[0] < PATCH or img.shape[1] < PATCH:
        raise InputError(f"image of size {h}x{w} after resizing is too thin to split into {PATCH}-pixel patches")
    return img, K


def _centre_crop(img: np.ndarray, K: np.ndarray | None, new_h: int, new_w: int):
    h, w = img.shape[:2]
    top, left = (h - new_h) // 2, (w - new_w) // 2
    if K is not None:
        K[0, 2] -= left
        K[1, 2] -= top
    return img[top : top + new_h, left : left + new_w], K


def _per_view_matrices(mats, n: int, name: str, shape: tuple[int, int]) -> list[np.ndarray] | None:
    if mats is None:
        return None
    if np.ndim(mats) == 2:  # one matrix shared by every view
        mats = [mats] * n
    out = []
    for m in list(mats):
        m = np.array(m, copy=True)
        if not np.issubdtype(m.dtype, np.floating):
            m = m.astype(np.float64)
        out.append(m)
    if len(out) != n:
        raise InputError(f"got {len(out)} {name} for {n} images")
    if name == "extrinsics":  # accept 3x4 world-to-camera by completing the bottom row
        out = [np.vstack([m, [[0, 0, 0, 1]]]).astype(m.dtype) if m.shape == (3, 4) else m for m in out]
    bad = [m.shape for m in out if m.shape != shape]
    if bad:
        raise InputError(f"{name} must be {shape[0]}x{shape[1]} per image, got {bad[0]}")
    return out


def preprocess(
    images: list,
    process_res: int = 504,
    method: str = "upper_bound_resize",
    intrinsics=None,
    extrinsics=None,
) -> Preprocessed:
    """Run DA3's official pre-processing on ``images`` (anything :func:`load_image` accepts).

    Intrinsics are per image, in pixels of the original image, and come back in pixels of the
    processed image. When the processed sizes differ, every image is centre-cropped to the smallest
    height and the smallest width, as the official pipeline does.
    """
    if method not in METHODS:
        raise InputError(f"unknown process_res_method {method!r}; choose one of {', '.join(METHODS)}")
    if int(process_res) < PATCH:
        raise InputError(f"process_res must be at least {PATCH}, got {process_res}")
    images = list(images)
    if not images:
        raise InputError("no images to process")
    n = len(images)
    Ks = _per_view_matrices(intrinsics, n, "intrinsics", (3, 3))
    Es = _per_view_matrices(extrinsics, n, "extrinsics", (4, 4))

    # Decoding and resizing are independent per image; OpenCV and Pillow release the GIL.
    def work(i):
        rgb = load_image(images[i])
        return rgb.shape[:2], *_process_one(rgb, None if Ks is None else Ks[i], int(process_res), method)

    with ThreadPoolExecutor(max_workers=min(8, n)) as pool:
        results = list(pool.map(work, range(n)))
    original_sizes = [(int(s[0]), int(s[1])) for s, _, _ in results]
    imgs = [r[1] for r in results]
    Ks = None if Ks is None else [r[2] for r in results]

    # Mixed sizes: crop everything to the smallest height and width so the batch can be stacked.
    min_h, min_w = min(im.shape[0] for im in imgs), min(im.shape[1] for im in imgs)
    if any(im.shape[:2] != (min_h, min_w) for im in imgs):
        for i in range(n):
            imgs[i], k = _centre_crop(imgs[i], None if Ks is None else Ks[i], min_h, min_w)
            if Ks is not None:
                Ks[i] = k

    stacked = np.ascontiguousarray(np.stack(imgs))
    return Preprocessed(
        images=normalize(stacked),
        images_uint8=stacked,
        intrinsics=None if Ks is None else np.stack(Ks).astype(np.float32),
        extrinsics=None if Es is None else np.stack(Es).astype(np.float32),
        original_sizes=original_sizes,
    )


def _stats(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(IMAGENET_MEAN, dtype=like.dtype, device=like.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=like.dtype, device=like.device).view(3, 1, 1)
    return mean, std


def normalize(images_uint8: np.ndarray) -> torch.Tensor:
    """(S,H,W,3) uint8 -> (S,3,H,W) float32 ImageNet-normalised (÷255, minus mean, over std)."""
    x = torch.from_numpy(np.ascontiguousarray(images_uint8)).permute(0, 3, 1, 2).contiguous()
    x = x.to(torch.float32).div(255)
    mean, std = _stats(x)
    return x.sub_(mean).div_(std)


def normalize_float(images: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) float images in [0, 1] -> ImageNet-normalised (differentiable; for training batches)."""
    mean, std = _stats(images)
    return (images - mean) / std


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """Inverse of the ImageNet normalisation for (...,3,H,W) tensors, clamped to [0, 1]."""
    mean, std = _stats(images)
    return (images * std + mean).clamp_(0.0, 1.0)
