"""Tests for da3_splat.train.losses: zero at ground truth, ray/unprojection consistency, gradients, empty masks."""

from __future__ import annotations

import math

import pytest
import torch

from da3_splat.geometry import (
    as_homogeneous,
    cameras_to_pose_encoding,
    depth_to_world_points,
    points_from_rays,
    quat_xyzw_to_matrix,
    rigid_inverse,
)
from da3_splat.train.losses import (
    GeometryLossWeights,
    camera_loss,
    depth_consistency_loss,
    depth_loss,
    geometry_losses,
    gradient_loss,
    gt_rays,
    normalize_scene,
    photometric_loss,
    point_loss,
    pose_encoding,
    ray_loss,
    scale_intrinsics,
)

B, S, H, W = 1, 3, 28, 42
h, w = 8 * H // 14, 8 * W // 14  # the model's ray-map resolution


def _scene(dtype=torch.float64, seed: int = 0, centred: bool = True):
    """Random cameras looking roughly along +z, random positive depth, GT batch dict."""
    g = torch.Generator().manual_seed(seed)
    q = torch.cat([0.2 * torch.randn(B, S, 3, generator=g, dtype=dtype), torch.ones(B, S, 1, dtype=dtype)], -1)
    R = quat_xyzw_to_matrix(q)
    t = torch.randn(B, S, 3, 1, generator=g, dtype=dtype)
    w2c = as_homogeneous(torch.cat([R, t], -1))
    K = torch.zeros(B, S, 3, 3, dtype=dtype)
    K[..., 0, 0], K[..., 1, 1], K[..., 2, 2] = 35.0, 33.0, 1.0
    K[..., 0, 2], K[..., 1, 2] = (W / 2, H / 2) if centred else (W / 2 + 1.5, H / 2 - 2.0)
    depth = 1.0 + 4.0 * torch.rand(B, S, H, W, generator=g, dtype=dtype)
    return {"extrinsics": w2c, "intrinsics": K, "depth": depth}


def _perfect_output(batch):
    scene = normalize_scene(batch["extrinsics"], batch["depth"], batch["intrinsics"])
    return {
        "depth": scene.depth.clone(),
        "depth_conf": torch.ones_like(scene.depth),
        "ray": gt_rays(scene.w2c, batch["intrinsics"], H, W, h, w),
        "ray_conf": torch.ones(B, S, h, w, dtype=scene.depth.dtype),
        "extrinsics": scene.w2c[..., :3, :4].clone(),
        "intrinsics": batch["intrinsics"].clone(),
    }


# --------------------------------------------------------------------------------------------------
# Rays and scene normalisation


@pytest.mark.parametrize("centred", [True, False])
def test_gt_rays_match_unprojection_at_ray_pixel_centres(centred):
    # The ray map samples pixel centres: ray pixel (i, j) looks through input pixel ((j+.5)W/w, (i+.5)H/h).
    # Unprojecting an h x w depth map with K scaled to h x w and offset 0.5 uses exactly those points, so
    # centre + depth * direction must equal depth_to_world_points (planar depth, direction with unit z).
    batch = _scene(centred=centred)
    depth = 1.0 + torch.rand(B, S, h, w, dtype=torch.float64)
    ray = gt_rays(batch["extrinsics"], batch["intrinsics"], H, W, h, w)
    assert ray.shape == (B, S, h, w, 6)
    K_r = scale_intrinsics(batch["intrinsics"], H, W, h, w)
    expected = depth_to_world_points(depth, K_r, batch["extrinsics"], offset=0.5)
    torch.testing.assert_close(points_from_rays(depth, ray), expected, rtol=1e-10, atol=1e-10)


def test_gt_rays_layout():
    batch = _scene()
    w2c, K = batch["extrinsics"], batch["intrinsics"]
    ray = gt_rays(w2c, K, H, W, h, w)
    cam_dirs = torch.einsum("bsij,bshwj->bshwi", w2c[..., :3, :3], ray[..., :3])
    torch.testing.assert_close(cam_dirs[..., 2], torch.ones(B, S, h, w, dtype=torch.float64))
    centres = rigid_inverse(w2c)[..., :3, 3]
    torch.testing.assert_close(ray[..., 3:], centres[:, :, None, None, :].expand(B, S, h, w, 3))
    # At full resolution the rays are the +0.5 pixel-centre unprojection of the input grid.
    full = gt_rays(w2c, K, H, W, H, W)
    depth = torch.rand(B, S, H, W, dtype=torch.float64) + 1
    torch.testing.assert_close(points_from_rays(depth, full), depth_to_world_points(depth, K, w2c, offset=0.5))


