"""3D Gaussians to screen-space 2D Gaussians, in plain differentiable torch (the CPU renderer's geometry).

Three steps, each a pure function:

1. `quat_scale_to_covariance`: a Gaussian's shape, rotation (wxyz quaternion) and axis scales, as a 3x3 covariance
   ``Sigma = R S S^T R^T``.
2. `world_to_camera`: means and covariances into each camera's frame, given world-to-camera matrices (OpenCV axes:
   x right, y down, z forward).
3. `perspective_projection`: pinhole projection of the means, and of the covariances by the EWA approximation
   ``Sigma_2d = J Sigma_cam J^T`` with J the Jacobian of the projection at the mean.

Numerics follow gsplat 1.4.0's pinhole projection (the CUDA renderer), including where it evaluates the Jacobian
for Gaussians far off screen; the functions are written for this project and need no gsplat import.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# The Jacobian is evaluated at most this far outside the image, in units of tan(half field of view): gsplat's
# (and 3DGS's) 0.3, i.e. 1.3x the half-FOV for a centred principal point.
JACOBIAN_FRUSTUM_MARGIN = 0.3


def quat_to_rotation(quats: Tensor) -> Tensor:
    """Rotation matrices (..., 3, 3) of quaternions (..., 4) in (w, x, y, z) order; they need not be unit length
    (they are normalised first, so the gradient ignores their length)."""
    w, x, y, z = F.normalize(quats, p=2, dim=-1).unbind(-1)
    # The standard unit-quaternion rotation matrix, row by row.
    entries = (
        1 - 2 * (y * y + z * z),
        2 * (x * y - w * z),
        2 * (x * z + w * y),
        2 * (x * y + w * z),
        1 - 2 * (x * x + z * z),
        2 * (y * z - w * x),
        2 * (x * z - w * y),
        2 * (y * z + w * x),
        1 - 2 * (x * x + y * y),
    )
    return torch.stack(entries, dim=-1).unflatten(-1, (3, 3))


def quat_scale_to_covariance(quats: Tensor, scales: Tensor) -> Tensor:
    """Covariances (..., 3, 3) = R S S^T R^T of Gaussians with rotations ``quats`` (..., 4, wxyz) and axis
    standard deviations ``scales`` (..., 3)."""
    rs = quat_to_rotation(quats) * scales[..., None, :]  # R S: column j of R scaled by s_j
    return rs @ rs.transpose(-1, -2)


def world_to_camera(means: Tensor, covars: Tensor, viewmats: Tensor) -> tuple[Tensor, Tensor]:
    """Means (N, 3) and covariances (N, 3, 3) in world space -> per camera (C, N, 3) and (C, N, 3, 3), given
    world-to-camera matrices ``viewmats`` (C, 4, 4): ``x_cam = R x + t`` and ``Sigma_cam = R Sigma R^T``."""
    rot, trans = viewmats[:, :3, :3], viewmats[:, :3, 3]
    # As einsums over (camera, Gaussian): these contract in the same order as gsplat's reference, so float32
    # results match it bit for bit (batched matmuls round differently in the last bit).
    means_c = torch.einsum("cij,nj->cni", rot, means) + trans[:, None, :]
    covars_c = torch.einsum("cij,njk,clk->cnil", rot, covars, rot)
    return means_c, covars_c


def perspective_projection(
    means_c: Tensor, covars_c: Tensor, Ks: Tensor, width: int, height: int
) -> tuple[Tensor, Tensor]:
    """Pinhole projection of camera-space means (C, N, 3) and covariances (C, N, 3, 3) with intrinsics
    ``Ks`` (C, 3, 3) -> pixel means (C, N, 2) and 2D covariances (C, N, 2, 2).

    The mean maps to ``K[:2] @ (x, y, z) / z``; the covariance to ``J Sigma J^T`` with the Jacobian
    ``J = [[fx / z, 0, -fx u / z], [0, fy / z, -fy v / z]]`` of that map, where (u, v) = (x / z, y / z). For a
    Gaussian far off screen the linearisation at its own mean inflates it hugely, so (u, v) in J is clamped to
    the image's extent widened by `JACOBIAN_FRUSTUM_MARGIN` tan(half FOV) on each side (no gradient through the
    clamped coordinate). J ignores any skew in K, as gsplat's does. Depth z must be non-zero; culling near/far
    Gaussians is the caller's job.
    """
    x, y, z = means_c.unbind(-1)
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # (C, 1): broadcast over the Gaussians
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    margin_x = JACOBIAN_FRUSTUM_MARGIN * (0.5 * width / fx)
    margin_y = JACOBIAN_FRUSTUM_MARGIN * (0.5 * height / fy)
    # The clamped point stays on the Gaussian's depth plane: (z u, z v, z) with (u, v) limited to the widened frustum.
    x_j = z * torch.clamp(x / z, min=-(cx / fx + margin_x), max=(width - cx) / fx + margin_x)
    y_j = z * torch.clamp(y / z, min=-(cy / fy + margin_y), max=(height - cy) / fy + margin_y)
    zero = torch.zeros_like(z)
    z2 = z * z
    jac = torch.stack([fx / z, zero, -fx * x_j / z2, zero, fy / z, -fy * y_j / z2], dim=-1).unflatten(-1, (2, 3))
    cov2d = jac @ covars_c @ jac.transpose(-1, -2)
    # Homogeneous projection by the first two rows of K (keeps any skew term), then division by depth.
    means2d = (Ks[:, None, :2, :] @ means_c[..., None])[..., 0] / z[..., None]
    return means2d, cov2d
