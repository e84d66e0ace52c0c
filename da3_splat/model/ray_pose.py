"""Cameras from a predicted ray map: Depth Anything 3's ``use_ray_pose`` solver.

Every ray-map pixel carries a world-frame ray direction and the camera centre. A confidence-weighted
homography maps a canonical image plane (identity camera, image spanning [-1, 1]) onto the directions
(divided by their z); its QL decomposition gives the camera-to-world rotation (orthonormal factor) and the
intrinsics (triangular factor). The centre is the confidence-weighted mean of the per-pixel centres.

The official solver samples RANSAC hypotheses from torch's global RNG. The draws here (and the float32
arithmetic) follow the official order, so the same ``torch.manual_seed`` gives the same cameras.
Upstream behaviour kept on purpose (spec §7): the triangular factor is taken *lower* triangular although
``R @ K^-1`` has an upper-triangular ``K^-1``, so an off-centre principal point is not recovered.
"""

from __future__ import annotations

import torch
from torch import Tensor

_RANSAC_ITERS = 100
_SAMPLE_SIZE = 8  # points per RANSAC hypothesis
_CANDIDATE_RATIO = 0.3  # hypotheses are drawn from this fraction of most confident points
_REPROJ_THRESHOLD = 0.2  # inlier distance on the z=1 plane
_MIN_ABS_Z = 1e-4  # directions nearly parallel to the plane get weight 0
_MAX_REFIT_POINTS = 8000
_REFIT_KEEP_RATIO = 0.95  # when subsampling, draw from this fraction of most confident inliers
_VIEWS_PER_CHUNK = 2  # bounds the (views, iters, N) RANSAC tensors; does not change the result


def _camera_plane(h: int, w: int, device: torch.device) -> Tensor:
    """Pixel centres of an h x w map on a 2-unit-wide normalised image, as (h*w, 2) [x, y] in (-1, 1).

    Built as a grid over (0, 2) shifted by -1, which rounds exactly like the official unprojection.
    """

    def axis(n: int) -> Tensor:
        half = 1.0 - 1.0 / n
        return torch.linspace(1.0 - half, 1.0 + half, n, dtype=torch.float32, device=device) - 1.0

    ys, xs = torch.meshgrid(axis(h), axis(w), indexing="ij")
    return torch.stack([xs, ys], dim=-1).reshape(h * w, 2)


def _fit_homography(src: Tensor, dst: Tensor, weight: Tensor, exact_svd: bool = True) -> Tensor:
    """Weighted DLT: H (..., 3, 3) with H[2, 2] = 1 mapping src (..., K, 2) to dst (..., K, 2).

    Each point gives two rows of A h = 0 scaled by sqrt(weight); h is the last right-singular vector.
    All u-rows come before all v-rows, as upstream (the row order changes the SVD's rounding).
    ``exact_svd=False`` uses the thin SVD: identical maths, far cheaper for many points, but not
    bit-identical to the official full SVD.
    """
    sw = weight.sqrt().unsqueeze(-1)
    x, y = src[..., 0:1], src[..., 1:2]
    u, v = dst[..., 0:1], dst[..., 1:2]
    zero = torch.zeros_like(x)
    rows_u = torch.cat([-x * sw, -y * sw, -sw, zero, zero, zero, x * u * sw, y * u * sw, u * sw], dim=-1)
    rows_v = torch.cat([zero, zero, zero, -x * sw, -y * sw, -sw, x * v * sw, y * v * sw, v * sw], dim=-1)
    design = torch.cat([rows_u, rows_v], dim=-2)
    vh = torch.linalg.svd(design, full_matrices=exact_svd).Vh
    hom = vh[..., -1, :].unflatten(-1, (3, 3))
    return hom / hom[..., 2:3, 2:3]


def _draw_hypotheses(n_points: int, device: torch.device) -> tuple[int, Tensor]:
    """Sample index sets (iters, 8) into the candidate list, shared by all views (one draw per call)."""
    n_candidates = max(_SAMPLE_SIZE, int(n_points * _CANDIDATE_RATIO))
    picks = [torch.randperm(n_candidates, device=device)[:_SAMPLE_SIZE] for _ in range(_RANSAC_ITERS)]
    return n_candidates, torch.stack(picks)


def _best_inliers(src: Tensor, dst: Tensor, weight: Tensor, n_candidates: int, picks: Tensor) -> Tensor:
    """RANSAC scoring for views (V, N, ...): inlier mask (V, N) of the hypothesis with most inlier weight."""
    views, n_points, _ = src.shape
    candidates = torch.argsort(weight, dim=1, descending=True)[:, :n_candidates]
    chosen = candidates[:, picks]  # (V, iters, 8) point indices
    view_idx = torch.arange(views, device=src.device).view(views, 1, 1)
    hyps = _fit_homography(src[view_idx, chosen], dst[view_idx, chosen], weight[view_idx, chosen])

    # Project every point with every hypothesis, as one (V*iters) batch of (N, 3) @ (3, 3) products.
    src_h = torch.cat([src, torch.ones_like(src[..., :1])], dim=-1)
    src_h = src_h.unsqueeze(1).expand(views, _RANSAC_ITERS, n_points, 3).reshape(-1, n_points, 3)
    proj = torch.bmm(src_h, hyps.reshape(-1, 3, 3).transpose(1, 2))
    proj = (proj[..., :2] / proj[..., 2:3]).reshape(views, _RANSAC_ITERS, n_points, 2)
    dist = ((proj - dst.unsqueeze(1)) ** 2).sum(dim=-1).sqrt()
    inliers = dist < _REPROJ_THRESHOLD  # NaN distances (degenerate hypotheses) count as outliers
    score = (inliers * weight.unsqueeze(1)).sum(dim=-1)
    best = torch.argmax(score, dim=1)
    return inliers[torch.arange(views, device=src.device), best]


