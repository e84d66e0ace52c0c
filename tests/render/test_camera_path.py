"""Camera paths (interpolation through the inputs, orbits), rendering them, and writing frames, video, contact sheet."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from da3_splat.gaussians import Gaussians
from da3_splat.rendering import api, camera_path
from da3_splat.rendering.camera_path import (
    find_ffmpeg,
    fit_size,
    interpolate_cameras,
    look_at_point,
    orbit_cameras,
    preview_grid,
    reachable,
    render_path,
    resize_intrinsics,
    scene_center,
    to_uint8,
    write_frames,
    write_video,
)
from da3_splat.rendering.cpu import project as cpu_project
from da3_splat.sh import RGB2SH

W, H = 40, 30


def look_at_w2c(eye, target, up=(0.0, -1.0, 0.0)) -> torch.Tensor:
    """OpenCV w2c at ``eye`` looking at ``target``; ``up`` is the world up (here -y, as OpenCV's y points down)."""
    eye, target, up = (torch.tensor(v, dtype=torch.float64) for v in (eye, target, up))
    z = (target - eye) / (target - eye).norm()
    y = -up + (up @ z) * z
    y = y / y.norm()
    x = torch.linalg.cross(y, z)
    R = torch.stack([x, y, z])  # rows: camera axes in world
    w2c = torch.eye(4, dtype=torch.float64)
    w2c[:3, :3], w2c[:3, 3] = R, -R @ eye
    return w2c.float()


def ring(n: int, radius=3.0, height=-0.5, span_deg=360.0, target=(0.0, 0.0, 0.0)) -> torch.Tensor:
    angles = [math.radians(span_deg) * i / n for i in range(n)]
    return torch.stack([look_at_w2c((radius * math.cos(a), height, radius * math.sin(a)), target) for a in angles])


def intrinsics(n: int, f: float = 30.0) -> torch.Tensor:
    return torch.tensor([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]]).repeat(n, 1, 1)


