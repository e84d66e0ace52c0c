"""Training losses: photometric and depth-consistency losses for the NVS head, and DA3's geometry losses.

Geometry losses follow the DA3 paper (the official training code is not released): against ground truth
normalised by a scene scale (:func:`normalize_scene`),

    L = L_depth + L_grad + L_ray + L_point + L_camera,

where the depth and ray terms are confidence-weighted L1 with a ``-alpha * log(conf)`` regulariser
(``conf >= 1``, as the heads output ``exp(x) + 1``), the point term compares ``centre + depth * direction``
with GT world points, and the camera term compares camera centres, rotations (chordal distance) and fields of view.

Shapes: depth (B, S, H, W); rays (B, S, h, w, 6) at the ray-map resolution (8H/14 x 8W/14);
w2c (B, S, 3|4, 4) OpenCV world-to-camera; K (B, S, 3, 3) in pixels of the network input (H x W).
Every loss is a masked mean that returns a finite 0 (with a graph) when its mask is empty.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from da3_splat.geometry import as_homogeneous, camera_centers, depth_to_world_points, points_from_rays, rigid_inverse
from da3_splat.image_metrics import ssim
from da3_splat.train.config import GeometryTerms

DEPTH_EPS = 1e-6
CHORDAL_EPS = 1e-2


# --------------------------------------------------------------------------------------------------
# Helpers


def masked_mean(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean of ``x`` over ``mask`` (broadcast to x); 0 for an empty mask. Masked-out values may be NaN/inf."""
    if mask is None:
        return x.mean() if x.numel() else x.sum()
    m = mask.bool().expand_as(x)
    return torch.where(m, x, torch.zeros_like(x)).sum() / m.sum().clamp(min=1)


def _valid_depth(gt_depth: Tensor, valid: Tensor | None) -> Tensor:
    ok = torch.isfinite(gt_depth) & (gt_depth > 0)
    return ok if valid is None else ok & valid.bool()


def _clean(gt: Tensor, valid: Tensor) -> Tensor:
    # Invalid GT is often 0, NaN or inf; zero it so no NaN reaches a gradient through torch.where.
    v = valid if valid.dim() == gt.dim() else valid[..., None]
    return torch.where(v.expand_as(gt), gt, torch.zeros_like(gt))


def _resize(x: Tensor, h: int, w: int) -> Tensor:
    """Bilinear resize of (..., H, W) maps (pixel-centre aligned, as the ray map's grid)."""
    if x.shape[-2:] == (h, w):
        return x
    lead = x.shape[:-2]
    y = F.interpolate(x.reshape(-1, 1, *x.shape[-2:]), size=(h, w), mode="bilinear", align_corners=False)
    return y.reshape(*lead, h, w)


def _resize_mask(valid: Tensor, h: int, w: int) -> Tensor:
    # A resized pixel is valid only if every source pixel its bilinear weights touch is valid.
    return _resize(valid.float(), h, w) > 1.0 - 1e-6


def scale_intrinsics(K: Tensor, H: int, W: int, h: int, w: int) -> Tensor:
    """Intrinsics for an h x w resampling of an H x W image (pixel edges aligned, as ``F.interpolate``)."""
    s = torch.tensor([w / W, h / H, 1.0], dtype=K.dtype, device=K.device)
    return K * s[:, None]


# --------------------------------------------------------------------------------------------------
# Photometric / NVS-head losses


def photometric_loss(pred: Tensor, target: Tensor, ssim_weight: float = 0.2) -> tuple[Tensor, dict[str, Tensor]]:
    """``MSE + ssim_weight * (1 - SSIM)`` for rendered vs target images (..., 3, H, W) in [0, 1].

    MSE (not L1) because it is what PSNR measures; the SSIM term (11x11 Gaussian, 'valid', see
    :func:`da3_splat.image_metrics.ssim`) adds structure. Returns the loss and detached parts (mse, ssim).
    """
    mse = ((pred.float() - target.float()) ** 2).mean()
    s = ssim(pred, target).mean() if ssim_weight else torch.ones((), device=pred.device)
    loss = mse + ssim_weight * (1.0 - s)
    return loss, {"mse": mse.detach(), "ssim": s.detach()}


