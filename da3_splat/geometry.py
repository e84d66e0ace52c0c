"""Camera conventions, rotations, rays, unprojection and Sim(3) alignment.

Conventions used across da3-splat:
- ``w2c``: world-to-camera, OpenCV axes (x right, y down, z forward), shape (..., 3, 4) or (..., 4, 4).
  This is what DA3 predicts and what gsplat takes as ``viewmats``.
- ``c2w_gl``: camera-to-world in OpenGL/nerfstudio axes (x right, y up, z back), as in ``transforms.json``.
- Quaternions are ``xyzw`` (scalar last) where they interface with DA3's pose encoding, and ``wxyz`` where they
  interface with gsplat; every function says which.
- Depth is planar z-depth: ``X_cam = depth * K^-1 [u, v, 1]``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

# OpenCV <-> OpenGL camera axes differ by flipping y and z.
_CV_TO_GL = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))


# --------------------------------------------------------------------------------------------------
# Rigid transforms


def as_homogeneous(T: Tensor) -> Tensor:
    """(..., 3, 4) or (..., 4, 4) -> (..., 4, 4)."""
    if T.shape[-2] == 4:
        return T
    bottom = torch.zeros(*T.shape[:-2], 1, 4, dtype=T.dtype, device=T.device)
    bottom[..., 0, 3] = 1
    return torch.cat([T, bottom], dim=-2)


def rigid_inverse(T: Tensor) -> Tensor:
    """Inverse of a rigid (or similarity-free) transform [R|t]; keeps the input's row count (3 or 4)."""
    R, t = T[..., :3, :3], T[..., :3, 3:]
    Rt = R.transpose(-1, -2)
    inv = torch.cat([Rt, -Rt @ t], dim=-1)
    return as_homogeneous(inv) if T.shape[-2] == 4 else inv


def w2c_to_c2w(w2c: Tensor) -> Tensor:
    return rigid_inverse(w2c)


def c2w_to_w2c(c2w: Tensor) -> Tensor:
    return rigid_inverse(c2w)


def opencv_w2c_to_opengl_c2w(w2c: Tensor) -> Tensor:
    """DA3 / gsplat extrinsics -> nerfstudio ``transform_matrix`` (4x4)."""
    c2w = as_homogeneous(rigid_inverse(w2c))
    return c2w @ _CV_TO_GL.to(c2w)


def opengl_c2w_to_opencv_w2c(c2w_gl: Tensor) -> Tensor:
    """nerfstudio ``transform_matrix`` (3x4 or 4x4) -> OpenCV world-to-camera (4x4)."""
    c2w_cv = as_homogeneous(c2w_gl) @ _CV_TO_GL.to(c2w_gl)
    return rigid_inverse(c2w_cv)


def camera_centers(w2c: Tensor) -> Tensor:
    """World positions of the cameras, (..., 3)."""
    R, t = w2c[..., :3, :3], w2c[..., :3, 3:]
    return (-R.transpose(-1, -2) @ t)[..., 0]


def normalize_extrinsics(w2c: Tensor) -> Tensor:
    """DA3's normalisation of conditioning poses (per batch): the first view becomes the identity and
    translations are divided by the median camera distance (clamped at 0.1).

    w2c: (B, S, 4, 4) or (B, S, 3, 4). Returns (B, S, 4, 4).
    """
    rel, scale = _relative_to_first(w2c)
    rel[..., :3, 3] = rel[..., :3, 3] / scale
    return rel


def _relative_to_first(w2c: Tensor) -> tuple[Tensor, Tensor]:
    w2c = as_homogeneous(w2c)
    rel = (w2c @ rigid_inverse(w2c[:, :1])).clone()
    # torch.median returns the lower middle value for an even count; DA3 relies on that.
    scale = torch.median(camera_centers(rel).norm(dim=-1).flatten()).clamp(min=0.1)
    return rel, scale


def normalize_scene(context_w2c: Tensor, *others: Tensor) -> tuple[Tensor, list[Tensor], Tensor]:
    """Put a training sample in the frame DA3 is conditioned in: the first context camera at the identity and
    translations divided by the median context-camera distance (``normalize_extrinsics``). ``others`` are
    further w2c sets (B, T, 4, 4) moved the same way. Returns (context, others, scale (B,)); divide depths by
    ``scale`` too. Per batch element, unlike ``normalize_extrinsics`` (one scale for the whole batch)."""
    ctx = as_homogeneous(context_w2c)
    first_inv = rigid_inverse(ctx[:, :1])
    rel = ctx @ first_inv
    scale = torch.stack([torch.median(camera_centers(r).norm(dim=-1)) for r in rel]).clamp(min=0.1)

    def move(w2c: Tensor) -> Tensor:
        out = (as_homogeneous(w2c) @ first_inv).clone()
        out[..., :3, 3] = out[..., :3, 3] / scale[:, None, None]
        return out

    return move(ctx), [move(o) for o in others], scale


