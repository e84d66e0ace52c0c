"""Tests for da3_splat.model.preprocess: parity with the official InputProcessor, loading, listing, video."""

from __future__ import annotations

import importlib
import sys
import types
import warnings

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from da3_splat.model.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    InputError,
    Preprocessed,
    denormalize,
    list_images,
    load_image,
    preprocess,
    read_video_frames,
)
from tests.oracle import prepare

METHODS = ["upper_bound_resize", "upper_bound_crop", "lower_bound_resize", "lower_bound_crop"]


# ----------------------------------------------------------------------------------------------------
# Oracle
# ----------------------------------------------------------------------------------------------------
def _torchvision_standin() -> dict[str, types.ModuleType]:
    """The three torchvision transforms the oracle's input processor uses, with torchvision's semantics.

    Used only when torchvision is not installed (the CPU venv has none: PyPI's wheels are CUDA builds).
    ToTensor: HWC uint8 -> CHW float32 / 255. Normalize: in-place sub(mean).div(std) in float32.
    CenterCrop: offsets round((H - h) / 2), round((W - w) / 2) on the last two dims.
    """

    class ToTensor:
        def __call__(self, pic):
            arr = np.array(pic, np.uint8, copy=True)
            if arr.ndim == 2:
                arr = arr[:, :, None]
            t = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
            return t.to(dtype=torch.get_default_dtype()).div(255)

    class Normalize:
        def __init__(self, mean, std):
            self.mean, self.std = mean, std

        def __call__(self, t):
            t = t.clone()
            mean = torch.as_tensor(self.mean, dtype=t.dtype).view(-1, 1, 1)
            std = torch.as_tensor(self.std, dtype=t.dtype).view(-1, 1, 1)
            return t.sub_(mean).div_(std)

    class CenterCrop:
        def __init__(self, size):
            self.h, self.w = size

        def __call__(self, t):
            H, W = t.shape[-2:]
            top, left = int(round((H - self.h) / 2.0)), int(round((W - self.w) / 2.0))
            return t[..., top : top + self.h, left : left + self.w]

    tv = types.ModuleType("torchvision")
    tvt = types.ModuleType("torchvision.transforms")
    tvt.ToTensor, tvt.Normalize, tvt.CenterCrop = ToTensor, Normalize, CenterCrop
    tv.transforms = tvt
    return {"torchvision": tv, "torchvision.transforms": tvt}


@pytest.fixture(scope="module")
def oracle():
    """The official InputProcessor, with stand-ins for torchvision / imageio when they are missing."""
    stubs: dict[str, types.ModuleType] = {}
    try:
        import torchvision.transforms  # noqa: F401
    except Exception:
        stubs.update(_torchvision_standin())
    try:
        import imageio  # noqa: F401  (imported by the oracle's parallel_utils, only used for saving)
    except Exception:
        stubs["imageio"] = types.ModuleType("imageio")
    prepare()
    saved = {k: sys.modules.get(k) for k in stubs}
    sys.modules.update(stubs)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mod = importlib.import_module("depth_anything_3.utils.io.input_processor")
        proc = mod.InputProcessor()
    finally:
        for k, v in saved.items():  # keep the stand-ins from leaking into other test modules
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
        if stubs:
            for name in ("depth_anything_3.utils.io.input_processor", "depth_anything_3.utils.parallel_utils"):
                sys.modules.pop(name, None)

    def run(images, method, intrinsics=None, extrinsics=None, res=504):
        return proc(images, extrinsics, intrinsics, res, method, num_workers=1)

    return run


def _rand_img(rng, w, h):
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _rand_K(rng, w, h, dtype=np.float32):
    fx, fy = rng.uniform(0.5, 1.5, size=2) * max(w, h)
    cx, cy = w / 2 + rng.uniform(-5, 5), h / 2 + rng.uniform(-5, 5)
    return np.array([[fx, 0.3, cx], [0, fy, cy], [0, 0, 1]], dtype=dtype)


