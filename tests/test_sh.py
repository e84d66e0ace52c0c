"""Real SH basis and rotation (da3_splat.sh), checked against the definition and the official e3nn path."""

import pytest
import torch

from da3_splat.geometry import quat_xyzw_to_matrix
from da3_splat.sh import C0, RGB2SH, SH2RGB, eval_sh_basis, rotate_sh
from tests.oracle import official_sh_helpers

_oracle_sh_helpers = official_sh_helpers


def _random_rotations(n, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return quat_xyzw_to_matrix(torch.randn(n, 4, generator=g, dtype=torch.float64)).to(dtype)


def _random_dirs(*shape, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(*shape, 3, generator=g, dtype=torch.float64), dim=-1).to(dtype)


def _eval(coeffs, dirs):
    """Evaluate SH functions: coeffs (..., K, C), dirs (..., P, 3) -> (..., P, C)."""
    degree = int(coeffs.shape[-2] ** 0.5) - 1
    return eval_sh_basis(degree, dirs) @ coeffs


def test_colour_helpers():
    rgb = torch.rand(10, 3)
    torch.testing.assert_close(SH2RGB(RGB2SH(rgb)), rgb)
    assert C0 == 0.28209479177387814
    # DC coefficient evaluates to a constant C0 * c.
    assert torch.allclose(eval_sh_basis(0, _random_dirs(5))[..., 0], torch.full((5,), C0, dtype=torch.float64))


def test_basis_is_orthonormal():
    # Quadrature on a dense Fibonacci sphere; the 3DGS basis is the orthonormal real SH (up to signs).
    n = 20000
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    phi = torch.pi * (3 - 5**0.5) * i
    r = (1 - z * z).sqrt()
    dirs = torch.stack([r * phi.cos(), r * phi.sin(), z], -1)
    Y = eval_sh_basis(3, dirs)
    gram = Y.T @ Y * (4 * torch.pi / n)
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=1e-3, rtol=0)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 5e-6)])
def test_rotate_sh_definition(degree, dtype, tol):
    R = _random_rotations(8, dtype, seed=degree)
    g = torch.Generator().manual_seed(10 + degree)
    coeffs = torch.randn(8, (degree + 1) ** 2, 3, generator=g, dtype=torch.float64).to(dtype)
    d = _random_dirs(8, 200, dtype=dtype)
    rotated = rotate_sh(coeffs, R)
    lhs = _eval(rotated, d)
    rhs = _eval(coeffs, d @ R)  # row vectors: d @ R == (R^T d)^T
    torch.testing.assert_close(lhs, rhs, atol=tol, rtol=0)


def test_rotate_sh_broadcast_compose_and_identity():
    R1, R2 = _random_rotations(2, seed=3)
    coeffs = torch.randn(5, 4, 16, 3, dtype=torch.float64)
    # One rotation broadcast over all coefficient sets, and per-set rotations.
    out = rotate_sh(coeffs, R1)
    assert out.shape == coeffs.shape
    torch.testing.assert_close(rotate_sh(coeffs, R1.expand(5, 4, 3, 3)), out)
    # Composition: rotating by R1 then R2 equals rotating by R2 @ R1.
    torch.testing.assert_close(rotate_sh(out, R2), rotate_sh(coeffs, R2 @ R1))
    torch.testing.assert_close(rotate_sh(coeffs, torch.eye(3, dtype=torch.float64)), coeffs)
    # R broader than sh: (3, 3) per-view matrices applied to a single set.
    Rs = _random_rotations(6, seed=4).reshape(2, 3, 3, 3)
    assert rotate_sh(coeffs[0, 0], Rs).shape == (2, 3, 16, 3)


def test_rotate_sh_gradcheck():
    R = _random_rotations(2, seed=5).requires_grad_(True)
    coeffs = torch.randn(2, 9, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(rotate_sh, (coeffs, R))


def test_rotate_sh_rejects_bad_sizes():
    with pytest.raises(ValueError):
        rotate_sh(torch.zeros(5, 3), torch.eye(3))
    with pytest.raises(ValueError):
        rotate_sh(torch.zeros(25, 3), torch.eye(3))


@pytest.mark.parametrize("degree", [1, 2, 3])
def test_rotate_sh_matches_oracle(degree):
    oracle_rotate_sh = _oracle_sh_helpers().rotate_sh

    K = (degree + 1) ** 2
    R = _random_rotations(32, torch.float32, seed=20 + degree)
    g = torch.Generator().manual_seed(30 + degree)
    coeffs = torch.randn(32, 3, K, generator=g)  # oracle layout: colour-major (..., 3, K)
    expected = oracle_rotate_sh(coeffs, R[:, None])
    ours = rotate_sh(coeffs.transpose(-1, -2), R).transpose(-1, -2)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)
    # The oracle goes through fp32 Euler angles and is the less precise of the two (up to ~6e-5 on unit
    # coefficients for unlucky rotations); ours stays at fp32 rounding of the exact fp64 rotation.
    exact = rotate_sh(coeffs.double().transpose(-1, -2), R.double()).transpose(-1, -2)
    assert (ours.double() - exact).abs().max() < 5e-6