def _refit(src: Tensor, dst: Tensor, weight: Tensor, exact_svd: bool) -> Tensor:
    """Final homography of one view from its inliers, most confident first (this order is upstream's).

    Above the point cap, a random subset is drawn from the most confident 95 % (one RNG draw).
    """
    if weight.numel() < 4:  # upstream fails here too; a homography needs 4 points
        raise ValueError("ray pose: fewer than 4 RANSAC inliers; the ray map is not a pinhole camera")
    order = torch.argsort(weight, descending=True)
    if order.numel() > _MAX_REFIT_POINTS:
        order = order[: max(int(order.numel() * _REFIT_KEEP_RATIO), _MAX_REFIT_POINTS)]
        order = order[torch.randperm(order.numel(), device=order.device)[:_MAX_REFIT_POINTS]]
    return _fit_homography(src[order], dst[order], weight[order], exact_svd)


def _ql(mat: Tensor) -> tuple[Tensor, Tensor]:
    """mat = Q @ L with Q orthonormal and L lower triangular with a non-negative diagonal.

    Reversing the columns turns QR into QL: Q R = mat[:, ::-1]  =>  mat = Q[:, ::-1] @ R[::-1, ::-1].
    """
    q, r = torch.linalg.qr(mat.flip(-1))
    q, lower = q.flip(-1), r.flip(-2, -1)
    sign = torch.sign(torch.diagonal(lower, dim1=-2, dim2=-1))
    return q * sign.unsqueeze(-2), lower * sign.unsqueeze(-1)


def _solve_views(ray: Tensor, weight: Tensor, h: int, w: int, exact_svd: bool) -> tuple[Tensor, ...]:
    """ray (V, N, 6), weight (V, N) -> c2w rotation (V, 3, 3), centre (V, 3), L diagonal/pp terms."""
    views, n_points, _ = ray.shape
    src = _camera_plane(h, w, ray.device).expand(views, n_points, 2)
    dirs = ray[..., :3]
    valid = dirs[..., 2].abs() > _MIN_ABS_Z
    # Invalid points keep their raw x, y: with zero weight they still sit in the inlier set (as zero rows).
    dst = torch.where(valid.unsqueeze(-1), dirs[..., :2] / dirs[..., 2:3], dirs[..., :2])
    weight = torch.where(valid, weight, torch.zeros_like(weight))

    n_candidates, picks = _draw_hypotheses(n_points, ray.device)
    homs = []
    for start in range(0, views, _VIEWS_PER_CHUNK):
        part = slice(start, start + _VIEWS_PER_CHUNK)
        inliers = _best_inliers(src[part], dst[part], weight[part], n_candidates, picks)
        for v, mask in zip(range(views)[part], inliers):
            homs.append(_refit(src[v][mask], dst[v][mask], weight[v][mask], exact_svd))
    hom = torch.stack(homs)
    # The homography's scale sign is arbitrary; choose it so the rotation factor is proper.
    hom = torch.where((torch.linalg.det(hom) < 0).view(-1, 1, 1), -hom, hom)
    rot, lower = _ql(hom)
    lower = lower / lower[..., 2:3, 2:3]

    centre = (ray[..., 3:] * weight.unsqueeze(-1)).sum(dim=1) / weight.sum(dim=-1, keepdim=True)
    return rot, centre, lower


def cameras_from_rays(
    ray: Tensor, ray_conf: Tensor, height: int, width: int, *, exact_svd: bool = True
) -> tuple[Tensor, Tensor]:
    """ray (B,S,h,w,6) [dir xyz, camera centre xyz] in the world frame, ray_conf (B,S,h,w);
    height/width = network input size (pixels). Returns (extrinsics (B,S,3,4) world-to-camera OpenCV,
    intrinsics (B,S,3,3) in pixels of the network input).

    Consumes torch's global RNG exactly like the official solver (seed it for reproducible results).
    ``exact_svd=False`` makes the inlier refit ~1000x cheaper for large ray maps at the cost of
    bit-parity with the official implementation (differences at float32 rounding level).
    The inputs are not modified.
    """
    b, s, h, w, _ = ray.shape
    with torch.autocast(device_type=ray.device.type, enabled=False):
        flat_ray = ray.float().reshape(b * s, h * w, 6)
        flat_conf = ray_conf.float().reshape(b * s, h * w)
        rot, centre, lower = _solve_views(flat_ray, flat_conf, h, w, exact_svd)
        rot = rot.reshape(b, s, 3, 3)
        centre = centre.reshape(b, s, 3, 1)

        # [rot | centre] is camera-to-world; invert the rigid transform to get world-to-camera.
        rot_w2c = rot.mT
        extrinsics = torch.cat([rot_w2c, -rot_w2c @ centre], dim=-1)

        # L is expressed on the 2-unit normalised image: focal 1/L[i][i], principal point L[2][i] + 1.
        focal = (1.0 / torch.stack([lower[:, 0, 0], lower[:, 1, 1]], dim=-1)).reshape(b, s, 2)
        pp = (torch.stack([lower[:, 2, 0], lower[:, 2, 1]], dim=-1) + 1.0).reshape(b, s, 2)
        intrinsics = torch.zeros(b, s, 3, 3, dtype=torch.float32, device=ray.device)
        intrinsics[..., 0, 0] = focal[..., 0] / 2 * width
        intrinsics[..., 1, 1] = focal[..., 1] / 2 * height
        intrinsics[..., 0, 2] = pp[..., 0] * width * 0.5
        intrinsics[..., 1, 2] = pp[..., 1] * height * 0.5
        intrinsics[..., 2, 2] = 1.0
    return extrinsics, intrinsics