def test_normalize_scene_frame_and_scale():
    batch = _scene()
    scene = normalize_scene(batch["extrinsics"], batch["depth"], batch["intrinsics"])
    torch.testing.assert_close(scene.w2c[:, 0], torch.eye(4, dtype=torch.float64).expand(B, 4, 4))
    pts = depth_to_world_points(scene.depth, batch["intrinsics"], scene.w2c)
    assert abs(float(pts.norm(dim=-1).mean()) - 1.0) < 1e-10


def test_normalize_scene_invariant_to_world_similarity():
    batch = _scene()
    angle = 0.7
    T = torch.eye(4, dtype=torch.float64)
    T[:3, :3] = torch.tensor([[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]])
    T[:3, 3] = torch.tensor([3.0, -1.0, 2.0])
    s = 7.5
    moved = batch["extrinsics"] @ torch.linalg.inv(T)  # world moved by T
    moved[..., :3, 3] *= s  # and scaled by s
    a = normalize_scene(batch["extrinsics"], batch["depth"], batch["intrinsics"])
    b = normalize_scene(moved, batch["depth"] * s, batch["intrinsics"])
    torch.testing.assert_close(a.w2c, b.w2c)
    torch.testing.assert_close(a.depth, b.depth)
    torch.testing.assert_close(b.scale / a.scale, torch.tensor([s], dtype=torch.float64))


def test_normalize_scene_uses_the_reference_view_frame():
    # For S >= 3 pose-free views DA3 predicts in the camera of the view it selects (out["reference_view"]), so the
    # GT must be expressed there; the same scene seen from view 0 differs by exactly that rigid change of frame.
    batch = _scene()
    ref = torch.tensor([2])
    scene = normalize_scene(batch["extrinsics"], batch["depth"], batch["intrinsics"], reference=ref)
    torch.testing.assert_close(scene.w2c[:, 2], torch.eye(4, dtype=torch.float64).expand(B, 4, 4))
    first = normalize_scene(batch["extrinsics"], batch["depth"], batch["intrinsics"])
    assert not torch.allclose(scene.w2c, first.w2c)
    # Relative poses do not depend on the frame; the scale is the mean point distance to the reference camera.
    rel = scene.w2c[:, 1] @ rigid_inverse(scene.w2c[:, 0])
    rel_first = first.w2c[:, 1] @ rigid_inverse(first.w2c[:, 0])
    torch.testing.assert_close(rel[..., :3, :3], rel_first[..., :3, :3])
    pts = depth_to_world_points(scene.depth, batch["intrinsics"], scene.w2c)
    assert abs(float(pts.norm(dim=-1).mean()) - 1.0) < 1e-10


def test_geometry_losses_follow_the_reference_view():
    # A perfect prediction in the reference view's frame scores zero camera loss only when the loss is told
    # which view that is; scored against view 0's frame it is penalised.
    batch = _scene()
    ref = torch.tensor([1])
    scene = normalize_scene(batch["extrinsics"], batch["depth"], batch["intrinsics"], reference=ref)
    out = _perfect_output(batch)
    out.update(
        depth=scene.depth.clone(),
        extrinsics=scene.w2c[..., :3, :4].clone(),
        ray=gt_rays(scene.w2c, batch["intrinsics"], H, W, h, w),
    )
    _, right = geometry_losses({**out, "reference_view": ref}, batch)
    _, wrong = geometry_losses(out, batch)
    assert float(right["camera"]) < 1e-6 and float(right["point"]) < 1e-6
    assert float(wrong["camera"]) > 0.1


