"""Reduction of pixel-aligned Gaussians: each step keeps what it should."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from da3_splat.gaussians import Gaussians
from da3_splat.reduce import (
    border_mask,
    confidence_mask,
    filter_by_confidence,
    prune_by_opacity,
    reduce_to_budget,
    voxel_merge,
)


def _random(n: int, degree: int = 1, seed: int = 0, means: torch.Tensor | None = None) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    return Gaussians(
        means=torch.rand(n, 3, generator=g) if means is None else means,
        quats=torch.randn(n, 4, generator=g),
        scales=torch.rand(n, 3, generator=g) * 0.02 + 1e-3,
        opacities=torch.rand(n, generator=g) * 0.9 + 0.05,
        sh=torch.randn(n, (degree + 1) ** 2, 3, generator=g),
    )


def _np_cov(quats: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Covariances straight from the definition, in float64 (independent of the package's helpers)."""
    w, x, y, z = (quats / np.linalg.norm(quats, axis=-1, keepdims=True)).T
    R = np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )
    return R @ (scales[:, :, None] ** 2 * R.transpose(0, 2, 1))


def _f64(t: torch.Tensor) -> np.ndarray:
    return t.double().numpy()


# --------------------------------------------------------------------------------------------------
# Filters


def test_confidence_filter_keeps_exactly_the_top_fraction():
    n = 1000
    conf = torch.randperm(n).float().reshape(10, 10, 10)  # distinct values, any shape with N elements
    g = _random(n)
    for p, kept in ((0, 1000), (30, 700), (95.5, 45), (99.95, 1)):
        out = filter_by_confidence(g, conf, p)
        assert out.num_gaussians == kept
        mask = confidence_mask(conf, p)
        assert conf.flatten()[mask].min() >= conf.flatten()[~mask].max() if kept < n else True
        torch.testing.assert_close(out.means, g.means[mask])  # the kept ones, unchanged, in order
    nan = torch.tensor([float("nan"), 1.0, 2.0, 3.0])
    assert confidence_mask(nan, 0).tolist() == [False, True, True, True]
    with pytest.raises(ValueError):
        confidence_mask(conf, 100)
    with pytest.raises(ValueError):
        filter_by_confidence(g, conf[:5], 10)


def test_border_mask_counts_and_order():
    S, H, W = 3, 64, 96  # trims int(8/256 * 64) = 2 rows and int(8/256 * 96) = 3 columns per side
    m = border_mask(S, H, W)
    assert m.shape == (S * H * W,) and m.dtype == torch.bool
    assert int(m.sum()) == S * (H - 4) * (W - 6)
    v = m.reshape(S, H, W)
    assert (v == v[0]).all()  # the same in every view
    assert not v[:, :2].any() and not v[:, -2:].any() and not v[:, :, :3].any() and not v[:, :, -3:].any()
    assert v[:, 2:-2, 3:-3].all()
    assert border_mask(2, 20, 30).all()  # a trim of 0 keeps everything (DA3's slicing would drop it all)
    assert int(border_mask(1, 100, 100, frac=0.1).sum()) == 80 * 80


def test_prune_by_opacity():
    g = _random(500)
    out = prune_by_opacity(g, 0.5)
    keep = g.opacities >= 0.5
    assert out.num_gaussians == int(keep.sum()) and (out.opacities >= 0.5).all()
    torch.testing.assert_close(out.sh, g.sh[keep])
    with pytest.raises(ValueError, match="unbatched"):
        prune_by_opacity(Gaussians(*(t[None] for t in (g.means, g.quats, g.scales, g.opacities, g.sh))), 0.1)


# --------------------------------------------------------------------------------------------------
# Voxel merge


