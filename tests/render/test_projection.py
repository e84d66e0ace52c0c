"""The CPU renderer's geometry (`da3_splat.rendering.projection`) and SH evaluation (`da3_splat.sh.eval_sh`):
against independent constructions (matrix exponential, homogeneous transforms, autograd Jacobians, quadrature),
against gsplat 1.4.0's pure-torch reference (a test-only oracle: the library must not import it), and on CUDA
against gsplat's public kernels."""

import math

import numpy as np
import pytest
import torch
from gsplat.cuda import _torch_impl as gsplat_ref  # oracle only

from da3_splat.rendering.projection import (
    JACOBIAN_FRUSTUM_MARGIN,
    perspective_projection,
    quat_scale_to_covariance,
    quat_to_rotation,
    world_to_camera,
)
from da3_splat.sh import eval_sh, eval_sh_basis

F64 = torch.float64
W, H = 64, 48


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def random_quats_and_rotations(n, seed=0, dtype=F64, max_angle=math.pi):
    """wxyz quaternions of random length, and their rotations built another way: exp of the axis-angle's
    cross-product matrix (a rotation by theta about unit axis a is q = (cos theta/2, sin theta/2 a))."""
    g = _gen(seed)
    axis = torch.nn.functional.normalize(torch.randn(n, 3, generator=g, dtype=dtype), dim=-1)
    theta = (torch.rand(n, generator=g, dtype=dtype) * 2 - 1) * max_angle
    length = 0.2 + 3 * torch.rand(n, 1, generator=g, dtype=dtype)
    quats = length * torch.cat([torch.cos(theta / 2)[:, None], torch.sin(theta / 2)[:, None] * axis], -1)
    ax, ay, az = (theta[:, None] * axis).unbind(-1)
    zero = torch.zeros_like(ax)
    skew = torch.stack([zero, -az, ay, az, zero, -ax, -ay, ax, zero], -1).view(n, 3, 3)
    return quats, torch.linalg.matrix_exp(skew)


def random_viewmats(c, seed=0, dtype=F64):
    g = _gen(seed)
    rot = torch.linalg.qr(torch.randn(c, 3, 3, generator=g, dtype=dtype))[0]
    rot = rot * torch.linalg.det(rot)[:, None, None]  # proper rotations
    viewmats = torch.eye(4, dtype=dtype).repeat(c, 1, 1)
    viewmats[:, :3, :3], viewmats[:, :3, 3] = rot, torch.randn(c, 3, generator=g, dtype=dtype)
    return viewmats


def intrinsics(c, dtype=F64):
    """Different focal lengths per axis and an off-centre principal point, so every limit differs."""
    K = torch.tensor([[50.0, 0.0, 0.45 * W], [0.0, 42.0, 0.6 * H], [0.0, 0.0, 1.0]], dtype=dtype)
    return K.repeat(c, 1, 1)


def random_covariances(c, n, seed=0, dtype=F64):
    a = torch.randn(c, n, 3, 3, generator=_gen(seed), dtype=dtype)
    return a @ a.transpose(-1, -2) * 0.1 + 0.01 * torch.eye(3, dtype=dtype)


def camera_points(c, n, seed=0, spread=0.5, dtype=F64):
    """Camera-space points with depth in [0.5, 4.5] and x/z, y/z within +-spread of the principal ray."""
    g = _gen(seed)
    z = 0.5 + 4 * torch.rand(c, n, generator=g, dtype=dtype)
    uv = (torch.rand(c, n, 2, generator=g, dtype=dtype) * 2 - 1) * spread
    return torch.cat([uv * z[..., None], z[..., None]], -1)


# --------------------------------------------------------------------------------------------------
# Independent checks


def test_rotation_matches_axis_angle_and_ignores_quaternion_length():
    quats, rot = random_quats_and_rotations(200)
    torch.testing.assert_close(quat_to_rotation(quats), rot, atol=1e-12, rtol=0)
    torch.testing.assert_close(quat_to_rotation(-quats), rot, atol=1e-12, rtol=0)  # q and -q: same rotation