# (W, H): 4:3, 16:9 downscaled, tiny, portrait, multiples of 14, exactly 504, odd sizes, ties.
SIZES = [
    (640, 480),
    (480, 270),
    (20, 30),
    (270, 480),
    (420, 280),
    (504, 378),
    (504, 376),
    (333, 517),
    (700, 505),
    (504, 287),
    (525, 504),  # a side at 7 mod 14 after the boundary resize: the tie goes up
]


# ----------------------------------------------------------------------------------------------------
# Parity
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("with_K", [False, True])
def test_parity_single_sizes(oracle, method, with_K):
    rng = np.random.default_rng(0)
    for w, h in SIZES:
        imgs = [_rand_img(rng, w, h), _rand_img(rng, w, h)]
        Ks = np.stack([_rand_K(rng, w, h), _rand_K(rng, w, h)]) if with_K else None
        ref_imgs, _, ref_K = oracle(imgs, method, intrinsics=Ks)
        out = preprocess(imgs, method=method, intrinsics=Ks)
        assert out.images.shape == ref_imgs.shape, (w, h, method)
        assert out.images.dtype == torch.float32
        torch.testing.assert_close(out.images, ref_imgs, rtol=0, atol=1e-6)
        assert out.original_sizes == [(h, w), (h, w)]
        H, W = out.images.shape[-2:]
        assert H % 14 == 0 and W % 14 == 0
        if with_K:
            assert out.intrinsics.dtype == np.float32
            np.testing.assert_array_equal(out.intrinsics, ref_K.numpy())
        else:
            assert out.intrinsics is None and ref_K is None


@pytest.mark.parametrize("method", METHODS)
def test_parity_mixed_sizes(oracle, method):
    rng = np.random.default_rng(1)
    sizes = [(640, 480), (480, 270), (270, 480), (333, 517)]
    imgs = [_rand_img(rng, w, h) for w, h in sizes]
    Ks = np.stack([_rand_K(rng, w, h) for w, h in sizes])
    ref_imgs, _, ref_K = oracle(imgs, method, intrinsics=Ks)
    out = preprocess(imgs, method=method, intrinsics=Ks)
    torch.testing.assert_close(out.images, ref_imgs, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(out.intrinsics, ref_K.numpy())
    assert out.original_sizes == [(h, w) for w, h in sizes]


def test_parity_other_res_float64_K_and_inputs(oracle, tmp_path):
    rng = np.random.default_rng(2)
    arr = _rand_img(rng, 250, 190)
    path = tmp_path / "a.png"
    Image.fromarray(arr).save(path)
    imgs = [str(path), Image.fromarray(arr), arr]
    Ks = np.stack([_rand_K(rng, 250, 190, np.float64) for _ in imgs])
    for res, method in [(280, "upper_bound_resize"), (518, "lower_bound_crop"), (140, "lower_bound_resize")]:
        ref_imgs, _, ref_K = oracle(imgs, method, intrinsics=Ks, res=res)
        out = preprocess(imgs, process_res=res, method=method, intrinsics=Ks)
        torch.testing.assert_close(out.images, ref_imgs, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(out.intrinsics, ref_K.numpy())


def test_known_sizes_and_intrinsics_by_hand():
    K = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]], np.float32)
    out = preprocess([np.zeros((480, 640, 3), np.uint8)], intrinsics=[K])
    assert out.images.shape == (1, 3, 378, 504)
    np.testing.assert_allclose(out.intrinsics[0], [[393.75, 0, 252], [0, 393.75, 189], [0, 0, 1]], rtol=1e-6)
    # 480x270: 283.5 rounds (to even) to 284, the nearest multiple of 14 is 280.
    out = preprocess([np.zeros((270, 480, 3), np.uint8)])
    assert out.images.shape == (1, 3, 280, 504)
    # Crop variant: 504x284 floors to 504x280, 2 rows cropped off the top.
    out = preprocess([np.zeros((270, 480, 3), np.uint8)], method="upper_bound_crop", intrinsics=[np.eye(3)])
    assert out.images.shape == (1, 3, 280, 504)
    assert out.intrinsics[0, 1, 2] == pytest.approx(-2.0)


