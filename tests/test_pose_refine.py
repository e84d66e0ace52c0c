"""Test-time target-pose refinement (`da3_splat.pose_refine`) and `da3-splat eval --pose-free-tto-steps`."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from da3_splat.build import headfree_gaussians
from da3_splat.data.synthetic import SyntheticConfig, make_synthetic, render_scene
from da3_splat.eval_protocol import nearest_context_start
from da3_splat.geometry import so3_exp
from da3_splat.image_metrics import psnr
from da3_splat.pose_refine import PoseRefineSettings, apply_pose_delta, pose_change, refine_target_poses
from da3_splat.rendering import render

H, W, TARGET = 48, 80, 2


@pytest.fixture(autouse=True)
def one_thread():
    """The renderer's many small ops run far faster on one thread when the cores are shared (CI, other jobs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def scene():
    """A synthetic frame and Gaussians that reproduce it at its GT pose: one per pixel of its exact depth, small
    (0.1 of the pixel footprint), so that the rasteriser's blur does not pull the photometric optimum off the GT
    by a fraction of a pixel as the default 0.45 does."""
    s = render_scene(SyntheticConfig(frames=4, height=H, width=W, antialias=False), seed=3)
    image = torch.from_numpy(s.images[TARGET]).float() / 255
    w2c, K = torch.from_numpy(s.w2c[[TARGET]]).float(), torch.from_numpy(s.K[[TARGET]]).float()
    g = headfree_gaussians(torch.from_numpy(s.depth[[TARGET]]), image[None], w2c, K, scale_factor=0.1)
    return g, w2c, K, image.permute(2, 0, 1)[None]


def _psnr(g, w2c, K, image) -> float:
    with torch.no_grad():
        rgb = render(g, w2c, K, W, H, mode="RGB", background=torch.zeros(3)).colors.permute(0, 3, 1, 2)
    return float(psnr(rgb.clamp(0, 1), image).mean())


def test_so3_exp_is_the_matrix_exponential_with_finite_gradients_at_zero():
    omega = torch.tensor([[0.3, -0.2, 0.5], [1e-5, 0.0, -2e-5], [0.0, 0.0, 0.0]], dtype=torch.float64)
    k = torch.zeros(3, 3, 3, dtype=torch.float64)
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -omega[:, 2], omega[:, 1], -omega[:, 0]
    torch.testing.assert_close(so3_exp(omega), torch.linalg.matrix_exp(k - k.transpose(1, 2)))
    zero = torch.zeros(3, requires_grad=True)
    so3_exp(zero)[0, 1].backward()
    assert torch.isfinite(zero.grad).all() and zero.grad[2] == -1  # d R01 / d omega_z = -1 at the identity


def test_the_camera_gets_gradients_through_the_cpu_renderer(scene):
    g, w2c, K, image = scene
    delta = torch.zeros(1, 6, requires_grad=True)
    rgb = render(g, apply_pose_delta(w2c, delta), K, W, H, mode="RGB").colors
    ((rgb.permute(0, 3, 1, 2) - image) ** 2).mean().backward()
    assert torch.isfinite(delta.grad).all() and (delta.grad.abs() > 0).all()


def test_a_perturbed_pose_is_recovered(scene):
    g, gt, K, image = scene
    axis = torch.tensor([1.0, -2.0, 1.5]) / math.sqrt(7.25)
    delta = torch.cat([math.radians(3.0) * axis, torch.tensor([0.05, -0.03, 0.04])])[None]  # 3 deg, 7 cm
    start = apply_pose_delta(gt, delta)
    rot0, trans0 = pose_change(start, gt)
    settings = PoseRefineSettings(steps=100, render_scale=1.0)
    refined, info = refine_target_poses(g, start, K, image, settings)
    rot, trans = pose_change(refined, gt)
    assert float(rot) < float(rot0) / 3 and float(trans) < float(trans0) / 3, (rot, trans)
    assert _psnr(g, refined, K, image) > _psnr(g, start, K, image) + 10
    assert info.loss_after[0] < info.loss_before[0] / 10 and 0 < info.steps <= 100 and info.depth_unit > 0
    moved_rot, moved_trans = pose_change(refined, start)
    assert info.rotation_deg == pytest.approx(moved_rot.tolist()) and info.translation == pytest.approx(
        moved_trans.tolist()
    )


def test_at_the_gt_pose_the_camera_barely_moves(scene):
    g, gt, K, image = scene
    refined, info = refine_target_poses(g, gt, K, image, PoseRefineSettings(steps=25, render_scale=1.0))
    rot, trans = pose_change(refined, gt)
    assert float(rot) < 0.3 and float(trans) < 0.01, (rot, trans)  # 0.3 deg is ~0.3 px here; metres
    assert info.loss_after[0] <= info.loss_before[0]
    assert refined.shape == (1, 4, 4) and refined.dtype == gt.dtype