def test_covariance_is_R_S_S_R_T():
    quats, rot = random_quats_and_rotations(200, seed=1)
    scales = 0.01 + torch.rand(200, 3, generator=_gen(2), dtype=F64)
    want = rot @ torch.diag_embed(scales**2) @ rot.transpose(-1, -2)
    got = quat_scale_to_covariance(quats, scales)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    # Each scaled axis R e_j is an eigenvector with eigenvalue s_j^2.
    torch.testing.assert_close(got @ rot, rot * scales[:, None, :] ** 2, atol=1e-12, rtol=0)


def test_covariance_batches_over_leading_dims():
    quats, _ = random_quats_and_rotations(12, seed=3)
    scales = torch.rand(12, 3, generator=_gen(4), dtype=F64)
    flat = quat_scale_to_covariance(quats, scales)
    batched = quat_scale_to_covariance(quats.view(3, 4, 4), scales.view(3, 4, 3))
    torch.testing.assert_close(batched, flat.view(3, 4, 3, 3))


def test_world_to_camera_inverts_camera_to_world():
    viewmats = random_viewmats(3, seed=5)
    means = torch.randn(40, 3, generator=_gen(6), dtype=F64)
    covars = random_covariances(1, 40, seed=7)[0]
    means_c, covars_c = world_to_camera(means, covars, viewmats)
    assert means_c.shape == (3, 40, 3) and covars_c.shape == (3, 40, 3, 3)
    # Map back with the inverse (camera-to-world) homogeneous matrix: the world points must come back.
    c2w = torch.linalg.inv(viewmats)
    homog = torch.cat([means_c, torch.ones_like(means_c[..., :1])], -1)
    torch.testing.assert_close((c2w[:, None] @ homog[..., None])[..., :3, 0], means.expand(3, -1, -1))
    # A covariance is the second moment of linearly mapped offsets: carrying it back must restore it.
    rot_back = c2w[:, None, :3, :3]
    torch.testing.assert_close(rot_back @ covars_c @ rot_back.transpose(-1, -2), covars.expand(3, -1, -1, -1))


def _pinhole(K):
    return lambda p: (K[:2] @ p) / p[2]


def _autograd_jacobians(means_c, Ks):
    """2x3 Jacobian of the pinhole map at every point, one autograd call per point."""
    C, N, _ = means_c.shape
    jac = [torch.autograd.functional.jacobian(_pinhole(Ks[c]), means_c[c, n]) for c in range(C) for n in range(N)]
    return torch.stack(jac).view(C, N, 2, 3)


def test_projection_inside_frustum_is_pinhole_with_autograd_jacobian():
    means_c = camera_points(2, 30, seed=8, spread=0.4)
    covars_c = random_covariances(2, 30, seed=9)
    Ks = intrinsics(2)
    Ks[1, 0, 1] = 3.0  # skew: the mean uses the whole first two rows of K
    means2d, cov2d = perspective_projection(means_c, covars_c, Ks, W, H)
    want_means = torch.stack([torch.stack([_pinhole(Ks[c])(p) for p in means_c[c]]) for c in range(2)])
    torch.testing.assert_close(means2d, want_means, atol=1e-12, rtol=0)
    Ks[1, 0, 1] = 0.0  # the EWA Jacobian, as gsplat's, has no skew term
    means2d, cov2d = perspective_projection(means_c, covars_c, Ks, W, H)
    jac = _autograd_jacobians(means_c, Ks)
    torch.testing.assert_close(cov2d, jac @ covars_c @ jac.transpose(-1, -2), atol=1e-10, rtol=1e-12)


