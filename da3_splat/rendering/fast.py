"""The torch renderer's forward-only path, for frames rendered without autograd (previews, viewers, evaluation).

`cpu.rasterization` takes it when no gradient is being recorded. It computes what the differentiable path
computes, with the same rules (`fast_composite.py` says how it composites), but skips the work a backward pass
needs: projection is elementwise over structure-of-arrays instead of batched 3x3 products (the same formulas,
rounded differently in the last bits), and SH colours are evaluated only for the Gaussians that are drawn.
Compositing runs in C (`composite.c`, built at first use by `native.py`) where a C compiler is found, else in
torch (`fast_composite.py`); both follow the same rules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from da3_splat.rendering import native
from da3_splat.rendering.fast_composite import chunks, composite_visible, visible
from da3_splat.rendering.projection import JACOBIAN_FRUSTUM_MARGIN
from da3_splat.sh import eval_sh_basis


def _quat_to_rot() -> Tensor:
    """(9, 16) map from the products q_a q_b (a, b in w, x, y, z) of a unit quaternion to its rotation, row-major:
    the standard formulas (1 - 2 (y^2 + z^2), 2 (x y - w z), ...), with 1 = w^2 + x^2 + y^2 + z^2."""
    m = torch.zeros(3, 3, 4, 4, dtype=torch.float64)
    w, x, y, z = range(4)
    for i in range(3):  # diagonal: w^2 + (the axis's own square) - (the other two squares)
        m[i, i, w, w] = m[i, i, i + 1, i + 1] = 1.0
        for k in {x, y, z} - {i + 1}:
            m[i, i, k, k] = -1.0
    for i, j, k, sign in ((0, 1, z, -1), (0, 2, y, 1), (1, 2, x, -1)):  # off-diagonal: 2 (a b -+ w c)
        a, b = i + 1, j + 1
        m[i, j, a, b] = m[i, j, b, a] = m[j, i, a, b] = m[j, i, b, a] = 1.0
        m[i, j, w, k] = m[i, j, k, w] = sign
        m[j, i, w, k] = m[j, i, k, w] = -sign
    return m.view(9, 16)


_QUAT_TO_ROT = _quat_to_rot()


@torch.no_grad()
def project(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    calc_compensations: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """`cpu.project` without autograd: radii [C, N] int32, means2d [C, N, 2], depths, conics [C, N, 3],
    compensations (or None). Means and conics are computed as rows (C, 2 or 3, N) and returned as views."""
    C, N = len(viewmats), len(means)
    radii = torch.empty(C, N, dtype=torch.int32, device=means.device)
    means2d, depths, conics = means.new_empty(C, 2, N), means.new_empty(C, N), means.new_empty(C, 3, N)
    comp = means.new_empty(C, N) if calc_compensations else None
    for n in chunks(N):
        q = F.normalize(quats[n], p=2, dim=-1).T.contiguous()
        # R S as (row, column, N): the unit-quaternion rotation is linear in the products q_a q_b (one matrix
        # product instead of a few dozen elementwise ops), with column j scaled by s_j.
        rot = (_QUAT_TO_ROT.to(q) @ (q[:, None] * q[None]).reshape(16, -1)).view(3, 3, -1)
        rs = rot * scales[n].T[None]
        for c in range(C):
            out = _project_camera(means[n], rs, viewmats[c], Ks[c], width, height, eps2d, near_plane, far_plane)
            radii[c, n], means2d[c, :, n], depths[c, n], conics[c, :, n] = out[:4]
            if comp is not None:
                comp[c, n] = out[4]
    return radii, means2d.transpose(1, 2), depths, conics.transpose(1, 2), comp


def _project_camera(means, rs, viewmat, K, width, height, eps2d, near_plane, far_plane):
    """One camera: as `projection.world_to_camera` and `perspective_projection` followed by `cpu.project`'s
    blur, conic, radius and culling, with x and y handled together as (2, N) rows."""
    rot, trans = viewmat[:3, :3], viewmat[:3, 3]
    xyz = rot @ means.T + trans[:, None]
    a = rot[:, 0, None, None] * rs[0]  # W R S, the camera-space covariance being a a^T
    a.addcmul_(rot[:, 1, None, None], rs[1]).addcmul_(rot[:, 2, None, None], rs[2])
    depth = xyz[2]
    in_range = (depth >= near_plane) & (depth <= far_plane)
    # Culled Gaussians are projected as a stand-in at (0, 0, 1), as `cpu.project` does (no inf, no NaN).
    xyz = torch.where(in_range, xyz, xyz.new_tensor([0.0, 0.0, 1.0])[:, None])
    inv_z = 1.0 / xyz[2]
    f, c = K[[0, 1], [0, 1]][:, None], K[:2, 2:]
    size = xyz.new_tensor([width, height])[:, None]
    margin = JACOBIAN_FRUSTUM_MARGIN * (0.5 * size / f)
    tj = torch.clamp(xyz[:2] * inv_z, min=-(c / f + margin), max=(size - c) / f + margin)  # Jacobian point
    # Rows of J W R S, with J = [[fx / z, 0, -fx x_j / z^2], [0, fy / z, -fy y_j / z^2]], x_j = z tj.
    ja = (a[:2] - tj[:, None] * a[2]).mul_((f * inv_z)[:, None])
    c00, c11 = (ja * ja).sum(1)
    c01 = (ja[0] * ja[1]).sum(0)
    uv = (K[:2] @ xyz) * inv_z
    det_orig = c00 * c11 - c01 * c01
    c00, c11 = c00 + eps2d, c11 + eps2d
    det_blur = c00 * c11 - c01 * c01
    comp = (det_orig / det_blur).clamp(min=0.0).sqrt()  # antialiasing (only kept if asked for)
    det = det_blur.clamp(min=1e-10)
    conics = torch.stack([c11, -c01, c00]) / det
    b = (c00 + c11) / 2
    radius = torch.ceil(3.0 * torch.sqrt(b + torch.sqrt((b * b - det).clamp(min=0.01))))
    keep = in_range & (det_blur > 0) & ((uv + radius > 0) & (uv - radius < size)).all(0)
    return torch.where(keep, radius, 0).int(), uv, depth, conics, comp


@torch.no_grad()
def rasterize(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    sh: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    near_plane: float,
    far_plane: float,
    eps2d: float,
    sh_degree: int,
    render_mode: str,
    antialiased: bool,
) -> tuple[Tensor, ...]:
    """Colours and/or depth (C, H, W, D) and alpha (C, H, W, 1) before background, then what `meta` reports:
    radii, means2d, depths, conics, opacities (times compensations when antialiased)."""
    C, N = len(viewmats), len(means)
    radii, means2d, depths, conics, comp = project(
        means, quats, scales, viewmats, Ks, width, height, eps2d, near_plane, far_plane, antialiased
    )
    opacities = opacities.expand(C, N) if comp is None else opacities * comp
    ids, order = visible(radii, opacities, depths)
    feats = []  # rows (D, len(ids))
    if render_mode in ("RGB", "RGB+D", "RGB+ED"):
        feats.append(_colors(means, sh, viewmats, sh_degree, ids, N))
    if render_mode != "RGB":
        feats.append(depths.flatten().index_select(0, ids)[None])
    feats = torch.cat(feats)
    args = (ids, order, means2d, conics, opacities, radii, feats, width, height)
    render, alpha = native.composite_visible(*args) or composite_visible(*args)  # C where it builds, else torch
    return render, alpha, radii, means2d, depths, conics, opacities


def _colors(means: Tensor, sh: Tensor, viewmats: Tensor, sh_degree: int, ids: Tensor, N: int) -> Tensor:
    """`cpu.sh_colors` for the flat ids `ids` (c * N + n) only, as rows (3, len(ids))."""
    campos = torch.inverse(viewmats)[:, :3, 3]
    k = (sh_degree + 1) ** 2
    out = means.new_empty(3, len(ids))
    for i in chunks(len(ids)):
        n, cam = ids[i] % N, torch.div(ids[i], N, rounding_mode="floor")
        dirs = (means.index_select(0, n) - campos.index_select(0, cam)).T.contiguous()
        x, y, z = dirs  # normalised as F.normalize (which is slow along dim 0)
        dirs /= (x * x + y * y + z * z).sqrt_().clamp_min_(1e-12)
        basis = eval_sh_basis(sh_degree, dirs.T).T  # (k, g)
        coeffs = sh.flatten(1).index_select(0, n)[:, : 3 * k].T.contiguous()  # (3 k, g): coefficient-major
        rgb = torch.mul(basis[0], coeffs[:3], out=out[:, i])
        for j in range(1, k):
            rgb.addcmul_(basis[j], coeffs[3 * j : 3 * j + 3])
        rgb.add_(0.5).clamp_min_(0.0)
    return out