def normalization_sim3(w2c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The similarity (R, t, s) taking the frame of ``normalize_extrinsics(w2c)`` back to the frame of ``w2c``
    (first sample of the batch): x = s R x_norm + t."""
    _, scale = _relative_to_first(w2c)
    first = as_homogeneous(w2c)[0, 0]
    R0, t0 = first[:3, :3], first[:3, 3]
    return R0.T, -R0.T @ t0, scale


# --------------------------------------------------------------------------------------------------
# Rotations


def so3_exp(omega: Tensor) -> Tensor:
    """Rotation matrices (..., 3, 3) of axis-angle vectors (..., 3) by Rodrigues' formula, differentiable everywhere
    (second-order Taylor terms near 0, where sin(theta) / theta is 0 / 0)."""
    theta2 = (omega * omega).sum(-1)[..., None, None]
    small = theta2 < 1e-8
    safe = torch.where(small, torch.ones_like(theta2), theta2)  # keeps the unused branch's gradient finite
    theta = safe.sqrt()
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / safe)
    x, y, z = omega.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).unflatten(-1, (3, 3))
    eye = torch.eye(3, dtype=omega.dtype, device=omega.device)
    return eye + a * k + b * (k @ k)


def so3_log(R: Tensor) -> Tensor:
    """Axis-angle vectors (..., 3) of rotation matrices (..., 3, 3), the inverse of :func:`so3_exp` for angles below
    pi; atan2 keeps the angle accurate near 0 and differentiable at the identity."""
    v = torch.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], -1) / 2
    sin = (v.square().sum(-1) + 1e-30).sqrt()
    angle = torch.atan2(sin, (R.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2)
    return v * (angle / sin)[..., None]


def quat_xyzw_to_matrix(q: Tensor) -> Tensor:
    """Quaternion (x, y, z, w) -> rotation matrix. Uses 2/|q|^2, so ``q`` need not be unit length
    (DA3's camera decoder relies on this)."""
    x, y, z, w = q.unbind(-1)
    s = 2.0 / (q * q).sum(-1)
    m = torch.stack(
        (
            1 - s * (y * y + z * z),
            s * (x * y - z * w),
            s * (x * z + y * w),
            s * (x * y + z * w),
            1 - s * (x * x + z * z),
            s * (y * z - x * w),
            s * (x * z - y * w),
            s * (y * z + x * w),
            1 - s * (x * x + y * y),
        ),
        dim=-1,
    )
    return m.reshape(*q.shape[:-1], 3, 3)


def matrix_to_quat_xyzw(R: Tensor) -> Tensor:
    """Rotation matrix -> quaternion (x, y, z, w) with w >= 0.

    Shepperd's method: of the four algebraically equivalent formulas (each divides by one of 4w, 4x, 4y, 4z),
    use the one whose divisor is largest, which keeps the result well conditioned near 180-degree rotations.
    """
    m = R.reshape(*R.shape[:-2], 9)
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = m.unbind(-1)
    # 4*w^2, 4*x^2, 4*y^2, 4*z^2 (clamped: rounding can make them slightly negative).
    sq = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], dim=-1)
    mag = torch.sqrt(sq.clamp(min=0))  # 2|w|, 2|x|, 2|y|, 2|z|
    # Row k: (w, x, y, z) scaled by 4*q_k; divide by 2*mag_k (floored) to get the quaternion.
    rows = torch.stack(
        [
            torch.stack([sq[..., 0], m21 - m12, m02 - m20, m10 - m01], -1),
            torch.stack([m21 - m12, sq[..., 1], m10 + m01, m02 + m20], -1),
            torch.stack([m02 - m20, m10 + m01, sq[..., 2], m12 + m21], -1),
            torch.stack([m10 - m01, m20 + m02, m21 + m12, sq[..., 3]], -1),
        ],
        dim=-2,
    )
    # The diagonal of `rows` uses mag^2 (not the clamped sq) for the exact same rounding as the divisor.
    rows = rows.clone()
    idx = torch.arange(4, device=R.device)
    rows[..., idx, idx] = mag * mag
    best = mag.argmax(dim=-1, keepdim=True)
    chosen = torch.gather(rows, -2, best[..., None].expand(*best.shape, 4))[..., 0, :]
    denom = 2.0 * torch.gather(mag, -1, best).clamp(min=0.1)
    wxyz = chosen / denom
    xyzw = torch.cat([wxyz[..., 1:], wxyz[..., :1]], dim=-1)
    return torch.where(xyzw[..., 3:] < 0, -xyzw, xyzw)