def depth_consistency_loss(pred_depth: Tensor, ref_depth: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean ``|log pred - log ref|`` over ``mask`` and pixels with a finite, positive reference.

    For the NVS head's rendered depth against the frozen geometry depth, which share one frame and scale, so
    the loss is scale-aware (not scale-invariant); working in log depth makes it a relative error, so near
    and far pixels weigh alike. ``ref_depth`` is detached; ``pred_depth`` is clamped at 1e-6 (no NaN for
    empty renders, whose gradient is then zero).
    """
    ref, pred_depth = ref_depth.detach().float(), pred_depth.float()
    valid = _valid_depth(ref, mask)
    log_ref = torch.log(_clean(ref, valid).clamp(min=DEPTH_EPS))
    err = (torch.log(pred_depth.clamp(min=DEPTH_EPS)) - log_ref).abs()
    return masked_mean(err, valid)


# --------------------------------------------------------------------------------------------------
# Ground truth in the model's conventions


@dataclass
class NormalizedScene:
    """GT re-expressed in the reference view's frame and divided by ``scale`` (B,)."""

    w2c: Tensor  # (B, S, 4, 4)
    depth: Tensor  # (B, S, H, W)
    scale: Tensor  # (B,)


def normalize_scene(
    gt_w2c: Tensor, gt_depth: Tensor, gt_K: Tensor, valid: Tensor | None = None, reference: Tensor | None = None
) -> NormalizedScene:
    """Put GT in the frame DA3 predicts in: the reference camera = identity, and unit scale.

    ``reference`` (B,) is the view whose camera the model takes as its world frame (``out["reference_view"]``:
    the view DA3 selects for S >= 3 pose-free views; default 0). The scale (per batch sample) is the mean distance
    of the valid GT points to that camera (the paper's "mean l2 norm of the valid point map"); depth and camera
    translations are divided by it. Depth alone cannot fix the scale of camera translations, hence ``gt_K`` to
    build the points. A sample without valid pixels keeps scale 1.
    """
    w2c = as_homogeneous(gt_w2c)
    B = w2c.shape[0]
    if reference is None:
        reference = torch.zeros(B, dtype=torch.long, device=w2c.device)
    ref_w2c = w2c[torch.arange(B, device=w2c.device), reference.to(w2c.device).long()]
    rel = w2c @ rigid_inverse(ref_w2c)[:, None]
    valid = _valid_depth(gt_depth, valid)
    depth = _clean(gt_depth, valid)
    dist = depth_to_world_points(depth, gt_K, rel).norm(dim=-1)
    m = valid.flatten(1).to(dist.dtype)
    count = m.sum(1)
    scale = torch.where(count > 0, (dist.flatten(1) * m).sum(1) / count.clamp(min=1), torch.ones_like(count))
    scale = scale.clamp(min=DEPTH_EPS)
    rel = rel.clone()
    rel[..., :3, 3] = rel[..., :3, 3] / scale[:, None, None]
    return NormalizedScene(w2c=rel, depth=depth / scale[:, None, None, None], scale=scale)


def gt_rays(w2c: Tensor, K: Tensor, H: int, W: int, h: int, w: int) -> Tensor:
    """GT ray map (..., h, w, 6) = [world direction, camera centre] in the model's layout.

    The direction of ray-map pixel (i, j) is ``R_c2w K^-1 [u, v, 1]`` at its pixel centre in input pixels,
    ``u = (j + 0.5) W / w``, ``v = (i + 0.5) H / h`` (DA3's ray map is sampled at pixel centres; spec §7).
    It has unit camera-frame z, so ``points_from_rays(depth, ray)`` = centre + planar depth * direction.
    """
    j = (torch.arange(w, dtype=K.dtype, device=K.device) + 0.5) * (W / w)
    i = (torch.arange(h, dtype=K.dtype, device=K.device) + 0.5) * (H / h)
    v, u = torch.meshgrid(i, j, indexing="ij")
    pix = torch.stack([u, v, torch.ones_like(u)], dim=-1)  # (h, w, 3)
    c2w = rigid_inverse(w2c[..., :3, :4])
    cam = torch.einsum("...ij,hwj->...hwi", torch.linalg.inv(K), pix)
    world = torch.einsum("...ij,...hwj->...hwi", c2w[..., :3, :3], cam)
    centre = c2w[..., :3, 3][..., None, None, :].expand_as(world)
    return torch.cat([world, centre], dim=-1)


def gt_points(gt_depth: Tensor, gt_w2c: Tensor, gt_K: Tensor, h: int, w: int, valid: Tensor | None = None):
    """GT world points (B, S, h, w, 3) and their validity at the ray-map resolution.

    The depth map is resampled bilinearly (pixel-centre aligned) and unprojected at the ray-map pixel centres
    (``offset=0.5`` with intrinsics scaled to h x w): exactly the rays of :func:`gt_rays`.
    """
    H, W = gt_depth.shape[-2:]
    valid = _valid_depth(gt_depth, valid)
    depth = _resize(_clean(gt_depth, valid), h, w)
    pts = depth_to_world_points(depth, scale_intrinsics(gt_K, H, W, h, w), gt_w2c, offset=0.5)
    return pts, _resize_mask(valid, h, w)


def _quat_xyzw(R: Tensor) -> Tensor:
    """Rotation matrix -> quaternion (x, y, z, w), sign arbitrary, with NaN-free gradients.

    Shepperd's method like :func:`da3_splat.geometry.matrix_to_quat_xyzw`, but only the chosen (largest)
    magnitude goes through the square root: sqrt'(0) = inf would otherwise make 0 * inf = NaN gradients
    at rotations such as the identity.
    """
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = R.reshape(*R.shape[:-2], 9).unbind(-1)
    sq = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    rows = torch.stack(  # row k = (w, x, y, z) * 4 q_k, with the diagonal 4 q_k^2 = sq_k
        [
            torch.stack([sq[..., 0], m21 - m12, m02 - m20, m10 - m01], -1),
            torch.stack([m21 - m12, sq[..., 1], m10 + m01, m02 + m20], -1),
            torch.stack([m02 - m20, m10 + m01, sq[..., 2], m12 + m21], -1),
            torch.stack([m10 - m01, m20 + m02, m21 + m12, sq[..., 3]], -1),
        ],
        dim=-2,
    )
    best = sq.detach().argmax(dim=-1, keepdim=True)
    row = torch.gather(rows, -2, best[..., None].expand(*best.shape, 4))[..., 0, :]
    wxyz = row / (2.0 * torch.gather(sq, -1, best).clamp(min=1e-8).sqrt())
    return torch.cat([wxyz[..., 1:], wxyz[..., :1]], dim=-1)


def pose_encoding(w2c: Tensor, K: Tensor, H: int, W: int) -> Tensor:
    """DA3's 9-D camera encoding [centre (3), q_xyzw (4), fov_h, fov_w] (camera-to-world), differentiable.

    Equals :func:`da3_splat.geometry.cameras_to_pose_encoding` up to the quaternion's sign.
    """
    R_c2w = w2c[..., :3, :3].transpose(-1, -2)
    fov_h = 2 * torch.atan((H / 2) / K[..., 1, 1])
    fov_w = 2 * torch.atan((W / 2) / K[..., 0, 0])
    return torch.cat([camera_centers(w2c), _quat_xyzw(R_c2w), fov_h[..., None], fov_w[..., None]], dim=-1)


# --------------------------------------------------------------------------------------------------
# DA3 geometry losses


def depth_loss(depth: Tensor, conf: Tensor, gt_depth: Tensor, valid: Tensor | None, alpha: float = 0.2) -> Tensor:
    """Mean over valid pixels of ``conf * |depth - gt| - alpha * log(conf)``."""
    valid = _valid_depth(gt_depth, valid)
    err = conf * (depth - _clean(gt_depth, valid)).abs() - alpha * torch.log(conf.clamp(min=DEPTH_EPS))
    return masked_mean(err, valid)


def gradient_loss(depth: Tensor, gt_depth: Tensor, valid: Tensor | None, scales: int = 1) -> Tensor:
    """Gradient matching: mean ``|d/dx (depth - gt)| + |d/dy (depth - gt)|`` over pixel pairs that are both
    valid, averaged over ``scales`` levels (level k keeps every 2^k-th pixel, as in MiDaS)."""
    valid = _valid_depth(gt_depth, valid)
    diff = depth - _clean(gt_depth, valid)
    total = depth.sum() * 0.0
    for k in range(scales):
        d, m = diff[..., :: 2**k, :: 2**k], valid[..., :: 2**k, :: 2**k]
        gx, mx = (d[..., :, 1:] - d[..., :, :-1]).abs(), m[..., :, 1:] & m[..., :, :-1]
        gy, my = (d[..., 1:, :] - d[..., :-1, :]).abs(), m[..., 1:, :] & m[..., :-1, :]
        n = (mx.sum() + my.sum()).clamp(min=1)
        total = total + (torch.where(mx, gx, 0.0).sum() + torch.where(my, gy, 0.0).sum()) / n
    return total / max(scales, 1)


def ray_loss(ray: Tensor, ray_conf: Tensor, gt_ray: Tensor, valid: Tensor | None = None, alpha: float = 0.2) -> Tensor:
    """Mean of ``conf * ||ray - gt_ray||_1 - alpha * log(conf)`` (L1 over the 6 channels) over valid pixels.

    GT rays exist wherever the camera is known, so ``valid`` defaults to every pixel.
    """
    ok = torch.isfinite(gt_ray).all(dim=-1)
    valid = ok if valid is None else ok & valid.bool()
    err = (ray - _clean(gt_ray, valid)).abs().sum(dim=-1)
    err = ray_conf * err - alpha * torch.log(ray_conf.clamp(min=DEPTH_EPS))
    return masked_mean(err, valid)


def point_loss(
    depth: Tensor, ray: Tensor, gt_depth: Tensor, gt_w2c: Tensor, gt_K: Tensor, valid: Tensor | None = None
) -> Tensor:
    """Mean L1 (over xyz) between ``centre + depth * direction`` and GT world points, at the ray resolution.

    The predicted depth is resampled to the ray map like the GT (:func:`gt_points`), so depth = GT and
    rays = :func:`gt_rays` give exactly zero.
    """
    h, w = ray.shape[-3:-1]
    target, ok = gt_points(gt_depth, gt_w2c, gt_K, h, w, valid)
    pred = points_from_rays(_resize(depth, h, w), ray)
    err = (pred - _clean(target, ok)).abs().sum(dim=-1)
    return masked_mean(err, ok)


def camera_loss(pred_w2c: Tensor, pred_K: Tensor, gt_w2c: Tensor, gt_K: Tensor, H: int, W: int) -> Tensor:
    """Camera loss (each term a mean over views): L1 of the camera centres, the chordal distance of the
    camera-to-world rotations (Frobenius norm of R_pred - R_gt, 2 sqrt(2) sin(angle / 2): no sign ambiguity and no
    minimum but the right rotation, where an L1 of quaternions has flat spots at half-turn errors) and L1 of the
    two fovs."""
    p = pose_encoding(pred_w2c, pred_K, H, W)
    g = pose_encoding(gt_w2c, gt_K, H, W).detach().to(p.dtype)
    t = (p[..., :3] - g[..., :3]).abs().sum(-1)
    dR = pred_w2c[..., :3, :3] - gt_w2c[..., :3, :3].detach().to(p.dtype)  # R_w2c = R_c2w^T: same distance
    # Smoothed near 0 (pseudo-Huber below ~0.5 deg): the norm's gradient there would be a unit vector pointing
    # wherever rounding noise does (the first camera sits exactly at the identity).
    rot = (dR.square().sum((-1, -2)) + CHORDAL_EPS**2).sqrt() - CHORDAL_EPS
    fov = (p[..., 7:] - g[..., 7:]).abs().sum(-1)
    return t.mean() + rot.mean() + fov.mean()


@dataclass
class GeometryLossWeights(GeometryTerms):
    """Weights of the DA3 geometry terms (0 disables one; ``--loss.terms`` sets them) and the confidence
    regulariser."""

    conf_alpha: float = 0.2
    gradient_scales: int = 1


def geometry_losses(
    out: dict[str, Tensor],
    batch: dict[str, Tensor],
    weights: GeometryLossWeights | None = None,
    normalize: bool = True,
) -> tuple[Tensor, dict[str, Tensor]]:
    """DA3 geometry loss of a model output against GT.

    ``out``: the model's dict (depth, depth_conf, and optionally ray, ray_conf, extrinsics, intrinsics,
    reference_view; terms whose outputs are absent are skipped). ``batch``: ``depth`` (B, S, H, W), ``extrinsics``
    (B, S, 3|4, 4) w2c, ``intrinsics`` (B, S, 3, 3) in input pixels, optional ``valid`` (B, S, H, W) bool.

    With ``normalize`` the GT goes through :func:`normalize_scene` (the model's reference view at the identity,
    unit mean point distance), the frame the model predicts in, posed or not: so every sample's loss is on one
    scale, whatever unit and baseline its cameras came with (inference maps the prediction onto the caller's
    cameras afterwards). Returns (total, detached parts).
    """
    with torch.autocast(device_type=out["depth"].device.type, enabled=False):
        return _geometry_losses(_fp32(out), _fp32(batch), weights or GeometryLossWeights(), normalize)


def _fp32(d: dict) -> dict:
    # Geometry (inverses, unprojection, small differences) needs fp32 even when the model ran in bf16.
    low = (torch.float16, torch.bfloat16)
    return {k: v.float() if isinstance(v, Tensor) and v.dtype in low else v for k, v in d.items()}


def _geometry_losses(
    out: dict[str, Tensor], batch: dict[str, Tensor], wts: GeometryLossWeights, normalize: bool
) -> tuple[Tensor, dict[str, Tensor]]:
    gt_K, valid = batch["intrinsics"], batch.get("valid")
    gt_w2c, gt_depth = batch["extrinsics"], batch["depth"]
    if normalize:
        scene = normalize_scene(gt_w2c, gt_depth, gt_K, valid, out.get("reference_view"))
        gt_w2c, gt_depth = scene.w2c, scene.depth
    H, W = gt_depth.shape[-2:]
    parts: dict[str, Tensor] = {}
    if wts.depth:
        parts["depth"] = depth_loss(out["depth"], out["depth_conf"], gt_depth, valid, wts.conf_alpha)
    if wts.gradient:
        parts["gradient"] = gradient_loss(out["depth"], gt_depth, valid, wts.gradient_scales)
    if "ray" in out and wts.ray:
        h, w = out["ray"].shape[-3:-1]
        parts["ray"] = ray_loss(out["ray"], out["ray_conf"], gt_rays(gt_w2c, gt_K, H, W, h, w), None, wts.conf_alpha)
    if "ray" in out and wts.point:
        parts["point"] = point_loss(out["depth"], out["ray"], gt_depth, gt_w2c, gt_K, valid)
    if "extrinsics" in out and wts.camera:
        parts["camera"] = camera_loss(out["extrinsics"], out["intrinsics"], gt_w2c, gt_K, H, W)
    total = sum((getattr(wts, k) * v for k, v in parts.items()), out["depth"].sum() * 0.0)
    return total, {**{k: v.detach() for k, v in parts.items()}, "total": total.detach()}
