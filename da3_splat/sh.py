"""Real spherical harmonics in the 3DGS / gsplat basis (degree <= 3): evaluation, rotation, colour helpers.

Coefficients are stored coefficient-major, ``(..., K, C)`` with ``K = (degree + 1) ** 2`` (gsplat layout).
The basis is the one 3DGS and gsplat evaluate, including their sign conventions (e.g. ``Y_1 = -C1 * y``);
colour = ``sum_k c_k Y_k(d) + 0.5``.
"""

from __future__ import annotations

import math
from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor

C0 = 0.28209479177387814
C1 = 0.4886025119029199
C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)

MAX_DEGREE = 3


def RGB2SH(rgb: Tensor) -> Tensor:
    """Colour in [0, 1] -> DC coefficient that renders it."""
    return (rgb - 0.5) / C0


def SH2RGB(sh: Tensor) -> Tensor:
    """DC coefficient -> rendered colour (before the renderer's clamp)."""
    return sh * C0 + 0.5


def num_sh_bases(degree: int) -> int:
    return (degree + 1) ** 2


def eval_sh_basis(degree: int, dirs: Tensor) -> Tensor:
    """Basis functions at unit directions ``dirs`` (..., 3) -> (..., (degree + 1) ** 2)."""
    if not 0 <= degree <= MAX_DEGREE:
        raise ValueError(f"SH degree must be in [0, {MAX_DEGREE}], got {degree}")
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, C0)]
    if degree >= 1:
        out += [-C1 * y, C1 * z, -C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [
            C2[0] * x * y,
            C2[1] * y * z,
            C2[2] * (2 * zz - xx - yy),
            C2[3] * x * z,
            C2[4] * (xx - yy),
        ]
    if degree >= 3:
        out += [
            C3[0] * y * (3 * xx - yy),
            C3[1] * x * y * z,
            C3[2] * y * (4 * zz - xx - yy),
            C3[3] * z * (2 * zz - 3 * xx - 3 * yy),
            C3[4] * x * (4 * zz - xx - yy),
            C3[5] * z * (xx - yy),
            C3[6] * x * (xx - 3 * yy),
        ]
    return torch.stack(out, dim=-1)


def eval_sh(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """``sum_k c_k Y_k(d)`` over the first ``(degree + 1) ** 2`` coefficients of ``coeffs`` (..., K, C) along
    directions ``dirs`` (..., 3), which need not be unit length -> (..., C). Colour is this plus 0.5.

    Higher coefficients, if ``coeffs`` has them, are ignored (progressive SH training raises ``degree`` over time).
    """
    k = num_sh_bases(degree)
    if coeffs.shape[-2] < k:
        raise ValueError(f"SH degree {degree} needs {k} coefficients on dim -2, got {coeffs.shape[-2]}")
    basis = eval_sh_basis(degree, F.normalize(dirs, p=2, dim=-1))
    return (basis[..., None] * coeffs[..., :k, :]).sum(-2)


# --------------------------------------------------------------------------------------------------
# Rotation
#
# Each band l spans a (2l+1)-dimensional space that rotations map onto itself, so the rotated band is a
# linear map D_l(R) of the original one. We recover D_l exactly by sampling: with A_l = Y_l(dirs) at a fixed
# set of P >= 2l+1 well-spread directions, Y_l(R^T dirs) = A_l D_l, hence D_l = pinv(A_l) Y_l(R^T dirs).
# This needs no Euler angles (no gimbal-lock branches), is a polynomial in R (smoothly differentiable), and
# is exact up to rounding because the band functions are polynomials of degree l.

_NUM_FIT_DIRS = 64


def _fibonacci_sphere(n: int) -> Tensor:
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    r = torch.sqrt(1 - z * z)
    phi = math.pi * (3 - math.sqrt(5)) * i
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], dim=-1)


@cache
def _fit_operators(degree: int) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Fixed directions (P, 3) and, per band, pinv(A_l) (2l+1, P), in float64 on the CPU."""
    dirs = _fibonacci_sphere(_NUM_FIT_DIRS)
    A = eval_sh_basis(degree, dirs)
    pinvs = tuple(torch.linalg.pinv(A[:, l * l : (l + 1) ** 2]) for l in range(degree + 1))
    return dirs, pinvs


def sh_rotation_matrices(R: Tensor, degree: int) -> list[Tensor]:
    """Per-band matrices D_l (..., 2l+1, 2l+1), l = 0..degree, such that rotating coefficients by
    ``c_l -> D_l c_l`` gives ``f_new(d) = f_old(R^T d)`` (the function is carried along by R)."""
    dirs, pinvs = _fit_operators(degree)
    dirs = dirs.to(device=R.device, dtype=R.dtype)
    # Row-vector form of R^T d for every direction: (P, 3) @ (..., 3, 3) -> (..., P, 3).
    Y = eval_sh_basis(degree, dirs @ R)
    mats = [torch.ones(*R.shape[:-2], 1, 1, device=R.device, dtype=R.dtype)]  # DC is rotation invariant
    for l in range(1, degree + 1):
        mats.append(pinvs[l].to(device=R.device, dtype=R.dtype) @ Y[..., l * l : (l + 1) ** 2])
    return mats


def rotate_sh(sh: Tensor, R: Tensor) -> Tensor:
    """Rotate SH coefficients ``sh`` (..., K, C) by rotation matrices ``R`` (..., 3, 3).

    The leading dims of ``R`` broadcast against ``sh.shape[:-2]``. The result satisfies
    ``f_rot(d) = f(R^T d)``: coefficients expressed in a camera frame become world-frame coefficients when
    ``R`` is the camera-to-world rotation.
    """
    K = sh.shape[-2]
    degree = math.isqrt(K) - 1
    if (degree + 1) ** 2 != K or degree > MAX_DEGREE:
        raise ValueError(f"expected (degree+1)^2 <= 16 coefficients on dim -2, got {K}")
    if degree == 0:
        return sh
    mats = sh_rotation_matrices(R.to(sh.dtype), degree)
    bands = [sh[..., :1, :]] + [D @ sh[..., l * l : (l + 1) ** 2, :] for l, D in enumerate(mats) if l > 0]
    # R's batch dims may be broader than sh's (or vice versa): broadcast before concatenating the bands.
    lead = torch.broadcast_shapes(*(b.shape[:-2] for b in bands))
    return torch.cat([b.expand(*lead, *b.shape[-2:]) for b in bands], dim=-2)