def test_outputs_consistent_and_denormalize():
    rng = np.random.default_rng(3)
    imgs = [_rand_img(rng, 300, 200) for _ in range(3)]
    E = np.tile(np.eye(4), (3, 1, 1))
    E[:, :3, 3] = rng.normal(size=(3, 3))
    out = preprocess(imgs, extrinsics=E)
    assert isinstance(out, Preprocessed)
    assert out.images_uint8.shape == (3, 336, 504, 3) and out.images_uint8.dtype == np.uint8
    back = denormalize(out.images)
    torch.testing.assert_close(back, torch.from_numpy(out.images_uint8).permute(0, 3, 1, 2) / 255.0, rtol=0, atol=1e-6)
    assert out.extrinsics.dtype == np.float32
    np.testing.assert_array_equal(out.extrinsics, E.astype(np.float32))
    # 3x4 world-to-camera matrices are completed to 4x4.
    out34 = preprocess(imgs, extrinsics=E[:, :3, :])
    np.testing.assert_array_equal(out34.extrinsics, E.astype(np.float32))
    assert len(IMAGENET_MEAN) == len(IMAGENET_STD) == 3


def test_preprocess_errors():
    img = np.zeros((50, 60, 3), np.uint8)
    with pytest.raises(InputError):
        preprocess([])
    with pytest.raises(InputError):
        preprocess([img], method="nearest")
    with pytest.raises(InputError):
        preprocess([img, img], intrinsics=np.stack([np.eye(3)] * 3))
    with pytest.raises(InputError):
        preprocess([img], extrinsics=np.zeros((1, 2, 2)))
    with pytest.raises(InputError, match="too thin"):
        preprocess([np.zeros((4, 1000, 3), np.uint8)])
    assert issubclass(InputError, ValueError)