def test_projection_clamps_the_jacobian_to_the_widened_frustum():
    means_c = camera_points(1, 60, seed=10, spread=3.0)  # many far outside the image on either side
    covars_c = random_covariances(1, 60, seed=11)
    Ks = intrinsics(1)
    means2d, cov2d = perspective_projection(means_c, covars_c, Ks, W, H)
    fx, fy, cx, cy = Ks[0, 0, 0], Ks[0, 1, 1], Ks[0, 0, 2], Ks[0, 1, 2]
    # The image spans x/z in [-cx / fx, (W - cx) / fx]; widen each side by the margin times tan(half FOV).
    mx, my = JACOBIAN_FRUSTUM_MARGIN * W / (2 * fx), JACOBIAN_FRUSTUM_MARGIN * H / (2 * fy)
    x, y, z = means_c.unbind(-1)
    u = torch.minimum(torch.maximum(x / z, -cx / fx - mx), (W - cx) / fx + mx)
    v = torch.minimum(torch.maximum(y / z, -cy / fy - my), (H - cy) / fy + my)
    assert ((u != x / z).sum() > 10) and ((v != y / z).sum() > 10)  # both limits exercised
    jac = _autograd_jacobians(torch.stack([u * z, v * z, z], -1), Ks)
    torch.testing.assert_close(cov2d, jac @ covars_c @ jac.transpose(-1, -2), atol=1e-10, rtol=1e-12)
    torch.testing.assert_close(means2d, torch.stack([fx * x / z + cx, fy * y / z + cy], -1))  # never clamped


def _sphere_quadrature(n_theta=8, n_phi=16):
    """Directions and weights integrating polynomials of degree <= 7 over the unit sphere exactly
    (Gauss-Legendre in z = cos theta, uniform in phi)."""
    z, w = (torch.from_numpy(a) for a in np.polynomial.legendre.leggauss(n_theta))
    phi = torch.arange(n_phi, dtype=F64) * (2 * math.pi / n_phi)
    z, phi = z[:, None].expand(-1, n_phi), phi[None].expand(n_theta, -1)
    r = torch.sqrt(1 - z * z)
    dirs = torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], -1).reshape(-1, 3)
    return dirs, (w[:, None] * (2 * math.pi / n_phi)).expand(-1, n_phi).reshape(-1)


def test_sh_basis_is_orthonormal():
    dirs, weights = _sphere_quadrature()
    basis = eval_sh(3, dirs, torch.eye(16, dtype=F64)[None].expand(len(dirs), -1, -1))  # every basis function
    gram = basis.T @ (weights[:, None] * basis)
    torch.testing.assert_close(gram, torch.eye(16, dtype=F64), atol=1e-12, rtol=0)


def test_sh_closed_form_values():
    # Along +z only the m = 0 functions are non-zero, each sqrt((2l + 1) / (4 pi)).
    along_z = eval_sh(3, torch.tensor([0.0, 0.0, 2.5], dtype=F64), torch.eye(16, dtype=F64))
    want = torch.zeros(16, dtype=F64)
    for l in range(4):
        want[l * l + l] = math.sqrt((2 * l + 1) / (4 * math.pi))
    torch.testing.assert_close(along_z, want, atol=1e-12, rtol=0)
    # Degree 1 along +x and +y, with the 3DGS signs (-C1 y, C1 z, -C1 x).
    c1 = math.sqrt(3 / (4 * math.pi))
    torch.testing.assert_close(
        eval_sh(1, torch.tensor([1.0, 0.0, 0.0], dtype=F64), torch.eye(4, dtype=F64)),
        torch.tensor([0.5 / math.sqrt(math.pi), 0.0, 0.0, -c1], dtype=F64),
    )
    torch.testing.assert_close(
        eval_sh(1, torch.tensor([0.0, 3.0, 0.0], dtype=F64), torch.eye(4, dtype=F64)),
        torch.tensor([0.5 / math.sqrt(math.pi), -c1, 0.0, 0.0], dtype=F64),
    )