def test_refinement_at_half_resolution():
    """Intrinsics scaled with the images: half resolution recovers most of the error. Not all of it: pixel-aligned
    splats rendered at half their resolution composite (the front one of each 2x2 wins) where the area-filtered
    target averages, which puts the optimum ~1 degree off here; a wrong K would leave it pixels away."""
    s = render_scene(SyntheticConfig(frames=4, height=2 * H, width=2 * W, antialias=False), seed=3)
    image = torch.from_numpy(s.images[TARGET]).float() / 255
    gt, K = torch.from_numpy(s.w2c[[TARGET]]).float(), torch.from_numpy(s.K[[TARGET]]).float()
    g = headfree_gaussians(torch.from_numpy(s.depth[[TARGET]]), image[None], gt, K, scale_factor=0.1)
    image = image.permute(2, 0, 1)[None]
    start = apply_pose_delta(gt, torch.tensor([[0.03, -0.03, 0.02, 0.05, -0.03, 0.04]]))  # 2.7 deg, 7 cm
    refined, _ = refine_target_poses(g, start, K, image, PoseRefineSettings(steps=60, render_scale=0.5))
    (rot0, rot) = (float(pose_change(p, gt)[0]) for p in (start, refined))
    assert rot < rot0 / 2, (rot0, rot)

    def full_res_psnr(w2c):
        with torch.no_grad():
            rgb = render(g, w2c, K, 2 * W, 2 * H, mode="RGB", background=torch.zeros(3)).colors.permute(0, 3, 1, 2)
        return float(psnr(rgb.clamp(0, 1), image).mean())

    assert full_res_psnr(refined) > full_res_psnr(start) + 5


def test_no_steps_returns_the_start_and_bad_settings_are_input_errors(scene):
    g, gt, K, image = scene
    refined, info = refine_target_poses(g, gt, K, image, PoseRefineSettings(steps=0))
    assert torch.equal(refined, gt) and info.steps == 0 and info.loss_after == info.loss_before
    for bad in (dict(steps=-1), dict(lr=0.0), dict(render_scale=1.5)):
        with pytest.raises(ValueError, match="pose refinement"):
            PoseRefineSettings(**bad)


def test_nearest_context_start():
    def at(x):
        w2c = torch.eye(4)
        w2c[0, 3] = -x  # camera centre at (x, 0, 0)
        return w2c

    gt_ctx = torch.stack([at(0.0), at(1.0), at(2.0)])[None]
    pred_ctx = gt_ctx.clone()
    pred_ctx[..., 1, 3] = 0.5  # distinguishable from the GT ones
    start = nearest_context_start(torch.stack([at(1.8), at(0.2)])[None], gt_ctx, pred_ctx)
    assert torch.equal(start[0], pred_ctx[0, [2, 0]])


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("tto")
    make_synthetic(root, 1, SyntheticConfig(frames=17, height=48, width=84, antialias=False), seed=5, workers=1)
    return root


def run_eval(*args, cwd):
    cmd = [sys.executable, "-m", "da3_splat.cli", "eval", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


@pytest.mark.parametrize("init", ["gt", "nearest-context"])
def test_cli_reports_raw_and_refined_rows(scenes, tmp_path, init):
    out = tmp_path / "out"
    size = ["--height", 42, "--width", 70, "--context-views", 2, "--device", "cpu", "--modes", "pose-free"]
    res = run_eval(scenes, "-o", out, *size, "--pose-free-tto-steps", 5, "--pose-free-tto-init", init, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    m = json.loads(out.joinpath("metrics.json").read_text())
    assert m["pose_free_tto"] == {"steps": 5, "lr": 5e-3, "scale": 0.5, "init": init}
    results = m["results"]["pose-free"]
    for method in ("nvs-head", "head-free"):
        raw, tto = results[method], results[f"{method}+tto"]
        assert 0 < raw["psnr"] < 60 and 0 < tto["psnr"] < 60 and tto["gaussians"] == raw["gaussians"]
        assert (
            "tto" not in raw and 0 < tto["tto"]["steps"] <= 5 and tto["tto"]["loss_after"] <= tto["tto"]["loss_before"]
        )
        assert tto["seconds_per_scene"] > tto["tto"]["seconds"] > 0
    (entry,) = m["per_scene"].values()
    info = entry["pose-free"]["nvs-head+tto"]["tto"]
    assert info["init"] == init and len(info["rotation_deg"]) == len(entry["targets"]) == 3
    assert "nvs-head+tto" in res.stderr and "TTO" in res.stderr


@pytest.mark.parametrize("flag, value", [("--pose-free-tto-steps", "-1"), ("--pose-free-tto-scale", "0")])
def test_bad_tto_flags_are_one_error_line(tmp_path, flag, value):
    res = run_eval(tmp_path, "-o", tmp_path / "o", flag, value, "--device", "cpu", cwd=tmp_path)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: --pose-free-tto-steps must be")
