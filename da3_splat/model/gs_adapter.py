"""DA3's Gaussian adapter: raw GS-head channels + depth + predicted cameras -> world-space Gaussians.

One Gaussian per input pixel, ordered (view, row, col). Behaviour follows the official adapter exactly,
quirks included (spec §8): depth is a distance along the unit ray, and the quaternion path misreads the
channel order (the weights were trained through it, so it must be kept).

Raw channel layout (channels last, 37 for SH degree 2):
    0-1 xy offset (pixels) | 2-4 scale logits | 5-8 quaternion | 9.. SH, colour-major (c * K + k) | last: depth offset
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from da3_splat.gaussians import Gaussians
from da3_splat.geometry import (
    as_homogeneous,
    camera_centers,
    matrix_to_quat_xyzw,
    quat_mul_wxyz,
    rigid_inverse,
    umeyama,
)
from da3_splat.sh import RGB2SH, num_sh_bases, rotate_sh

SCALE_MIN, SCALE_MAX = 1e-5, 30.0
SCALE_MULTIPLIER = 0.1  # scales are in units of "pixel footprint at the Gaussian's depth"
GT_SCALE_RANGE = (1 / 3.0, 3.0)
QUAT_EPS = 1e-8


def num_raw_channels(sh_degree: int) -> int:
    """Channels the adapter consumes (the GS head outputs one more: the opacity logit)."""
    return 2 + 3 + 4 + 3 * num_sh_bases(sh_degree) + 1


def sh_mask(sh_degree: int, device=None, dtype=None) -> Tensor:
    """Per-coefficient damping: 1 for DC, 0.1 * 0.25**l for band l (keeps view dependence small)."""
    mask = [1.0] + [0.1 * 0.25**l for l in range(1, sh_degree + 1) for _ in range(2 * l + 1)]
    return torch.tensor(mask, device=device, dtype=dtype)


def world_quats(raw_quat: Tensor, R_c2w: Tensor) -> Tensor:
    """Official quaternion path (spec §8.5) in closed form.

    Upstream normalises the 4 channels as xyzw, reorders them to wxyz, but then converts with an xyzw-based
    quat->matrix. With raw = (a0, a1, a2, a3) that matrix is the rotation of the wxyz quaternion
    (a2, a3, a0, a1). It is left-multiplied by R_c2w and converted back to an xyzw quaternion with w >= 0,
    and that xyzw vector is what gets stored (and rendered as wxyz). Composing quaternions directly gives
    the same vector without the per-Gaussian matrix round trip.

    raw_quat (..., 4), R_c2w broadcastable (..., 3, 3) -> (..., 4).
    """
    q = raw_quat / raw_quat.norm(dim=-1, keepdim=True).clamp(min=QUAT_EPS)
    a0, a1, a2, a3 = q.unbind(-1)
    q_cam = torch.stack([a2, a3, a0, a1], dim=-1)
    c2w_xyzw = matrix_to_quat_xyzw(R_c2w)
    q_c2w = torch.cat([c2w_xyzw[..., 3:], c2w_xyzw[..., :3]], dim=-1)
    world = quat_mul_wxyz(q_c2w, q_cam)
    stored = torch.cat([world[..., 1:], world[..., :1]], dim=-1)  # xyzw, as upstream returns it
    return torch.where(stored[..., 3:] < 0, -stored, stored)


def pose_alignment_scale(pred_w2c: Tensor, gt_w2c: Tensor) -> Tensor:
    """Per-sample Sim(3) (Umeyama) scale mapping predicted camera centres onto GT ones, (B,).

    Upstream fits it with ``evo``, which also aligns two views or collinear cameras (the scale, a ratio of
    spreads, is defined there even though the rotation is not). Scale 1 for one view, coincident predicted
    centres or a non-finite fit.
    """
    pred_c = camera_centers(pred_w2c.detach()).double()
    gt_c = camera_centers(gt_w2c.detach()).double()
    scales = []
    for src, dst in zip(pred_c, gt_c):
        spread = (src - src.mean(0)).square().sum()
        scales.append(float(umeyama(src, dst)[2]) if src.shape[0] >= 2 and spread > 1e-18 else 1.0)
    out = torch.tensor(scales, dtype=pred_w2c.dtype, device=pred_w2c.device)
    return torch.nan_to_num(out, nan=1.0, posinf=1.0, neginf=1.0)


def raw_to_gaussians(
    raw: Tensor,
    opacity: Tensor,
    depth: Tensor,
    extrinsics: Tensor,
    intrinsics: Tensor,
    gt_extrinsics: Tensor | None = None,
    sh_degree: int = 2,
    planar_depth: bool = False,
    scale_max: float = SCALE_MAX,
    colors: Tensor | None = None,
    log_depth_offset: bool = False,
) -> Gaussians:
    """Turn GS-head outputs into world-space Gaussians.

    raw (B, S, H, W, C) linear head output without the opacity channel; opacity (B, S, H, W), already
    activated; depth (B, S, H, W); extrinsics (B, S, 3|4, 4) predicted w2c; intrinsics (B, S, 3, 3) in pixels
    of the network input; gt_extrinsics (B, S, 3|4, 4) normalised GT w2c, only used to fix the scale.
    planar_depth: read ``depth`` as planar z-depth (what DA3's depth head predicts) and convert it to a distance
    along the ray; the official adapter (False) uses it as the distance directly, a quirk its GS head was
    trained around. NVS heads trained with da3-splat use True, so they need not learn the conversion.
    scale_max: upper end of the scale range (units of 0.1 pixel footprint; the official adapter's 30).
    colors: (B, S, H, W, 3) input pixel colours in [0, 1]; when given, the head's DC colour is a residual on them
    (da3-splat NVS heads; the official adapter has no such shortcut).
    log_depth_offset: the depth-offset channel is a log factor, ``depth * exp(offset)`` (da3-splat NVS heads), not
    an addend (official), so the correction it learns does not depend on the scene's scale.
    Returns Gaussians with leading dim B and N = S * H * W.
    """
    B, S, H, W, C = raw.shape
    K = num_sh_bases(sh_degree)
    if C != num_raw_channels(sh_degree):
        raise ValueError(f"expected {num_raw_channels(sh_degree)} raw channels for SH degree {sh_degree}, got {C}")
    offset_xy, scale_logit, raw_quat, sh_raw, depth_offset = raw.split((2, 3, 4, 3 * K, 1), dim=-1)

    # Cameras: always the predicted ones, since the depth lives in the predicted camera frames.
    w2c = as_homogeneous(extrinsics)
    c2w = rigid_inverse(w2c)
    R, origin = c2w[..., :3, :3], c2w[..., :3, 3]  # (B, S, 3, 3), (B, S, 3)
    dist = depth * torch.exp(depth_offset[..., 0]) if log_depth_offset else depth + depth_offset[..., 0]
    if gt_extrinsics is not None:
        gt_w2c = as_homogeneous(gt_extrinsics).to(w2c)
        if not torch.equal(w2c, gt_w2c):
            s = pose_alignment_scale(w2c, gt_w2c).clamp(*GT_SCALE_RANGE)
            origin = origin * s[:, None, None]
            dist = dist * s[:, None, None, None]

    # Upstream detaches the intrinsics here: no gradient reaches the focal lengths through the Gaussians.
    K_norm = intrinsics.detach().clone()
    K_norm[..., 0, :] = K_norm[..., 0, :] / W
    K_norm[..., 1, :] = K_norm[..., 1, :] / H

    # Means: pixel centre + predicted sub-pixel offset, unit ray, distance `dist` along it.
    ys = (torch.arange(H, device=raw.device, dtype=raw.dtype) + 0.5) / H
    xs = (torch.arange(W, device=raw.device, dtype=raw.dtype) + 0.5) / W
    u = xs + offset_xy[..., 0] / W  # (B, S, H, W)
    v = ys[:, None] + offset_xy[..., 1] / H
    pix = torch.stack([u, v, torch.ones_like(u)], dim=-1)
    # Invert in >= fp32 (bf16/fp16 have no inverse kernel and too little precision).
    inv_dtype = torch.promote_types(K_norm.dtype, torch.float32)
    K_inv = torch.linalg.inv(K_norm.to(inv_dtype)).to(raw.dtype)
    cam_dirs = torch.einsum("bsij,bshwj->bshwi", K_inv, pix)
    dirs = F.normalize(cam_dirs, dim=-1)
    if planar_depth:  # z-depth -> distance along the unit ray (|K^-1 p| with p's z = 1)
        dist = dist * cam_dirs.norm(dim=-1)
    dirs = torch.einsum("bsij,bshwj->bshwi", R, dirs)
    means = origin[:, :, None, None, :] + dirs * dist[..., None]

    # Scales: sigmoid range times the pixel footprint 0.1 * (1/fx + 1/fy) at distance `dist`.
    pixel_size = torch.tensor([1.0 / W, 1.0 / H], device=raw.device, dtype=raw.dtype)
    K2_inv = torch.linalg.inv(K_norm[..., :2, :2].to(inv_dtype)).to(raw.dtype)
    footprint = SCALE_MULTIPLIER * (K2_inv @ pixel_size).sum(-1)  # (B, S)
    scales = SCALE_MIN + (scale_max - SCALE_MIN) * torch.sigmoid(scale_logit)
    scales = scales * dist[..., None] * footprint[:, :, None, None, None]

    quats = world_quats(raw_quat, R[:, :, None, None])

    # SH: colour-major channels -> (K, 3), damp higher bands, carry from camera to world frame.
    sh = sh_raw.unflatten(-1, (3, K)) * sh_mask(sh_degree, raw.device, raw.dtype)
    sh = rotate_sh(sh.transpose(-1, -2), R[:, :, None, None])
    if colors is not None:  # the DC band is rotation invariant, so the residual can be added in world frame
        sh = torch.cat([sh[..., :1, :] + RGB2SH(colors.to(sh.dtype))[..., None, :], sh[..., 1:, :]], dim=-2)

    N = S * H * W
    return Gaussians(
        means=means.reshape(B, N, 3),
        quats=quats.reshape(B, N, 4),
        scales=scales.reshape(B, N, 3),
        opacities=opacity.reshape(B, N),
        sh=sh.reshape(B, N, K, 3),
    )