def test_eval_sh_uses_only_the_requested_degree():
    g = _gen(12)
    dirs = torch.randn(2, 30, 3, generator=g, dtype=F64)
    coeffs = torch.randn(30, 16, 3, generator=g, dtype=F64)
    for degree in range(4):
        k = (degree + 1) ** 2
        want = (eval_sh_basis(degree, dirs / dirs.norm(dim=-1, keepdim=True))[..., None] * coeffs[:, :k]).sum(-2)
        torch.testing.assert_close(eval_sh(degree, dirs, coeffs), want)
        torch.testing.assert_close(eval_sh(degree, dirs, coeffs[:, :k]), want)
    with pytest.raises(ValueError, match="needs 16"):
        eval_sh(3, dirs, coeffs[:, :9])


# --------------------------------------------------------------------------------------------------
# gsplat 1.4.0's pure-torch reference as an oracle (float32: what the renderer runs in)


def _oracle_inputs(seed=0, n=300, c=3, dtype=torch.float32):
    """Gaussians in front of c cameras that look roughly along +z (so every depth is well positive)."""
    quats, _ = random_quats_and_rotations(n, seed=seed, dtype=dtype)
    scales = 0.01 + 0.3 * torch.rand(n, 3, generator=_gen(seed + 1), dtype=dtype)
    means = torch.randn(n, 3, generator=_gen(seed + 2), dtype=dtype) + torch.tensor([0.0, 0.0, 4.0], dtype=dtype)
    viewmats = torch.eye(4, dtype=dtype).repeat(c, 1, 1)
    viewmats[:, :3, :3] = random_quats_and_rotations(c, seed=seed + 3, dtype=dtype, max_angle=0.3)[1]
    viewmats[:, :3, 3] = 0.3 * torch.randn(c, 3, generator=_gen(seed + 4), dtype=dtype)
    return quats, scales, means, viewmats, intrinsics(c, dtype)


def test_matches_gsplat_reference_float32():
    quats, scales, means, viewmats, Ks = _oracle_inputs()
    covars = quat_scale_to_covariance(quats, scales)
    ref_covars, _ = gsplat_ref._quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    torch.testing.assert_close(covars, ref_covars, atol=1e-6, rtol=0)
    means_c, covars_c = world_to_camera(means, covars, viewmats)
    ref_means_c, ref_covars_c = gsplat_ref._world_to_cam(means, covars, viewmats)
    torch.testing.assert_close(means_c, ref_means_c, atol=1e-6, rtol=0)
    torch.testing.assert_close(covars_c, ref_covars_c, atol=1e-6, rtol=0)
    assert (means_c[..., 2] > 0.3).all()
    means2d, cov2d = perspective_projection(means_c, covars_c, Ks, W, H)
    ref_means2d, ref_cov2d = gsplat_ref._persp_proj(means_c, covars_c, Ks, W, H)
    torch.testing.assert_close(means2d, ref_means2d, atol=1e-6, rtol=1e-6)  # pixels: relative
    torch.testing.assert_close(cov2d, ref_cov2d, atol=1e-6, rtol=1e-6)
    far = camera_points(3, 200, seed=13, spread=3.0, dtype=torch.float32)  # the clamped Jacobian too
    got = perspective_projection(far, covars_c[:, :200], Ks, W, H)
    for a, b in zip(got, gsplat_ref._persp_proj(far, covars_c[:, :200], Ks, W, H)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_sh_matches_gsplat_reference_float32(degree):
    g = _gen(14)
    dirs = torch.randn(3, 200, 3, generator=g) * 3
    coeffs = torch.randn(200, 16, 3, generator=g)
    ref = gsplat_ref._spherical_harmonics(degree, dirs, coeffs.expand(3, -1, -1, -1))
    torch.testing.assert_close(eval_sh(degree, dirs, coeffs), ref, atol=1e-6, rtol=0)


def test_gradients_match_gsplat_reference():
    """The whole chain (quaternion to 2D covariance, SH colour) differentiated both ways, in float64."""
    quats, scales, means, viewmats, Ks = _oracle_inputs(seed=20, n=50, c=2, dtype=F64)
    sh = torch.randn(50, 16, 3, generator=_gen(21), dtype=F64)
    weights = [torch.randn(2, 50, *s, generator=_gen(22 + i), dtype=F64) for i, s in enumerate([(2,), (2, 2), (3,)])]

    def ours(q, s, m, v, c):
        means_c, covars_c = world_to_camera(m, quat_scale_to_covariance(q, s), v)
        dirs = m[None] - torch.linalg.inv(v)[:, None, :3, 3]
        return (*perspective_projection(means_c, covars_c, Ks, W, H), eval_sh(3, dirs, c))

    def reference(q, s, m, v, c):
        covars, _ = gsplat_ref._quat_scale_to_covar_preci(q, s, compute_preci=False)
        means_c, covars_c = gsplat_ref._world_to_cam(m, covars, v)
        dirs = m[None] - torch.linalg.inv(v)[:, None, :3, 3]
        colors = gsplat_ref._spherical_harmonics(3, dirs, c.expand(2, -1, -1, -1))
        return (*gsplat_ref._persp_proj(means_c, covars_c, Ks, W, H), colors)

    grads = []
    for fn in (ours, reference):
        inputs = [t.clone().requires_grad_() for t in (quats, scales, means, viewmats, sh)]
        loss = sum((out * w).sum() for out, w in zip(fn(*inputs), weights))
        grads.append(torch.autograd.grad(loss, inputs))
    for name, a, b in zip(("quats", "scales", "means", "viewmats", "sh"), *grads):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10, msg=f"grad of {name}")