def test_merge_of_one_voxel_is_the_weighted_moments():
    g = _random(40, degree=2, means=torch.rand(40, 3) * 0.3 + 5.0)
    out = voxel_merge(g, voxel_size=1.0)  # the grid starts at the min corner: all in one voxel
    assert out.num_gaussians == 1
    w = _f64(g.opacities)
    mu = (w[:, None] * _f64(g.means)).sum(0) / w.sum()
    d = _f64(g.means) - mu
    cov = (w[:, None, None] * (_np_cov(_f64(g.quats), _f64(g.scales)) + d[:, :, None] * d[:, None, :])).sum(0) / w.sum()
    sh = (w[:, None, None] * _f64(g.sh)).sum(0) / w.sum()
    np.testing.assert_allclose(_f64(out.means[0]), mu, rtol=1e-6)
    np.testing.assert_allclose(_np_cov(_f64(out.quats), _f64(out.scales))[0], cov, rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(_f64(out.sh[0]), sh, rtol=1e-5, atol=1e-6)
    # Members spread over the voxel: opacity is the max of the members (not 1 - prod(1 - a), ~1 here).
    assert out.opacities[0] == g.opacities.max()
    assert 1 - np.prod(1 - w) > out.opacities[0] + 0.01


def test_merge_of_stacked_translucent_layers_covers_like_them():
    """Co-located translucent Gaussians (one surface seen in several views, as an NVS head predicts it) merge to
    the opacity their stack renders with, 1 - exp(-sum a_i), not to the faint max; faint Gaussians spread side by
    side over a larger footprint keep the max."""
    g = _random(8, means=torch.full((8, 3), 0.5))
    g.scales.fill_(0.1)
    g.opacities.fill_(0.2)
    out = voxel_merge(g, voxel_size=1.0)
    assert out.num_gaussians == 1
    torch.testing.assert_close(out.opacities[0], torch.tensor(1 - np.exp(-1.6), dtype=torch.float32))
    spread = _random(8, means=torch.rand(8, 3) * 0.9)
    spread.scales.fill_(0.001)
    spread.opacities.fill_(0.2)
    assert voxel_merge(spread, voxel_size=1.0).opacities[0] == 0.2


def test_merge_of_fully_transparent_voxel_is_a_plain_average():
    g = _random(5, means=torch.rand(5, 3) * 0.1)
    g.opacities.zero_()
    out = voxel_merge(g, voxel_size=1.0)
    torch.testing.assert_close(out.means[0], g.means.mean(0))
    assert out.opacities[0] == 0


def test_gaussians_alone_in_their_voxel_pass_through_unchanged():
    cells = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 3, 0], [2, 2, 2], [4, 1, 3]], dtype=torch.float32)
    cells[1:] += 0.5  # the first sits at (0, 0, 0), the min corner, where the grid is anchored
    alone = _random(5, means=cells, seed=1)
    crowd = _random(30, means=torch.tensor([3.0, 3.0, 0.0]) + 0.1 + 0.8 * torch.rand(30, 3), seed=2)
    out = voxel_merge(Gaussians.cat([crowd, alone]), voxel_size=1.0)
    assert out.num_gaussians == 6
    # The lone ones come first, bit-identical (means, covariance parameters, colours, opacity).
    for name in ("means", "quats", "scales", "opacities", "sh"):
        torch.testing.assert_close(getattr(out[:5], name), getattr(alone, name), rtol=0, atol=0)
    assert torch.all((out.means[5] >= torch.tensor([3.0, 3.0, 0.0])) & (out.means[5] < torch.tensor([4.0, 4.0, 1.0])))
    # All in distinct voxels: nothing to do.
    assert voxel_merge(alone, voxel_size=0.5) is alone


def test_target_count_is_respected_and_nearly_reached():
    g = _random(200_000, degree=0, seed=3)
    target = 20_000
    out = voxel_merge(g, target_count=target)
    assert 0.95 * target <= out.num_gaussians <= target
    out.validate()
    # Merged covariances stay symmetric positive definite (recomputed from the stored scale + quat).
    cov = _np_cov(_f64(out.quats), _f64(out.scales))
    np.testing.assert_allclose(cov, cov.transpose(0, 2, 1), atol=1e-12)
    assert (np.linalg.eigvalsh(cov) > 0).all()
    assert (out.means.amin(0) >= g.means.amin(0)).all() and (out.means.amax(0) <= g.means.amax(0)).all()
    # Already small enough: unchanged.
    assert voxel_merge(g[:100], target_count=100).num_gaussians == 100
    with pytest.raises(ValueError):
        voxel_merge(g, voxel_size=0.1, target_count=10)


def test_target_count_on_a_surface():
    """Pixel-aligned Gaussians lie on surfaces: a noisy plane, down to a tenth."""
    n = 50_000
    uv = torch.rand(n, 2)
    means = torch.cat([uv, 0.2 * uv[:, :1] + 1e-3 * torch.randn(n, 1)], 1)
    out = voxel_merge(_random(n, means=means), target_count=n // 10)
    assert 0.95 * n // 10 <= out.num_gaussians <= n // 10


def test_reduce_to_budget_chains_filters_then_merge():
    n = 30_000
    g = _random(n, seed=4)
    conf = torch.rand(n)
    g.opacities[:1000] = 0.001  # pruned by the default min_opacity
    out = reduce_to_budget(g, conf, max_gaussians=5_000, conf_percentile=20)
    assert 0.95 * 5_000 <= out.num_gaussians <= 5_000
    assert (out.opacities >= 0.005).all()
    small = reduce_to_budget(g, max_gaussians=n)  # within budget: only the opacity prune
    assert small.num_gaussians == n - 1000
    with pytest.raises(ValueError, match="conf"):
        reduce_to_budget(g, max_gaussians=10, conf_percentile=50)
