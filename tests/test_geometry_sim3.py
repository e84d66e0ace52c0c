"""Similarity fits of da3_splat.geometry: Umeyama and its outlier-robust form."""

from __future__ import annotations

import torch

from da3_splat.geometry import quat_xyzw_to_matrix, umeyama, umeyama_ransac


def _similarity(seed: int):
    g = torch.Generator().manual_seed(seed)
    R = quat_xyzw_to_matrix(torch.randn(4, generator=g, dtype=torch.float64))
    return R, torch.randn(3, generator=g, dtype=torch.float64), torch.tensor(2.5, dtype=torch.float64)


def test_umeyama_recovers_an_exact_similarity():
    R, t, s = _similarity(0)
    src = torch.randn(12, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    R2, t2, s2 = umeyama(src, s * src @ R.T + t)
    assert torch.allclose(R2, R, atol=1e-10) and torch.allclose(t2, t, atol=1e-10) and torch.allclose(s2, s)


def test_umeyama_fits_a_batch_as_it_fits_each_member():
    g = torch.Generator().manual_seed(5)
    src, dst = (torch.randn(4, 9, 3, generator=g, dtype=torch.float64) for _ in range(2))
    weights = torch.rand(4, 9, generator=g, dtype=torch.float64)
    batched = umeyama(src, dst, weights)
    for i in range(4):
        for got, single in zip(batched, umeyama(src[i], dst[i], weights[i]), strict=True):
            torch.testing.assert_close(got[i], single, atol=1e-12, rtol=0)


def test_ransac_ignores_outlier_pairs_that_bias_plain_umeyama():
    R, t, s = _similarity(2)
    src = torch.randn(16, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    dst = s * src @ R.T + t
    dst[:3] += 20.0 * torch.randn(3, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    _, _, s_plain = umeyama(src, dst)
    R2, t2, s2 = umeyama_ransac(src, dst)
    assert abs(float(s_plain) - 2.5) > 0.2  # the outliers do move the plain fit
    assert torch.allclose(R2, R, atol=1e-8) and torch.allclose(t2, t, atol=1e-8) and abs(float(s2) - 2.5) < 1e-8
    assert all(torch.equal(a, b) for a, b in zip(umeyama_ransac(src, dst), (R2, t2, s2), strict=True))  # seeded