# ----------------------------------------------------------------------------------------------------
# load_image
# ----------------------------------------------------------------------------------------------------
def test_load_grey_rgba_palette(tmp_path):
    rng = np.random.default_rng(4)
    grey = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png")
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    assert all((out[..., c] == grey).all() for c in range(3))

    rgba = rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(load_image(str(tmp_path / "a.png")), rgba[..., :3])

    pal = Image.fromarray(_rand_img(rng, 30, 20)).quantize(colors=16)
    pal.save(tmp_path / "p.png")
    pal.save(tmp_path / "pt.png", transparency=0)
    expected = np.asarray(pal.convert("RGB"))
    np.testing.assert_array_equal(load_image(tmp_path / "p.png"), expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(load_image(tmp_path / "pt.png"), expected)


def test_load_16bit(tmp_path):
    vals = (np.arange(600, dtype=np.uint16).reshape(20, 30) * 109).astype(np.uint16)
    assert cv2.imwrite(str(tmp_path / "g16.png"), vals)
    out = load_image(tmp_path / "g16.png")
    np.testing.assert_array_equal(out[..., 1], (vals >> 8).astype(np.uint8))
    # An 8-bit value v expanded to 16 bits (v * 257) comes back as v.
    v8 = np.arange(256, dtype=np.uint16).reshape(16, 16)
    assert cv2.imwrite(str(tmp_path / "e16.png"), v8 * 257)
    np.testing.assert_array_equal(load_image(tmp_path / "e16.png")[..., 0], v8)

    bgr = np.stack([vals, vals // 2, vals // 3], axis=-1)
    assert cv2.imwrite(str(tmp_path / "c16.png"), bgr)
    np.testing.assert_array_equal(load_image(tmp_path / "c16.png"), (bgr[..., ::-1] >> 8).astype(np.uint8))
    # uint16 arrays, HxWx1 and HxWx4 arrays.
    np.testing.assert_array_equal(load_image(bgr), (bgr >> 8).astype(np.uint8))
    assert load_image(np.zeros((5, 6, 1), np.uint8)).shape == (5, 6, 3)
    assert load_image(np.zeros((5, 6, 4), np.uint8)).shape == (5, 6, 3)
    with pytest.raises(InputError):
        load_image(np.zeros((5, 6, 3), np.float32))
    with pytest.raises(InputError):
        load_image(np.zeros((5, 6, 2), np.uint8))


def test_load_exif_orientation(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)  # left half red
    arr[:, 20:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display needs a 90° clockwise rotation: the left half ends on top
    Image.fromarray(arr).save(tmp_path / "r.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "r.jpg")
    assert out.shape == (40, 20, 3)
    assert out[:15, :, 0].mean() > 200 and out[:15, :, 2].mean() < 50
    assert out[25:, :, 2].mean() > 200 and out[25:, :, 0].mean() < 50
    with Image.open(tmp_path / "r.jpg") as im:  # in-memory PIL images get the same treatment
        assert load_image(im).shape == (40, 20, 3)


def test_load_errors_name_the_file(tmp_path):
    bad = tmp_path / "corrupt_frame.jpg"
    bad.write_bytes(np.random.default_rng(5).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    with pytest.raises(InputError, match="corrupt_frame.jpg"):
        load_image(bad)
    good = tmp_path / "ok.jpg"
    Image.fromarray(_rand_img(np.random.default_rng(6), 64, 64)).save(good)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:400])
    with pytest.raises(InputError, match="truncated.jpg"):
        load_image(truncated)
    with pytest.raises(InputError, match="missing_one.png"):
        load_image(tmp_path / "missing_one.png")
    with pytest.raises(InputError, match="corrupt_frame.jpg"):
        preprocess([good, bad])
    with pytest.raises(InputError):
        load_image(12345)


# ----------------------------------------------------------------------------------------------------
# list_images / read_video_frames
# ----------------------------------------------------------------------------------------------------
def test_list_images(tmp_path):
    names = [
        "frame_10.png",
        "frame_2.png",
        "frame_1.jpg",
        "Frame_3.JPG",
        "frame_2b.webp",
        "x.TIFF",
        "notes.txt",
        ".hidden.png",
    ]
    for n in names:
        (tmp_path / n).write_bytes(b"")
    (tmp_path / "sub.png").mkdir()
    got = [p.name for p in list_images(tmp_path)]
    assert got == ["frame_1.jpg", "frame_2.png", "frame_2b.webp", "Frame_3.JPG", "frame_10.png", "x.TIFF"]
    assert list_images(tmp_path / "frame_2.png") == [tmp_path / "frame_2.png"]
    with pytest.raises(InputError):
        list_images(tmp_path / "notes.txt")
    with pytest.raises(InputError):
        list_images(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="empty"):
        list_images(empty)


def _write_video(path, n=6, size=(48, 32)):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, size)
    if not writer.isOpened():
        return False
    for i in range(n):
        frame = np.zeros((size[1], size[0], 3), np.uint8)
        frame[..., 2] = 40 * i  # red channel (BGR order) encodes the frame index
        frame[..., 0] = 200  # constant blue
        writer.write(frame)
    writer.release()
    return path.exists() and path.stat().st_size > 0


def test_read_video_frames(tmp_path):
    path = tmp_path / "clip.mp4"
    if not _write_video(path):
        pytest.skip("OpenCV cannot write mp4v here")
    frames = read_video_frames(path)
    assert len(frames) == 6
    assert frames[0].shape == (32, 48, 3) and frames[0].dtype == np.uint8
    reds = [f[..., 0].mean() for f in frames]
    assert all(abs(r - 40 * i) < 12 for i, r in enumerate(reds))
    assert all(abs(f[..., 2].mean() - 200) < 12 for f in frames)  # RGB order
    picked = read_video_frames(path, stride=2)
    assert len(picked) == 3 and abs(picked[1][..., 0].mean() - 80) < 12
    assert len(read_video_frames(path, max_frames=2)) == 2
    picked = read_video_frames(path, max_frames=2, stride=3)
    assert len(picked) == 2 and abs(picked[1][..., 0].mean() - 120) < 12


def test_read_video_errors(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(InputError, match="broken.mp4"):
        read_video_frames(bad)
    with pytest.raises(InputError, match="absent.mp4"):
        read_video_frames(tmp_path / "absent.mp4")
    with pytest.raises(InputError):
        read_video_frames(bad, stride=0)