def quat_wxyz_to_xyzw(q: Tensor) -> Tensor:
    return torch.cat([q[..., 1:], q[..., :1]], dim=-1)


def quat_xyzw_to_wxyz(q: Tensor) -> Tensor:
    return torch.cat([q[..., 3:], q[..., :3]], dim=-1)


def quat_mul_wxyz(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product a ⊗ b of wxyz quaternions (rotation of b followed by a)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        dim=-1,
    )


def matrix_to_quat_wxyz(R: Tensor) -> Tensor:
    return quat_xyzw_to_wxyz(matrix_to_quat_xyzw(R))


# --------------------------------------------------------------------------------------------------
# DA3 pose encoding: [t (3), q_xyzw (4), fov_h, fov_w], describing camera-to-world.


def pose_encoding_to_cameras(enc: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """(..., 9) -> (c2w (..., 3, 4), K (..., 3, 3)) with the principal point at the image centre."""
    t, q, fov_h, fov_w = enc[..., :3], enc[..., 3:7], enc[..., 7], enc[..., 8]
    c2w = torch.cat([quat_xyzw_to_matrix(q), t[..., None]], dim=-1)
    fy = (height / 2.0) / torch.tan(fov_h / 2.0).clamp(min=1e-6)
    fx = (width / 2.0) / torch.tan(fov_w / 2.0).clamp(min=1e-6)
    K = torch.zeros(*enc.shape[:-1], 3, 3, dtype=enc.dtype, device=enc.device)
    K[..., 0, 0], K[..., 1, 1] = fx, fy
    K[..., 0, 2], K[..., 1, 2], K[..., 2, 2] = width / 2, height / 2, 1.0
    return c2w, K


def cameras_to_pose_encoding(c2w: Tensor, K: Tensor, height: int, width: int) -> Tensor:
    """Inverse of :func:`pose_encoding_to_cameras` (the principal point is ignored)."""
    fov_h = 2 * torch.atan((height / 2) / K[..., 1, 1])
    fov_w = 2 * torch.atan((width / 2) / K[..., 0, 0])
    q = matrix_to_quat_xyzw(c2w[..., :3, :3])
    return torch.cat([c2w[..., :3, 3], q, fov_h[..., None], fov_w[..., None]], dim=-1).float()


# --------------------------------------------------------------------------------------------------
# Rays and unprojection


def pixel_grid(height: int, width: int, *, offset: float = 0.0, device=None, dtype=torch.float32) -> Tensor:
    """(H, W, 3) homogeneous pixel coordinates [u + offset, v + offset, 1]."""
    v, u = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype) + offset,
        torch.arange(width, device=device, dtype=dtype) + offset,
        indexing="ij",
    )
    return torch.stack([u, v, torch.ones_like(u)], dim=-1)


def depth_to_camera_points(depth: Tensor, K: Tensor, *, offset: float = 0.0) -> Tensor:
    """Planar depth (..., H, W) and K (..., 3, 3) -> camera-frame points (..., H, W, 3)."""
    H, W = depth.shape[-2:]
    pix = pixel_grid(H, W, offset=offset, device=depth.device, dtype=depth.dtype)
    rays = torch.einsum("...ij,hwj->...hwi", torch.linalg.inv(K), pix)
    return rays * depth[..., None]


def depth_to_world_points(depth: Tensor, K: Tensor, w2c: Tensor, *, offset: float = 0.0) -> Tensor:
    """Planar depth + intrinsics + world-to-camera -> world points (..., H, W, 3)."""
    cam = depth_to_camera_points(depth, K, offset=offset)
    c2w = rigid_inverse(w2c)
    R, t = c2w[..., :3, :3], c2w[..., :3, 3]
    return torch.einsum("...ij,...hwj->...hwi", R, cam) + t[..., None, None, :]


def points_from_rays(depth: Tensor, ray: Tensor) -> Tensor:
    """DA3's ray parameterisation: P = t + D * d, with ray[..., :3] the direction d (camera z = 1 scaling)
    and ray[..., 3:] the camera centre t. depth (..., h, w), ray (..., h, w, 6) -> (..., h, w, 3)."""
    return ray[..., 3:] + depth[..., None] * ray[..., :3]


# --------------------------------------------------------------------------------------------------
# Alignment


