"""A stand-in for DA3 in streaming tests and benchmarks (tests/test_streaming*.py, benchmarks/loop_closure.py):
``infer`` on frame indices returns a synthetic scene's ground truth, each call in its own random similarity frame,
with optional noise, corruptions and a drift inside every call; plus the errors of a merged prediction against
the scene."""

from __future__ import annotations

import numpy as np
import torch

from da3_splat.build import headfree_gaussians
from da3_splat.geometry import (
    apply_sim3_to_w2c,
    as_homogeneous,
    camera_centers,
    depth_to_world_points,
    points_from_rays,
    quat_xyzw_to_matrix,
    rigid_inverse,
)
from da3_splat.geometry import umeyama as fit_umeyama
from da3_splat.model.inference import Prediction


def f64(a) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a, np.float64))


def random_rotation(rng: np.random.Generator, max_deg: float | None = None) -> torch.Tensor:
    if max_deg is None:
        return quat_xyzw_to_matrix(f64(rng.normal(size=4)))
    axis = rng.normal(size=3)
    half = np.radians(max_deg) * rng.uniform(-1, 1) / 2
    return quat_xyzw_to_matrix(f64([*(np.sin(half) * axis / np.linalg.norm(axis)), np.cos(half)]))


class PerfectModel:
    """``infer`` with DA3's signature on frame indices: ground-truth depth and cameras of those frames, each call
    in its own random similarity frame (or the caller's, given poses), with optional noise and corruptions."""

    has_cameras = True

    def __init__(self, scene, seed=0, depth_noise=0.0, pose_noise_deg=0.0, outlier=None, broken=None, scale=1.0):
        self.scene, self.rng = scene, np.random.default_rng(seed)
        self.depth_noise, self.pose_noise_deg = depth_noise, pose_noise_deg
        self.outlier = outlier  # (call, view): that view's depth and camera are wrong
        self.broken = broken  # "cameras" | "depth": the overlap views of every call after the first
        self.scale = scale  # known poses: the caller's units per scene unit
        self.calls: list[list[int]] = []

    def infer(self, images, extrinsics=None, intrinsics=None, process_res=None, infer_gs=False, return_rays=False):
        frames, call, rng = [int(i) for i in images], len(self.calls), self.rng
        self.calls.append(frames)
        s = self.scene
        depth = s.depth[frames].astype(np.float64)
        w2c, K = f64(s.w2c[frames]), s.K[frames].astype(np.float32)
        if extrinsics is not None:
            w2c, depth = as_homogeneous(f64(extrinsics)), depth * self.scale
        else:
            R, t, scale = random_rotation(rng), f64(rng.normal(size=3)), f64(rng.uniform(0.2, 5.0))
            w2c, depth = apply_sim3_to_w2c(w2c, R, t, scale), depth * float(scale)
        if self.pose_noise_deg:
            for i in range(len(frames)):
                w2c[i, :3, :3] = random_rotation(rng, self.pose_noise_deg) @ w2c[i, :3, :3]
                w2c[i, :3, 3] += f64(rng.normal(size=3)) * 0.003 * np.median(depth)
        depth *= 1 + self.depth_noise * rng.standard_normal(depth.shape)
        if extrinsics is None:
            w2c = self.pose_free_cameras(w2c)
        if self.outlier is not None and self.outlier[0] == call:
            v = self.outlier[1]
            depth[v] = depth[v][::-1] * 2.5  # another surface entirely
            w2c[v, :3, :3] = random_rotation(np.random.default_rng(call), 40.0) @ w2c[v, :3, :3]
            w2c[v, :3, 3] += 1.0
        if self.broken and call > 0:
            target = w2c if self.broken == "cameras" else depth
            target[:4] = np.nan
        depth = depth.astype(np.float32)
        pred = Prediction(
            depth=depth,
            depth_conf=(1 + 2 * rng.random(depth.shape)).astype(np.float32),
            processed_images=s.images[frames],
            extrinsics=w2c[:, :3].float().numpy(),
            intrinsics=K,
        )
        d, Kt, E = torch.from_numpy(depth).double(), torch.from_numpy(K).double(), w2c
        if infer_gs:
            pred.gaussians = headfree_gaussians(d.float(), torch.from_numpy(s.images[frames]), E.float(), Kt.float())
        if return_rays:  # [direction at camera z = 1, centre], as DA3's ray head
            pts = depth_to_world_points(d, Kt, E, offset=0.5)
            centres = rigid_inverse(E)[:, :3, 3][:, None, None].expand_as(pts)
            pred.ray = torch.cat([(pts - centres) / d[..., None], centres], -1).float().numpy()
        return pred

    def pose_free_cameras(self, w2c: torch.Tensor) -> torch.Tensor:
        """Hook for subclasses: the pose-free cameras of one call, before its outputs are built from them."""
        return w2c