# --------------------------------------------------------------------------------------------------
# gsplat's public CUDA kernels


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (compares with gsplat's CUDA kernels)")
def test_matches_gsplat_cuda_kernels():
    import gsplat

    quats, scales, means, viewmats, Ks = (t.cuda() for t in _oracle_inputs(seed=30, n=2000))
    covars = quat_scale_to_covariance(quats, scales)
    ref_covars, _ = gsplat.quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    torch.testing.assert_close(covars, ref_covars, atol=1e-6, rtol=1e-5)
    means_c, covars_c = world_to_camera(means, covars, viewmats)
    ref_means_c, ref_covars_c = gsplat.world_to_cam(means, covars, viewmats)
    torch.testing.assert_close(means_c, ref_means_c, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(covars_c, ref_covars_c, atol=1e-6, rtol=1e-5)
    far = camera_points(3, 2000, seed=31, spread=3.0, dtype=torch.float32).cuda()
    for points in (means_c, far):
        means2d, cov2d = perspective_projection(points, covars_c, Ks, W, H)
        ref_means2d, ref_cov2d = gsplat.proj(points, covars_c, Ks, W, H, camera_model="pinhole")
        torch.testing.assert_close(means2d, ref_means2d, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(cov2d, ref_cov2d, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (compares with gsplat's CUDA kernels)")
@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_sh_matches_gsplat_cuda(degree):
    import gsplat

    g = _gen(32)
    dirs, coeffs = (torch.randn(2000, 3, generator=g) * 3).cuda(), torch.randn(2000, 16, 3, generator=g).cuda()
    dirs.requires_grad_(), coeffs.requires_grad_()
    weights = torch.randn(2000, 3, generator=g).cuda()
    outs, grads = [], []
    for fn in (eval_sh, gsplat.spherical_harmonics):
        out = fn(degree, dirs, coeffs)
        outs.append(out.detach())
        # degree 0 does not depend on the direction: its (zero) gradient is materialised
        loss = (out * weights).sum()
        grads.append(torch.autograd.grad(loss, (dirs, coeffs), allow_unused=True, materialize_grads=True))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