def umeyama(src: Tensor, dst: Tensor, weights: Tensor | None = None, with_scale: bool = True):
    """Least-squares similarity transform with ``dst ~ s * R @ src + t`` (Umeyama 1991).

    src, dst: (..., N, 3), weights (..., N): any leading batch dimensions fit independently. Returns
    (R (..., 3, 3), t (..., 3), s (...)). Computed in float64 for stability.
    """
    if src.shape[-2] < 2:
        raise ValueError("umeyama needs at least 2 points")
    dtype = src.dtype
    src, dst = src.double(), dst.double()
    w = torch.ones(src.shape[:-1], dtype=src.dtype, device=src.device) if weights is None else weights.double()
    w = w / w.sum(-1, keepdim=True)
    mu_s, mu_d = (w[..., None] * src).sum(-2), (w[..., None] * dst).sum(-2)
    xs, xd = src - mu_s[..., None, :], dst - mu_d[..., None, :]
    var_s = (w * (xs * xs).sum(-1)).sum(-1)
    cov = (w[..., None, None] * xd[..., :, None] * xs[..., None, :]).sum(-3)
    U, D, Vt = torch.linalg.svd(cov)
    E = torch.ones_like(D)
    E[..., 2] = torch.where(torch.det(U) * torch.det(Vt) < 0, -1.0, 1.0)  # a reflection is not a rotation
    R = U @ torch.diag_embed(E) @ Vt
    s = (D * E).sum(-1) / var_s.clamp(min=1e-12) if with_scale else torch.ones_like(var_s)
    t = mu_d - ((s[..., None, None] * R) @ mu_s[..., None]).squeeze(-1)
    return R.to(dtype), t.to(dtype), s.to(dtype)


def umeyama_ransac(src: Tensor, dst: Tensor, iters: int = 10, seed: int = 42):
    """``umeyama`` robust to outlier pairs, the way DA3's API aligns predicted cameras with 10+ given ones.

    ``iters`` fits on random halves (numpy's default_rng(seed), so runs repeat) score their inliers: pairs
    within the median nearest-neighbour distance after a fit on all pairs. The most inliers (then the lowest
    mean error) win and are refitted; returns (R, t, s) as ``umeyama``.
    """
    n = src.shape[0]
    if n < 3:
        return umeyama(src, dst)
    best = umeyama(src, dst)
    moved = best[2] * src.double() @ best[0].double().T + best[1].double()
    threshold = float(np.median(torch.cdist(moved, dst.double()).min(dim=1).values.numpy()))
    rng = np.random.default_rng(seed)
    best_inliers, best_score = None, (-1, float("inf"))
    for _ in range(iters):
        pick = torch.from_numpy(rng.choice(n, size=max(3, (n + 1) // 2), replace=False))
        R, t, s = umeyama(src[pick], dst[pick])
        err = (s * src @ R.T + t - dst).norm(dim=-1)
        inliers = err <= threshold
        count = int(inliers.sum())
        score = (count, float(err[inliers].mean()) if count else float("inf"))
        if score[0] > best_score[0] or (score[0] == best_score[0] and score[1] < best_score[1]):
            best, best_inliers, best_score = (R, t, s), inliers, score
    if best_inliers is not None and int(best_inliers.sum()) >= 3:
        return umeyama(src[best_inliers], dst[best_inliers])
    return best


def baseline_scale(pred_w2c: Tensor, ref_w2c: Tensor) -> Tensor:
    """The factor that takes the predicted cameras' baselines to the reference cameras': the sum of the reference
    camera centres' distances to the first view over the predicted ones' (S, 3|4, 4) each -> scalar; 1 for a
    single view or coincident predicted centres."""
    cp, cr = camera_centers(pred_w2c.float()), camera_centers(ref_w2c.float())
    dp, dr = (cp[1:] - cp[:1]).norm(dim=-1).sum(), (cr[1:] - cr[:1]).norm(dim=-1).sum()
    ok = torch.isfinite(dp) & (dp > 1e-8) & torch.isfinite(dr) & (dr > 0)
    return torch.where(ok, dr / dp.clamp(min=1e-8), torch.ones_like(dp))


def apply_sim3_to_w2c(w2c: Tensor, R: Tensor, t: Tensor, s: Tensor) -> Tensor:
    """Re-express world-to-camera poses after the world is mapped by x' = s R x + t (scale goes into the
    translation, the camera keeps a rigid pose)."""
    w2c = as_homogeneous(w2c)
    Rc, tc = w2c[..., :3, :3], w2c[..., :3, 3]
    R_new = Rc @ R.T
    t_new = s * tc - (R_new @ t[..., None])[..., 0]
    out = w2c.clone()
    out[..., :3, :3], out[..., :3, 3] = R_new, t_new
    return out