def test_pose_encoding_matches_geometry_up_to_quaternion_sign():
    batch = _scene()
    w2c, K = batch["extrinsics"], batch["intrinsics"]
    ours = pose_encoding(w2c, K, H, W)
    ref = cameras_to_pose_encoding(rigid_inverse(w2c), K, H, W).double()
    sign = torch.sign((ours[..., 3:7] * ref[..., 3:7]).sum(-1, keepdim=True))
    ours = torch.cat([ours[..., :3], ours[..., 3:7] * sign, ours[..., 7:]], -1)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# Zero at ground truth, positive elsewhere


def test_all_geometry_losses_zero_at_ground_truth():
    batch = _scene()
    total, parts = geometry_losses(_perfect_output(batch), batch)
    assert set(parts) == {"depth", "gradient", "ray", "point", "camera", "total"}
    for name, value in parts.items():
        assert abs(float(value)) < 1e-9, (name, float(value))
    assert abs(float(total)) < 1e-9


def test_point_and_camera_loss_zero_with_gt_camera_unnormalised():
    batch = _scene(dtype=torch.float32, centred=False)
    w2c, K, depth = batch["extrinsics"], batch["intrinsics"], batch["depth"]
    ray = gt_rays(w2c, K, H, W, h, w)
    assert float(point_loss(depth, ray, depth, w2c, K)) < 1e-5
    assert float(camera_loss(w2c[..., :3, :4], K, w2c, K, H, W)) < 1e-5


def test_losses_grow_with_errors():
    batch = _scene()
    out = _perfect_output(batch)
    scene = normalize_scene(batch["extrinsics"], batch["depth"], batch["intrinsics"])
    noisy = out["depth"] * (1 + 0.1 * torch.randn_like(out["depth"]))
    assert float(depth_loss(noisy, out["depth_conf"], scene.depth, None)) > 1e-3
    assert float(gradient_loss(noisy, scene.depth, None)) > 1e-3
    assert float(point_loss(noisy, out["ray"], scene.depth, scene.w2c, batch["intrinsics"])) > 1e-3
    gt_ray = out["ray"].clone()
    assert float(ray_loss(out["ray"] + 0.05, out["ray_conf"], gt_ray)) == pytest.approx(6 * 0.05)
    K2 = batch["intrinsics"].clone()
    K2[..., 0, 0] *= 1.2
    assert float(camera_loss(out["extrinsics"], K2, scene.w2c, batch["intrinsics"], H, W)) > 1e-3


def test_depth_loss_confidence_term():
    d = torch.full((1, 1, 4, 4), 2.0)
    gt = torch.full((1, 1, 4, 4), 1.5)
    conf = torch.full((1, 1, 4, 4), 3.0)
    assert float(depth_loss(d, conf, gt, None, alpha=0.2)) == pytest.approx(3.0 * 0.5 - 0.2 * math.log(3.0))


def test_gradient_loss_ignores_constant_offset():
    batch = _scene()
    gt = batch["depth"]
    assert float(gradient_loss(gt + 0.7, gt, None, scales=3)) < 1e-12


def test_photometric_and_depth_consistency():
    img = torch.rand(2, 3, 24, 24)
    loss, parts = photometric_loss(img, img)
    assert float(loss) < 1e-6 and float(parts["ssim"]) == pytest.approx(1.0, abs=1e-5)
    loss_n, parts_n = photometric_loss((img + 0.1 * torch.randn_like(img)).clamp(0, 1), img, ssim_weight=0.2)
    assert float(loss_n) > float(parts_n["mse"]) > 0
    ref = 1 + torch.rand(1, 2, 8, 8)
    assert float(depth_consistency_loss(ref, ref)) < 1e-7
    # Scale-aware: a global factor is penalised, by |log 2|.
    assert float(depth_consistency_loss(2 * ref, ref)) == pytest.approx(math.log(2.0), rel=1e-5)
    bad_ref = ref.clone()
    bad_ref[..., :4] = 0.0  # no reference there
    pred = ref.clone()
    pred[..., :4] = 100.0
    assert float(depth_consistency_loss(pred, bad_ref)) < 1e-7


# --------------------------------------------------------------------------------------------------
# Gradients and empty masks


