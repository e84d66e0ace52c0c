"""Cameras from a predicted ray map: Depth Anything 3's ``use_ray_pose`` solver.

Every ray-map pixel carries a world-frame ray direction and the camera centre. A confidence-weighted
homography maps a canonical image plane (identity camera, image spanning [-1, 1]) onto the directions
(divided by their z); its QL decomposition gives the camera-to-world rotation (orthonormal factor) and the
intrinsics (triangular factor). The centre is the confidence-weighted mean of the per-pixel centres.

The official solver samples RANSAC hypotheses from torch's global RNG. The draws here follow the official
order in both solvers, so the same ``torch.manual_seed`` gives the same hypotheses. The exact solver also
repeats the official float32 arithmetic (bit-identical on CPU). The fast default scores the hypotheses with
the same roundings in small serial steps (same inliers) and refits them through the 9x9 normal matrix in
float64 instead of a float32 full SVD of the (2N x 9) design matrix, whose (2N x 2N) U alone is ~1 GB and
~1.5 s at 8000 points. On pinhole-like ray maps the two agree to ~1e-5; on ill-conditioned ones (a
random-weight net's rays) the float32 SVD itself is off by up to ~1e-3 and the fast result is the float64 one.
Upstream behaviour kept on purpose (spec §7): the triangular factor is taken *lower* triangular although
``R @ K^-1`` has an upper-triangular ``K^-1``, so an off-centre principal point is not recovered.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_RANSAC_ITERS = 100
_SAMPLE_SIZE = 8  # points per RANSAC hypothesis
_CANDIDATE_RATIO = 0.3  # hypotheses are drawn from this fraction of most confident points
_REPROJ_THRESHOLD = 0.2  # inlier distance on the z=1 plane
_MIN_ABS_Z = 1e-4  # directions nearly parallel to the plane get weight 0
_MAX_REFIT_POINTS = 8000
_REFIT_KEEP_RATIO = 0.95  # when subsampling, draw from this fraction of most confident inliers
_VIEWS_PER_CHUNK = 2  # exact solver: bounds the (views, iters, N) RANSAC tensors; does not change the result
_CPU_STEP = 32767  # fast solver: points per scoring op on CPU, below torch's parallel grain (32768)


def _squared_threshold() -> float:
    """Largest float32 d2 with sqrt(d2) < _REPROJ_THRESHOLD as torch evaluates it: d2 <= it is the exact
    scoring's test without the sqrt (torch runs sqrt on its thread pool from 2048 elements on). Correctly
    rounded sqrt is monotonic, so the floats next to threshold**2 decide it."""
    near = torch.tensor(_REPROJ_THRESHOLD**2, dtype=torch.float32).view(torch.int32)
    d2 = (near + torch.arange(-64, 65, dtype=torch.int32)).view(torch.float32)
    return float(d2[d2.sqrt() < _REPROJ_THRESHOLD].max())


_MAX_SQ_DIST = _squared_threshold()


def _grid_axes(n: int, device: torch.device) -> Tensor:
    """Pixel centres of n pixels on a 2-unit-wide normalised axis, in (-1, 1).

    Built over (0, 2) and shifted by -1, which rounds exactly like the official unprojection.
    """
    half = 1.0 - 1.0 / n
    return torch.linspace(1.0 - half, 1.0 + half, n, dtype=torch.float32, device=device) - 1.0


def _camera_plane(h: int, w: int, device: torch.device) -> Tensor:
    """Pixel centres of an h x w map as (h*w, 2) [x, y], row-major."""
    ys, xs = torch.meshgrid(_grid_axes(h, device), _grid_axes(w, device), indexing="ij")
    return torch.stack([xs, ys], dim=-1).reshape(h * w, 2)


def _design_matrix(src: Tensor, dst: Tensor, weight: Tensor) -> Tensor:
    """DLT rows (..., 2K, 9) of A h = 0 for src (..., K, 2) -> dst (..., K, 2), scaled by sqrt(weight).

    All u-rows come before all v-rows, as upstream (the row order changes the SVD's rounding).
    """
    sw = weight.sqrt().unsqueeze(-1)
    x, y = src[..., 0:1], src[..., 1:2]
    u, v = dst[..., 0:1], dst[..., 1:2]
    zero = torch.zeros_like(x)
    rows_u = torch.cat([-x * sw, -y * sw, -sw, zero, zero, zero, x * u * sw, y * u * sw, u * sw], dim=-1)
    rows_v = torch.cat([zero, zero, zero, -x * sw, -y * sw, -sw, x * v * sw, y * v * sw, v * sw], dim=-1)
    return torch.cat([rows_u, rows_v], dim=-2)


def _fit_homography(src: Tensor, dst: Tensor, weight: Tensor) -> Tensor:
    """Weighted DLT as upstream: H (..., 3, 3), H[2, 2] = 1, from the last right-singular vector of the
    full SVD (float32)."""
    hom = torch.linalg.svd(_design_matrix(src, dst, weight)).Vh[..., -1, :].unflatten(-1, (3, 3))
    return hom / hom[..., 2:3, 2:3]


def _fit_homography_normal(src: Tensor, dst: Tensor, weight: Tensor) -> Tensor:
    """Weighted DLT from the eigenvector of A^T A (9 x 9) with the smallest eigenvalue: the same null
    vector as the SVD's. Float64 keeps the squared condition number harmless; the result is float32."""
    design = _design_matrix(src.double(), dst.double(), weight.double())
    hom = torch.linalg.eigh(design.mT @ design).eigenvectors[..., 0].unflatten(-1, (3, 3))
    return (hom / hom[..., 2:3, 2:3]).float()


def _draw_hypotheses(n_points: int, device: torch.device) -> tuple[int, Tensor]:
    """Sample index sets (iters, 8) into the candidate list, shared by all views (one draw per call)."""
    n_candidates = max(_SAMPLE_SIZE, int(n_points * _CANDIDATE_RATIO))
    picks = [torch.randperm(n_candidates, device=device)[:_SAMPLE_SIZE] for _ in range(_RANSAC_ITERS)]
    return n_candidates, torch.stack(picks)


def _hypotheses(src: Tensor, dst: Tensor, weight: Tensor, n_candidates: int, picks: Tensor) -> Tensor:
    """RANSAC homographies (V, iters, 3, 3) of views (V, N, ...) from their most confident points."""
    candidates = torch.argsort(weight, dim=1, descending=True)[:, :n_candidates]
    chosen = candidates[:, picks]  # (V, iters, 8) point indices
    view_idx = torch.arange(src.shape[0], device=src.device).view(-1, 1, 1)
    return _fit_homography(src[view_idx, chosen], dst[view_idx, chosen], weight[view_idx, chosen])


def _best_inliers(src: Tensor, dst: Tensor, weight: Tensor, n_candidates: int, picks: Tensor) -> Tensor:
    """Exact RANSAC scoring for views (V, N, ...): inlier mask (V, N) of the hypothesis with most inlier
    weight, all hypotheses of all views in one (V, iters, N) batch as upstream."""
    views, n_points, _ = src.shape
    hyps = _hypotheses(src, dst, weight, n_candidates, picks)
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


def _grid_inliers(
    hyps: Tensor, xs: Tensor, ys: Tensor, u: Tensor, v: Tensor, weight: Tensor | None, out: Tensor
) -> Tensor:
    """out (K, h*w) := inlier indicator times weight (or the bool indicator when weight is None), for
    hypotheses (K, 3, 3) on the pixel grid xs (w,), ys (h,) with targets u, v (h*w,). The values are the
    exact scoring's, bit for bit on CPU.

    H [x, y, 1] is summed as (H0 x + H1 y) + H2, the batched matmul's rounding, and the rest repeats the
    exact scoring op by op. x varies along each row and y down the columns, so the products are outer sums of
    two short vectors. On CPU each step covers one hypothesis and fewer points than torch's parallel grain,
    in a reused buffer: serial ops need no thread-pool hand-off (a scheduler slice per op whenever another
    process holds a core) and no fresh multi-MB temporaries (page faults).
    """
    h, w = len(ys), len(xs)
    n_hyps, n_rows = len(hyps), h
    if u.device.type == "cpu":  # one hypothesis, equal row blocks under the step size
        n_hyps, n_rows = 1, math.ceil(h / math.ceil(h * w / _CPU_STEP))
    # Views of every (hypothesis block, component) made up front, in bulk: per-step indexing from Python
    # would cost more than the arithmetic.
    cols = [block.unbind(1) for block in (hyps[:, :, 0:1] * xs).unsqueeze(-2).split(n_hyps)]  # (k, 1, w) each
    shifts = [block.unbind(1) for block in hyps[:, :, 2, None, None].split(n_hyps)]  # (k, 1, 1) each
    buf = u.new_empty(3, n_hyps * n_rows * w)
    for r, rows in enumerate((hyps[:, :, 1:2] * ys).unsqueeze(-1).split(n_rows, dim=2)):  # (K, 3, rows, 1)
        size = rows.shape[2] * w
        pts = slice(r * n_rows * w, r * n_rows * w + size)
        u_part, v_part = u[pts], v[pts]
        w_part = weight[pts] if weight is not None else None
        row_parts = [block.unbind(1) for block in rows.split(n_hyps)]
        num = [buf[c, : n_hyps * size].view(n_hyps, -1, w) for c in range(3)]  # every block has n_hyps
        du, dv, den = (n.view(n_hyps, size) for n in num)
        for col, row, shift, hit in zip(cols, row_parts, shifts, out[:, pts].split(n_hyps)):
            for c in range(3):
                torch.add(col[c], row[c], out=num[c]).add_(shift[c])
            du.div_(den).sub_(u_part)
            dv.div_(den).sub_(v_part)
            torch.le(du.mul_(du).add_(dv.mul_(dv)), _MAX_SQ_DIST, out=hit)
            if w_part is not None:
                hit.mul_(w_part)
    return out


def _best_inliers_grid(
    hyps: Tensor, xs: Tensor, ys: Tensor, u: Tensor, v: Tensor, weight: Tensor, scratch: Tensor
) -> Tensor:
    """Fast RANSAC scoring of one view, hyps (iters, 3, 3), targets u, v (N,): the exact scoring's inlier mask
    (N,). scratch: float32 (iters, N), reused across views (its first touch costs page faults)."""
    # Inlier weights, each row summed whole in one call: the exact scores, bit for bit.
    best = int(torch.argmax(_grid_inliers(hyps, xs, ys, u, v, weight, scratch).sum(dim=-1)))
    mask = torch.empty(1, u.numel(), dtype=torch.bool, device=u.device)
    return _grid_inliers(hyps[best : best + 1], xs, ys, u, v, None, mask)[0]


def _refit(src: Tensor, dst: Tensor, weight: Tensor, exact: bool) -> Tensor:
    """Final homography of one view from its inliers, most confident first (this order is upstream's).

    Above the point cap, a random subset is drawn from the most confident 95 % (one RNG draw). The fast
    fit sums over the points, so it needs the order only for that draw.
    """
    if weight.numel() < 4:  # upstream fails here too; a homography needs 4 points
        raise ValueError("ray pose: fewer than 4 RANSAC inliers; the ray map is not a pinhole camera")
    if not exact and weight.numel() <= _MAX_REFIT_POINTS:
        return _fit_homography_normal(src, dst, weight)
    order = torch.argsort(weight, descending=True)
    if order.numel() > _MAX_REFIT_POINTS:
        order = order[: max(int(order.numel() * _REFIT_KEEP_RATIO), _MAX_REFIT_POINTS)]
        order = order[torch.randperm(order.numel(), device=order.device)[:_MAX_REFIT_POINTS]]
    fit = _fit_homography if exact else _fit_homography_normal
    return fit(src[order], dst[order], weight[order])


def _ql(mat: Tensor) -> tuple[Tensor, Tensor]:
    """mat = Q @ L with Q orthonormal and L lower triangular with a non-negative diagonal.

    Reversing the columns turns QR into QL: Q R = mat[:, ::-1]  =>  mat = Q[:, ::-1] @ R[::-1, ::-1].
    """
    q, r = torch.linalg.qr(mat.flip(-1))
    q, lower = q.flip(-1), r.flip(-2, -1)
    sign = torch.sign(torch.diagonal(lower, dim1=-2, dim2=-1))
    return q * sign.unsqueeze(-2), lower * sign.unsqueeze(-1)


def _solve_views(ray: Tensor, weight: Tensor, h: int, w: int, exact: bool) -> tuple[Tensor, ...]:
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
    if exact:
        for start in range(0, views, _VIEWS_PER_CHUNK):
            part = slice(start, start + _VIEWS_PER_CHUNK)
            inliers = _best_inliers(src[part], dst[part], weight[part], n_candidates, picks)
            for v, mask in zip(range(views)[part], inliers):
                homs.append(_refit(src[v][mask], dst[v][mask], weight[v][mask], exact))
    else:
        hyps = _hypotheses(src, dst, weight, n_candidates, picks)
        xs, ys = _grid_axes(w, ray.device), _grid_axes(h, ray.device)
        us, vs = dst[..., 0].contiguous(), dst[..., 1].contiguous()
        scratch = ray.new_empty(_RANSAC_ITERS, n_points)
        for v in range(views):
            mask = _best_inliers_grid(hyps[v], xs, ys, us[v], vs[v], weight[v], scratch)
            homs.append(_refit(src[v][mask], dst[v][mask], weight[v][mask], exact))
    hom = torch.stack(homs)
    # The homography's scale sign is arbitrary; choose it so the rotation factor is proper.
    hom = torch.where((torch.linalg.det(hom) < 0).view(-1, 1, 1), -hom, hom)
    rot, lower = _ql(hom)
    lower = lower / lower[..., 2:3, 2:3]

    centre = (ray[..., 3:] * weight.unsqueeze(-1)).sum(dim=1) / weight.sum(dim=-1, keepdim=True)
    return rot, centre, lower


def cameras_from_rays(
    ray: Tensor, ray_conf: Tensor, height: int, width: int, *, exact: bool = False
) -> tuple[Tensor, Tensor]:
    """ray (B,S,h,w,6) [dir xyz, camera centre xyz] in the world frame, ray_conf (B,S,h,w);
    height/width = network input size (pixels). Returns (extrinsics (B,S,3,4) world-to-camera OpenCV,
    intrinsics (B,S,3,3) in pixels of the network input).

    Consumes torch's global RNG exactly like the official solver (seed it for reproducible results).
    ``exact=True`` repeats the official arithmetic, bit-identical on CPU but 40-70x slower on da3-small's
    ray maps (benchmarks/ray_pose.py); the default takes the same hypotheses and inliers and differs only by
    the float32 rounding of the exact refit (see the module docstring). The inputs are not modified.
    """
    b, s, h, w, _ = ray.shape
    with torch.autocast(device_type=ray.device.type, enabled=False):
        flat_ray = ray.float().reshape(b * s, h * w, 6)
        flat_conf = ray_conf.float().reshape(b * s, h * w)
        rot, centre, lower = _solve_views(flat_ray, flat_conf, h, w, exact)
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
