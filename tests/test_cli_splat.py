"""`da3-splat splat` end to end, as a subprocess, with a random da3-small (no GS head: head-free Gaussians):
outputs, the Gaussian budget, the path's size, --overwrite, and one-line errors."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from da3_splat.commands.splat import SplatConfig, fit_to_inputs, path_cameras
from da3_splat.data.transforms import read_transforms
from da3_splat.ply import read_ply
from da3_splat.rendering.camera_path import find_ffmpeg, fit_size
from tests.cli_helpers import assert_user_error, images, root, run_cli  # noqa: F401 (images, root: fixtures)

MODEL = "random:da3-small"
BUDGET = 3000
COMMON = ("--model", MODEL, "--process-res", "84")
VIDEO_SIZE = 40  # the path frames' longest side, below the views' 84


@pytest.fixture(scope="module")
def first_run(root, images):
    out = root / "out"
    # A budget well below the 3 x 56 x 84 pixels, so neighbours get merged.
    args = ("--max-gaussians", BUDGET, "--path-frames", "3", "--fps", "8", "--video-size", VIDEO_SIZE)
    res = run_cli("splat", images, "-o", out, *COMMON, *args)
    assert res.returncode == 0, res.stderr
    return out, res


def test_outputs(first_run):
    out, res = first_run
    assert "no GS head in random:da3-small: head-free Gaussians (one per pixel from depth)" in res.stdout
    assert "splat.ply" in res.stdout and "Traceback" not in res.stderr
    info = json.loads((out / "splat.json").read_text())
    assert info["source"] == "head-free" and info["views"] == ["im0", "im1", "im2"]
    g = read_ply(out / "splat.ply")
    assert 0 < g.num_gaussians == info["num_gaussians"] <= BUDGET and g.sh_degree == 0
    H, W = info["processed_size"]
    preview = cv2.imread(str(out / "preview.png"))
    assert preview.shape[0] >= H and preview.shape[1] >= 2 * W  # [input | render] pairs
    files, _, _, sizes = read_transforms(out / "transforms.json")
    assert files == [f"images/{n}.png" for n in info["views"]] and (sizes == [H, W]).all()
    for f in files:
        assert cv2.imread(str(out / f)).shape == (H, W, 3)
    frames = sorted((out / "path").glob("frame_*.png"))
    w, h = fit_size(W, H, VIDEO_SIZE)
    assert w == VIDEO_SIZE < W and h < H and info["path_size"] == [h, w]
    assert len(frames) == info["path_frames"] == 3 and cv2.imread(str(frames[0])).shape == (h, w, 3)
    assert (out / "path.mp4").is_file() == (find_ffmpeg() is not None) == (info["video"] == "path.mp4")
    assert len(info["psnr_input_views_db"]) == len(info["ssim_input_views"]) == 3
    assert all(-1 <= v <= 1 for v in info["ssim_input_views"])
    assert "Fit to the inputs (the Gaussians rendered at the 3 input cameras vs the input photos" in res.stdout
    assert "SSIM" in res.stdout and "--video-size 0 for full size" in res.stdout
    assert {"write_ply", "preview", "path_render", "video_encode"} <= set(info["timings_s"])
    assert not list(out.rglob("*.tmp"))


def test_refuses_to_overwrite_then_replaces_stale_outputs(root, images, first_run):
    out, _ = first_run
    before = (out / "splat.ply").read_bytes()
    assert_user_error(run_cli("splat", images, "-o", out, *COMMON), "--overwrite")
    assert (out / "splat.ply").read_bytes() == before
    (out / "notes.txt").write_text("mine")
    res = run_cli("splat", images, "-o", out, *COMMON, "--max-gaussians", BUDGET, "--overwrite", "--no-video")
    assert res.returncode == 0, res.stderr
    info = json.loads((out / "splat.json").read_text())
    assert info["num_gaussians"] == read_ply(out / "splat.ply").num_gaussians <= BUDGET
    assert info["path"] is None and info["path_frames"] == 0
    assert not (out / "path.mp4").exists() and not list((out / "path").glob("*.png"))  # no stale path
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("missing_folder",), "input not found"),
        (("IMAGES", "--max-gaussians", "0"), "--max-gaussians must be at least 1"),
        (("IMAGES", "--path-frames", "0"), "--path-frames must be at least 1"),
        (("IMAGES", "--video-size", "-1"), "--video-size must be 0 (full size) or positive"),
        (("IMAGES", "--model", "random:nope"), "unknown config 'nope'"),
    ],
)
def test_bad_input_is_one_error_line(root, images, args, match):
    args = [str(images) if a == "IMAGES" else str(root / a) if a == "missing_folder" else a for a in args]
    out = root / f"bad_{match[:6].strip('-').replace(' ', '_')}"
    extra = [] if "--model" in args else ["--model", MODEL]
    assert_user_error(run_cli("splat", *args, "-o", out, *extra), match)


def test_path_kinds():
    import torch

    from tests.render.test_camera_path import intrinsics, ring

    w2c, K = ring(3, span_deg=90).numpy()[:, :3], intrinsics(3).numpy()
    cams, Ks = path_cameras("input", w2c, K, 50)
    assert len(cams) == 3 and cams.shape[1:] == (4, 4)
    np.testing.assert_allclose(cams[:, :3].numpy(), w2c, atol=1e-6)
    cams, Ks = path_cameras("interpolate", w2c, K, 9)  # 4 steps per segment: 2 * 4 + 1
    assert len(cams) == len(Ks) == 9
    np.testing.assert_allclose(cams[::4, :3].numpy(), w2c, atol=1e-5)
    cams, Ks = path_cameras("orbit", w2c, K, 7, points=torch.zeros(10, 3))
    assert len(cams) == len(Ks) == 7
    assert len(path_cameras("interpolate", w2c[:1], K[:1], 9)[0]) == 1  # one view: nothing to interpolate


def test_default_path_is_a_preview():
    """The default path costs a preview's time, not the scene's (issue 19): few frames, capped size."""
    cfg = SplatConfig(input="x", output="y")
    assert cfg.path_frames <= 30 and 0 < cfg.video_size <= 256


def test_fit_to_inputs_psnr_and_ssim():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (2, 20, 24, 3), dtype=np.uint8)
    b = a.copy()
    b[1] = 255 - b[1]
    inner = np.zeros((20, 24), bool)
    inner[2:18, 3:21] = True
    psnr, ssim = fit_to_inputs(a, b, inner)
    assert psnr[0] == pytest.approx(100.0) and ssim[0] == pytest.approx(1.0)
    assert psnr[1] < 10 and ssim[1] < 0.1
    b[0, 0, 0] = 255 - b[0, 0, 0]  # outside the box: not counted
    assert fit_to_inputs(a, b, inner)[0][0] == pytest.approx(100.0)
    small = np.ones((6, 8), bool)  # smaller than the SSIM window: NaN, PSNR still measured
    psnr, ssim = fit_to_inputs(a[:, :6, :8], b[:, :6, :8], small)
    assert np.isnan(ssim).all() and psnr[0] < 100