def _trainable_output(batch):
    out = _perfect_output(batch)
    g = torch.Generator().manual_seed(1)
    depth = out["depth"] * (1 + 0.05 * torch.randn(out["depth"].shape, generator=g, dtype=torch.float64))
    params = {
        "depth": depth.requires_grad_(),
        "depth_conf": (out["depth_conf"] + 0.5).requires_grad_(),
        "ray": (out["ray"] + 0.01).requires_grad_(),
        "ray_conf": (out["ray_conf"] + 0.5).requires_grad_(),
        # View 0 is exactly the identity: the quaternion path must not produce NaN gradients there.
        "quat": torch.tensor([[[0.0, 0, 0, 1], [0.1, 0, 0, 1], [0, 0.2, 0.1, 1]]], dtype=torch.float64),
        "K": (out["intrinsics"] * 1.05).requires_grad_(),
    }
    params["quat"].requires_grad_()
    R = quat_xyzw_to_matrix(params["quat"])
    w2c = torch.cat([R, out["extrinsics"][..., 3:]], -1)
    pred = {**out, **{k: params[k] for k in ("depth", "depth_conf", "ray", "ray_conf")}}
    pred["extrinsics"], pred["intrinsics"] = w2c, params["K"]
    return pred, params


def test_gradients_flow_to_every_output():
    batch = _scene()
    pred, params = _trainable_output(batch)
    total, parts = geometry_losses(pred, batch)
    total.backward()
    for name, p in params.items():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert float(total) > 0 and all(torch.isfinite(v) for v in parts.values())


def test_empty_masks_give_finite_zero_losses_and_gradients():
    batch = _scene()
    batch["depth"][:] = float("nan")  # invalid GT is often NaN or 0
    batch["valid"] = torch.zeros(B, S, H, W, dtype=torch.bool)
    pred, params = _trainable_output(_scene())
    total, parts = geometry_losses(pred, batch)
    total.backward()
    assert torch.isfinite(total)
    for name in ("depth", "gradient", "point"):  # the terms that need GT depth have nothing to measure
        assert float(parts[name]) == 0.0, name
    for name, p in params.items():
        assert torch.isfinite(p.grad).all(), name
    depth_only = GeometryLossWeights(ray=0.0, camera=0.0)
    assert float(geometry_losses(pred, batch, depth_only)[0]) == 0.0
    empty = torch.zeros(1, 2, 8, 8, dtype=torch.bool)
    d = torch.rand(1, 2, 8, 8, requires_grad=True)
    loss = depth_consistency_loss(d, torch.rand(1, 2, 8, 8), empty) + ray_loss(
        torch.rand(1, 2, 8, 8, 6), torch.ones(1, 2, 8, 8), torch.full((1, 2, 8, 8, 6), float("nan"))
    )
    loss.backward()
    assert float(loss) == 0.0 and torch.isfinite(d.grad).all()


def test_geometry_losses_run_in_fp32_under_autocast():
    batch = {k: v.float() for k, v in _scene().items()}
    out = {k: v.to(torch.bfloat16) for k, v in _perfect_output(_scene()).items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, parts = geometry_losses(out, batch)
    assert total.dtype == torch.float32 and float(parts["point"]) < 0.05  # only bf16 rounding of the inputs


def test_reference_first_moves_one_view_and_keeps_the_rest_in_order():
    from da3_splat.nvs import SceneBatch, reference_first

    S = 4
    ids = torch.arange(S, dtype=torch.float32)
    batch = SceneBatch(
        context_images=ids[None, :, None, None, None].expand(1, S, 3, 2, 2),
        context_w2c=torch.eye(4).repeat(1, S, 1, 1),
        context_K=ids[None, :, None, None].expand(1, S, 3, 3),
        target_images=torch.zeros(1, 1, 3, 2, 2),
        target_w2c=torch.eye(4)[None, None],
        target_K=torch.eye(3)[None, None],
        scale=torch.ones(1),
        context_depth=ids[None, :, None, None].expand(1, S, 2, 2),
    )
    moved = reference_first(batch, 2)
    assert moved.context_images[0, :, 0, 0, 0].tolist() == [2, 0, 1, 3]
    assert moved.context_K[0, :, 0, 0].tolist() == [2, 0, 1, 3]
    assert moved.context_depth[0, :, 0, 0].tolist() == [2, 0, 1, 3]
    assert moved.target_images is batch.target_images