def aligned_errors(pred: Prediction, scene) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Align the prediction to GT with one similarity (Umeyama on all camera centres) -> per-frame rotation error
    (deg), centre error / trajectory extent, per-pixel relative depth error."""
    pw, gw = as_homogeneous(f64(pred.extrinsics)), f64(scene.w2c)
    R, t, s = fit_umeyama(camera_centers(pw), camera_centers(gw))
    moved = apply_sim3_to_w2c(pw, R, t, s)
    rel = moved[:, :3, :3] @ gw[:, :3, :3].transpose(-1, -2)
    cos2 = rel.diagonal(dim1=-2, dim2=-1).sum(-1) - 1  # 2 cos(angle); and 2 sin(angle) from the skew part:
    sin2 = torch.stack([rel[:, 2, 1] - rel[:, 1, 2], rel[:, 0, 2] - rel[:, 2, 0], rel[:, 1, 0] - rel[:, 0, 1]], -1)
    gc = camera_centers(gw)
    extent = (gc - gc.mean(0)).norm(dim=-1).max()
    centre = (camera_centers(moved) - gc).norm(dim=-1) / extent
    depth = np.abs(pred.depth.astype(np.float64) * float(s) - scene.depth) / scene.depth
    return np.degrees(torch.atan2(sin2.norm(dim=-1), cos2).numpy()), centre.numpy(), depth


def assert_gaussians_and_rays_follow_cameras(pred: Prediction) -> None:
    """The merged Gaussians' means and the rays' points are the merged depth unprojected with the merged cameras."""
    d, K, w2c = (torch.from_numpy(a).double() for a in (pred.depth, pred.intrinsics, pred.extrinsics))
    pts = depth_to_world_points(d, K, w2c, offset=0.5)
    extent = float(pts.reshape(-1, 3).std(0).norm())
    means = pred.gaussians.means.double().reshape(pts.shape)
    assert (means - pts).norm(dim=-1).max() < 1e-4 * extent
    assert (points_from_rays(d, torch.from_numpy(pred.ray).double()) - pts).norm(dim=-1).max() < 1e-4 * extent


class DriftingModel(PerfectModel):
    """PerfectModel whose pose-free cameras turn by ``drift_deg`` more per view about the vertical, so every chunk
    is a little inconsistent and the chain of fits drifts; ``break_call``: that call returns no usable cameras."""

    def __init__(self, scene, drift_deg=0.3, break_call=None, **kw):
        super().__init__(scene, **kw)
        self.drift, self.break_call = drift_deg, break_call

    def pose_free_cameras(self, w2c: torch.Tensor) -> torch.Tensor:
        w2c = w2c.clone()
        for v in range(len(w2c)):
            half = np.radians(self.drift * v) / 2
            w2c[v, :3, :3] = w2c[v, :3, :3] @ quat_xyzw_to_matrix(f64([0, np.sin(half), 0, np.cos(half)])).T
        return w2c

    def infer(self, images, **kw):
        pred = super().infer(images, **kw)
        if len(self.calls) - 1 == self.break_call:
            pred.extrinsics[:] = np.nan
        return pred
