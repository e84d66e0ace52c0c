"""Photometric consistency between posed views: how well a depth map, warped into the other views, agrees
with their images. Two uses, both non-learned and run without gradients:

- ``photometric_depth_scale``: one global factor that puts a depth map at the scale of known cameras
  (posed depth calibration);
- ``plane_sweep``: a per-pixel factor on the depth (a plane sweep around the predicted depth), with the
  matching cost, which da3-splat NVS heads read as an extra input and start their depth from.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from da3_splat.geometry import as_homogeneous, camera_centers, depth_to_camera_points, rigid_inverse


def _sample_grid(p: Tensor, K: Tensor, H: int, W: int) -> tuple[Tensor, Tensor]:
    """Camera-frame points (..., h, w, 3) and intrinsics (..., 3, 3) -> ``grid_sample`` coordinates (..., h, w, 2)
    in an H x W image (pixel centres at +0.5) and whether each point is in front of the camera and inside it."""
    z = p[..., 2]
    uv = torch.einsum("...ij,...hwj->...hwi", K, p)[..., :2] / z.clamp(min=1e-6)[..., None]
    grid = uv / uv.new_tensor([W, H]) * 2 - 1
    return grid, (z > 1e-6) & (grid.abs() < 1).all(dim=-1)


def _warp_cost(
    cam: Tensor, images: Tensor, w2c: Tensor, K: Tensor, factor: float, max_error: float, min_overlap: float
) -> Tensor:
    """Truncated L1 between every view and the other views warped onto it with depth ``factor * cam``."""
    S, H, W, _ = cam.shape
    c2w = rigid_inverse(w2c)
    world = torch.einsum("sij,shwj->shwi", c2w[:, :3, :3], factor * cam) + c2w[:, None, None, :3, 3]
    total = cam.new_zeros(())
    for j in range(S):
        others = [i for i in range(S) if i != j]
        pj = torch.einsum("ij,shwj->shwi", w2c[j, :3, :3], world[others]) + w2c[j, :3, 3]
        grid, ok = _sample_grid(pj, K[j], H, W)
        sampled = F.grid_sample(images[j : j + 1].expand(len(others), -1, -1, -1), grid, align_corners=False)
        err = (sampled - images[others]).abs().mean(dim=1).clamp(max=max_error)
        pair = torch.where(ok, err, 0.0).flatten(1).sum(1) / ok.flatten(1).sum(1).clamp(min=1)
        overlap = ok.flatten(1).float().mean(1)
        total = total + torch.where(overlap >= min_overlap, pair, torch.full_like(pair, max_error)).sum()
    return total


@torch.no_grad()
def photometric_depth_scale(
    depth: Tensor,
    images: Tensor,
    w2c: Tensor,
    K: Tensor,
    span: float = 8.0,
    downsample: int = 2,
    max_error: float = 0.25,
    min_overlap: float = 0.2,
) -> Tensor:
    """The factor that puts depth maps at the scale of known cameras: the one whose warps between the views
    agree best with the images (a plane sweep over one global scale). (S, H, W) depth, (S, 3, H, W) images in
    [0, 1], (S, 3|4, 4) w2c, (S, 3, 3) K in pixels of the depth -> scalar tensor.

    Every view is unprojected with ``factor * depth``, projected into every other view and compared with the
    image there: L1, truncated at ``max_error`` so occlusions and the depth's own shape errors do not decide;
    pairs that overlap on less than ``min_overlap`` of the pixels score ``max_error``. The search runs over
    [1/span, span] in steps of 2^(1/4), then refines in steps of 2^(1/32), at 1/``downsample`` resolution.
    A single view returns 1. With the ground-truth depth of the synthetic scenes it returns 1.00-1.15.
    """
    S, H, W = depth.shape
    one = torch.ones((), device=depth.device, dtype=depth.dtype)
    if S < 2:
        return one
    d, im = depth.float()[:, None], images.float()
    if downsample > 1:
        d, im = F.avg_pool2d(d, downsample), F.avg_pool2d(im, downsample)
    h, w = d.shape[-2:]
    Ks = K.float().clone()
    Ks[:, 0] *= w / W
    Ks[:, 1] *= h / H
    cam = depth_to_camera_points(d[:, 0], Ks, offset=0.5)
    w2c = as_homogeneous(w2c.float())

    def best(exponents: list[float]) -> float:
        costs = [float(_warp_cost(cam, im, w2c, Ks, 2.0**e, max_error, min_overlap)) for e in exponents]
        return exponents[costs.index(min(costs))]

    n = round(4 * math.log2(span))
    coarse = best([k / 4 for k in range(-n, n + 1)])
    fine = best([coarse + k / 32 for k in range(-4, 5)])
    return one * 2.0**fine


# Plane sweep: per-pixel depth factors

SWEEP_CHANNELS = 3  # what plane_sweep_features gives a head: log factor, best cost, cost contrast
SWEEP_MAX_ERROR = 0.5  # truncation of the per-pixel colour error (images in [0, 1])


def nearest_views(w2c: Tensor, k: int) -> Tensor:
    """For every view, the indices of the ``k`` other views whose camera centres are nearest, (S, k)."""
    c = camera_centers(as_homogeneous(w2c.float()))
    dist = torch.cdist(c, c)
    dist.fill_diagonal_(float("inf"))
    return dist.topk(min(k, len(c) - 1), largest=False).indices


@torch.no_grad()
def plane_sweep(
    depth: Tensor,
    images: Tensor,
    w2c: Tensor,
    K: Tensor,
    log_range: float = 1.0,
    steps: int = 25,
    neighbours: int = 4,
    max_error: float = SWEEP_MAX_ERROR,
    window: int = 3,
) -> dict[str, Tensor]:
    """Per-pixel factor on ``depth`` that best explains the other views: every pixel is unprojected at
    ``depth * exp(f)`` for ``steps`` values of f in [-log_range, log_range], projected into its ``neighbours``
    nearest views and compared with the images there (L1 over colour, truncated at ``max_error``, averaged over
    the neighbours that see the pixel at the predicted depth, and over a ``window`` x ``window`` patch).
    (S, H, W) planar depth, (S, 3, H, W) images in [0, 1], (S, 3|4, 4) w2c, (S, 3, 3) K in pixels of the depth.

    Returns ``log_factor`` (the cost minimum, refined between steps by a parabola), ``cost`` (its cost) and
    ``contrast`` (mean cost over the sweep minus the minimum: near 0 where the images cannot tell depths apart,
    e.g. untextured surfaces), each (S, H, W). Pixels that no neighbour sees cost ``max_error`` at every factor
    (zero contrast), as does a single view, whose factor is 1.
    """
    S, H, W = depth.shape
    if S < 2:
        zeros = torch.zeros_like(depth)
        return {"log_factor": zeros, "cost": zeros + max_error, "contrast": zeros}
    w2c = as_homogeneous(w2c.float())
    images, K = images.float(), K.float()
    cam = depth_to_camera_points(depth.float(), K, offset=0.5)  # (S, H, W, 3)
    c2w = rigid_inverse(w2c)
    nbr = nearest_views(w2c, neighbours)  # (S, N)
    R_n, t_n, K_n = w2c[nbr, :3, :3], w2c[nbr, :3, 3], K[nbr]  # (S, N, ...)
    src = images[nbr].flatten(0, 1)  # (S*N, 3, H, W)
    log_factors = torch.linspace(-log_range, log_range, steps, device=depth.device)

    def warp(f: Tensor) -> tuple[Tensor, Tensor]:
        world = torch.einsum("sij,shwj->shwi", c2w[:, :3, :3], f * cam) + c2w[:, None, None, :3, 3]
        p = torch.einsum("snij,shwj->snhwi", R_n, world) + t_n[:, :, None, None]
        return _sample_grid(p, K_n, H, W)

    # Which neighbours see a pixel is decided once, at the predicted depth: deciding it per factor would favour
    # the factors that bring pixels into view over the ones that match.
    seen = warp(torch.ones((), device=depth.device))[1].float()  # (S, N, H, W)
    n_seen = seen.sum(dim=1)
    costs = []
    for f in log_factors.exp():
        grid = warp(f)[0]
        warped = F.grid_sample(src, grid.flatten(0, 1), padding_mode="border", align_corners=False)
        err = (warped.unflatten(0, seen.shape[:2]) - images[:, None]).abs().mean(dim=2).clamp(max=max_error)
        costs.append(torch.where(n_seen > 0, (err * seen).sum(dim=1) / n_seen.clamp(min=1), max_error))
    cost = torch.stack(costs, dim=1)  # (S, steps, H, W)
    if window > 1:
        cost = F.avg_pool2d(cost, window, stride=1, padding=window // 2, count_include_pad=False)
    # A faint pull towards the predicted depth decides flat cost curves (untextured or unseen pixels) for it.
    best = (cost + 1e-4 * log_factors.abs()[:, None, None]).argmin(dim=1, keepdim=True)
    c0 = cost.gather(1, best)
    cm = cost.gather(1, (best - 1).clamp(min=0))
    cp = cost.gather(1, (best + 1).clamp(max=steps - 1))
    curvature = cm - 2 * c0 + cp
    inner = (best > 0) & (best < steps - 1) & (curvature > 1e-8)
    shift = torch.where(inner, 0.5 * (cm - cp) / curvature.clamp(min=1e-8), 0.0).clamp(-0.5, 0.5)
    step = 2 * log_range / (steps - 1)
    log_factor = -log_range + (best + shift) * step
    return {"log_factor": log_factor[:, 0], "cost": c0[:, 0], "contrast": (cost.mean(dim=1) - c0[:, 0])}


def plane_sweep_features(sweep: dict[str, Tensor], max_error: float = SWEEP_MAX_ERROR) -> Tensor:
    """The sweep as ``SWEEP_CHANNELS`` input channels for a head, (..., H, W) each -> (..., 3, H, W), all O(1)."""
    return torch.stack([sweep["log_factor"], sweep["cost"] / max_error, sweep["contrast"] / max_error], dim=-3)