def project(w2c: torch.Tensor, K: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """(N, 3): pixel u, v and depth of world point p in each camera."""
    cam = w2c[:, :3, :3] @ p.to(w2c) + w2c[:, :3, 3]
    uvw = (K @ cam[..., None])[..., 0]
    return torch.cat([uvw[:, :2] / uvw[:, 2:], cam[:, 2:]], dim=-1)


def assert_rotations(w2c: torch.Tensor):
    R = w2c[:, :3, :3].double()
    torch.testing.assert_close(R @ R.mT, torch.eye(3, dtype=torch.float64).expand_as(R), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(len(R), dtype=torch.float64), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------------
# Interpolation


def test_interpolation_passes_through_the_keys_smoothly():
    keys = ring(4, span_deg=120)
    K = intrinsics(4)
    K[2, 0, 0] = K[2, 1, 1] = 50.0
    w2c, Ks = interpolate_cameras(keys, K, steps_per_segment=5)
    assert w2c.shape == (16, 4, 4) and Ks.shape == (16, 3, 3)
    torch.testing.assert_close(w2c[::5], keys, atol=1e-5, rtol=0)
    torch.testing.assert_close(Ks[::5], K)
    assert float(Ks[7, 0, 0]) == pytest.approx(30 + 0.4 * 20)  # lerped between keys 1 and 2
    assert_rotations(w2c)
    # Smooth: no camera jumps further than twice the mean step.
    c = torch.linalg.inv(w2c)[:, :3, 3]
    steps = (c[1:] - c[:-1]).norm(dim=-1)
    assert steps.max() < 2 * steps.mean()


def test_interpolating_one_camera_returns_it():
    w2c, _ = interpolate_cameras(ring(1), intrinsics(1), 7)
    torch.testing.assert_close(w2c, ring(1))
    with pytest.raises(ValueError):
        interpolate_cameras(ring(2), intrinsics(2), 0)


# --------------------------------------------------------------------------------------------------
# Orbits


def test_orbit_keeps_the_look_at_point_in_view():
    keys = ring(6, radius=3.0, height=-0.5, target=(0.2, 0.1, -0.3))
    K = intrinsics(6)
    center = look_at_point(keys)
    torch.testing.assert_close(center, torch.tensor([0.2, 0.1, -0.3]), atol=1e-4, rtol=0)
    w2c, Ks = orbit_cameras(keys, K, n_frames=24)
    assert w2c.shape == (24, 4, 4) and Ks.shape == (24, 3, 3)
    assert_rotations(w2c)
    uvz = project(w2c, Ks, center)
    assert (uvz[:, 2] > 0).all()
    torch.testing.assert_close(uvz[:, :2], torch.tensor([W / 2, H / 2]).expand(24, 2), atol=1e-3, rtol=0)
    # Same distance and height as the inputs; the images stay upright (camera up = world up, -y).
    eyes = torch.linalg.inv(w2c)[:, :3, 3]
    dist = (eyes - center).norm(dim=-1)
    assert dist.max() - dist.min() < 1e-4 and abs(float(dist.mean()) - 3.0) < 0.2  # a circle, at the inputs' range
    assert (w2c[:, 1, 1] > 0.9).all()  # camera y (down) ~ world +y (down)
    # A surrounding capture gets a full circle; radius_scale widens it.
    az = torch.atan2(eyes[:, 2] - center[2], eyes[:, 0] - center[0])
    assert camera_path._circular_span(az) > math.radians(330)
    wide, _ = orbit_cameras(ring(6, radius=3.0, height=0.0), K, 8, radius_scale=2.0)
    wide_eyes = torch.linalg.inv(wide)[:, :3, 3]
    torch.testing.assert_close(wide_eyes[:, [0, 2]].norm(dim=-1), torch.full((8,), 6.0), atol=1e-4, rtol=0)
    torch.testing.assert_close(wide_eyes[:, 1], torch.zeros(8), atol=1e-4, rtol=0)


def test_forward_facing_capture_swings_around_the_points():
    keys = torch.stack([look_at_w2c((x, 0.0, 0.0), (x, 0.0, 5.0)) for x in (-0.2, 0.0, 0.2)])  # parallel axes
    assert look_at_point(keys) is None
    points = torch.randn(500, 3, generator=torch.Generator().manual_seed(0)) * 0.3 + torch.tensor([0.0, 0.0, 4.0])
    center = scene_center(keys, points)
    torch.testing.assert_close(center, points.median(0).values, atol=1e-6, rtol=0)
    w2c, K = orbit_cameras(keys, intrinsics(3), 16, center=center)
    uvz = project(w2c, K, center)
    assert (uvz[:, 2] > 0).all() and ((uvz[:, 0] - W / 2).abs() < 1e-3).all()
    # A swing (not a full circle): every camera stays on the inputs' side of the scene.
    eyes = torch.linalg.inv(w2c)[:, :3, 3]
    assert (eyes[:, 2] < center[2]).all()
    # Without points: ahead of the cameras.
    assert float(scene_center(keys)[2]) > 0.5


# --------------------------------------------------------------------------------------------------
# Rendering and writing


def _scene() -> Gaussians:
    """A small coloured blob cloud at the origin."""
    n = 300
    g = torch.Generator().manual_seed(1)
    return Gaussians(
        means=torch.randn(n, 3, generator=g) * 0.4,
        quats=torch.tensor([1.0, 0, 0, 0]).repeat(n, 1),
        scales=torch.full((n, 3), 0.08),
        opacities=torch.full((n,), 0.9),
        sh=RGB2SH(torch.rand(n, 1, 3, generator=g)),
    )


def test_render_path_frames_and_progress():
    w2c, K = orbit_cameras(ring(4), intrinsics(4), 5)
    done = []
    frames = render_path(_scene(), w2c, K, W, H, progress=done.append, batch_size=2)
    assert frames.shape == (5, H, W, 3) and frames.dtype == np.uint8 and done == [2, 4, 5]  # after each batch
    assert (frames[:, H // 2, W // 2] > 0).any(axis=-1).all()  # the blob is in the middle of every frame
    assert (frames[:, 0, 0] == 0).all()  # black background in the corner
    done.clear()
    np.testing.assert_array_equal(render_path(_scene(), w2c, K, W, H, progress=done.append), frames)
    assert done == [1, 2, 3, 4, 5]  # on CPU, one camera at a time by default


def _spread_scene() -> Gaussians:
    """Gaussians all around the cameras: in view, off screen, behind, big ones reaching in from outside, faint."""
    n = 2000
    gen = torch.Generator().manual_seed(2)
    scales = torch.exp(torch.randn(n, 3, generator=gen) * 1.2 - 3.0)
    return Gaussians(
        means=torch.randn(n, 3, generator=gen) * 4.0,
        quats=torch.randn(n, 4, generator=gen),
        scales=scales,
        opacities=torch.rand(n, generator=gen) ** 2,
        sh=torch.randn(n, 4, 3, generator=gen) * 0.5,
    )


def test_reachable_keeps_every_drawn_gaussian():
    g = _spread_scene()
    w2c, K = ring(6, radius=3.0), intrinsics(6)
    K[3, :2, :2] *= 3.0  # a narrow view
    keep = reachable(g, w2c, K, W, H)
    radii = cpu_project(g.means, g.quats, g.scales, w2c, K, W, H)[0]
    drawn = (radii > 0) & (g.opacities >= 1 / 255)
    assert keep.shape == drawn.shape == (6, len(g.means))
    assert not (drawn & ~keep).any()  # never drops what the renderer draws
    assert keep.sum() < 0.7 * keep.numel() and keep.sum() < 1.5 * drawn.sum()  # and culls most of the rest


def test_render_path_batches_and_culling_change_nothing():
    g = _spread_scene()
    w2c, K = ring(5, radius=3.0), intrinsics(5)
    bg = torch.zeros(3)
    one_by_one = np.stack(
        [
            to_uint8(api.render(g, w2c[i : i + 1], K[i : i + 1], W, H, background=bg, mode="RGB").colors[0])
            for i in range(5)
        ]
    )
    for batch in (None, 1, 3):  # the same images, up to a last-bit rounding of a batched projection
        diff = np.abs(render_path(g, w2c, K, W, H, batch_size=batch).astype(int) - one_by_one)
        assert diff.max() <= 1 and (diff == 0).mean() > 0.999


def test_a_swinging_orbit_renders_each_camera_once(monkeypatch):
    w2c, K = orbit_cameras(ring(3, span_deg=60), intrinsics(3), 8)  # a to-and-fro swing: back along its way
    assert [torch.equal(w2c[i], w2c[j]) for i, j in ((0, 4), (1, 3), (5, 7), (1, 5))] == [True, True, True, False]
    rendered = []
    real = api.render
    monkeypatch.setattr(api, "render", lambda g, v, *a, **kw: rendered.append(len(v)) or real(g, v, *a, **kw))
    done = []
    frames = render_path(_scene(), w2c, K, W, H, progress=done.append, batch_size=2)
    assert sum(rendered) == 5 and done == [4, 7, 8]  # the cameras of frames 0, 1, 2, 5, 6; progress counts frames
    np.testing.assert_array_equal(frames[[4, 3, 7]], frames[[0, 1, 5]])
    assert (frames[1] != frames[5]).any()


def test_fit_size_and_resized_intrinsics():
    assert fit_size(224, 126, 160) == (160, 90) and fit_size(126, 224, 160) == (90, 160)
    assert fit_size(84, 56, 160) == (84, 56) and fit_size(224, 126, 0) == fit_size(224, 126, None) == (224, 126)
    K = intrinsics(2)
    K2 = resize_intrinsics(K, (W, H), (20, 10))
    p = torch.tensor([0.3, -0.2, 2.0])
    uv, uv2 = project(ring(2), K, p)[:, :2], project(ring(2), K2, p)[:, :2]
    torch.testing.assert_close(uv2, uv * torch.tensor([20 / W, 10 / H]))  # the same point, scaled image
    assert torch.equal(K, intrinsics(2))  # not modified in place


def test_write_frames(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (3, 5, 7, 3), dtype=np.uint8)
    paths = write_frames(tmp_path / "path", frames)
    assert [p.name for p in paths] == ["frame_00001.png", "frame_00002.png", "frame_00003.png"]
    for p, f in zip(paths, frames):
        np.testing.assert_array_equal(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB), f)


@pytest.mark.skipif(find_ffmpeg() is None, reason="no ffmpeg (imageio-ffmpeg or on PATH)")
def test_write_video_encodes_h264_with_even_size(tmp_path):
    frames = np.zeros((6, 31, 45, 3), np.uint8)
    frames[:, :, :, 0] = np.linspace(0, 255, 6, dtype=np.uint8)[:, None, None]  # red ramps up over time
    res = write_video(tmp_path / "v.mp4", frames, fps=12)
    assert res.skipped is None and res.path == tmp_path / "v.mp4" and res.path.stat().st_size > 0
    assert not list(tmp_path.glob("*.tmp"))
    cap = cv2.VideoCapture(str(res.path))
    got = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        got.append(f)
    cap.release()
    if not got:
        pytest.skip("OpenCV cannot decode H.264 here; the file was written")
    assert len(got) == 6 and got[0].shape == (32, 46, 3)  # padded to even dimensions
    assert got[-1][..., 2].mean() > got[0][..., 2].mean() + 100  # BGR: red grows


def test_write_video_without_ffmpeg_skips_with_a_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(camera_path, "find_ffmpeg", lambda: None)
    res = write_video(tmp_path / "v.mp4", np.zeros((2, 4, 4, 3), np.uint8))
    assert res.path is None and "ffmpeg" in res.skipped
    assert not (tmp_path / "v.mp4").exists()


def test_write_video_reports_an_encoder_failure(tmp_path, monkeypatch):
    monkeypatch.setattr(camera_path, "find_ffmpeg", lambda: "false")  # runs, exits 1
    res = write_video(tmp_path / "v.mp4", np.zeros((2, 4, 4, 3), np.uint8))
    assert res.path is None and res.skipped.startswith("ffmpeg failed")
    assert not list(tmp_path.iterdir())


def test_preview_grid_layout():
    frames = np.stack([np.full((4, 5, 3), 10 * (i + 1), np.uint8) for i in range(5)])
    sheet = preview_grid(frames, cols=2, gap=1)
    assert sheet.shape == (3 * 4 + 2, 2 * 5 + 1, 3)
    assert (sheet[:4, :5] == 10).all() and (sheet[:4, 6:] == 20).all() and (sheet[10:, :5] == 50).all()
    assert (sheet[4] == 255).all() and (sheet[10:, 6:] == 255).all()  # gap and the empty cell
    assert preview_grid(frames[:1], cols=4).shape == (4, 5, 3)
