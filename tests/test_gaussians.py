"""The Gaussians container: batching, indexing, concatenation, SH degree changes, checks, splatfacto mapping."""

from __future__ import annotations

import pytest
import torch

from da3_splat.gaussians import SPLATFACTO_KEYS, Gaussians


def _random(n: int = 10, degree: int = 1, batch: tuple[int, ...] = (), seed: int = 0) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    return Gaussians(
        means=torch.randn(*batch, n, 3, generator=g),
        quats=torch.randn(*batch, n, 4, generator=g),
        scales=torch.rand(*batch, n, 3, generator=g) + 0.01,
        opacities=torch.rand(*batch, n, generator=g) * 0.98 + 0.01,
        sh=torch.randn(*batch, n, (degree + 1) ** 2, 3, generator=g),
    )


def _assert_same(a: Gaussians, b: Gaussians) -> None:
    for name in ("means", "quats", "scales", "opacities", "sh"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=0, msg=name)


def test_properties_batched_and_unbatched():
    g = _random(7, degree=2)
    assert (g.num_gaussians, g.sh_degree, g.batch_shape, g.is_batched) == (7, 2, torch.Size(()), False)
    b = _random(7, degree=2, batch=(3,))
    assert (b.num_gaussians, b.sh_degree, tuple(b.batch_shape), b.is_batched) == (7, 2, (3,), True)
    g.validate()
    b.validate()


def test_unbatched_indexing_selects_gaussians():
    g = _random(10)
    mask = torch.tensor([True, False] * 5)
    idx = torch.tensor([9, 0, 3])
    for key, rows in ((slice(2, 5), [2, 3, 4]), (mask, [0, 2, 4, 6, 8]), (idx, [9, 0, 3]), ([1, 1], [1, 1])):
        sub = g[key]
        assert sub.num_gaussians == len(rows)
        torch.testing.assert_close(sub.means, g.means[rows])
        torch.testing.assert_close(sub.sh, g.sh[rows])
        torch.testing.assert_close(sub.opacities, g.opacities[rows])
    one = g[-1]  # an int keeps the Gaussian axis
    assert one.means.shape == (1, 3) and one.sh.shape == (1, 4, 3) and one.opacities.shape == (1,)
    torch.testing.assert_close(one.quats, g.quats[9:10])
    with pytest.raises(IndexError):
        g[10]


def test_batched_indexing_picks_batch_element_and_select_indexes_gaussians():
    b = _random(6, batch=(2,))
    first = b[1]
    assert not first.is_batched
    torch.testing.assert_close(first.means, b.means[1])
    torch.testing.assert_close(first.sh, b.sh[1])
    with pytest.raises(TypeError, match="select"):
        b[0:1]
    sub = b.select(torch.tensor([True, False, True, False, False, True]))
    assert tuple(sub.batch_shape) == (2,) and sub.num_gaussians == 3
    torch.testing.assert_close(sub.scales, b.scales[:, [0, 2, 5]])
    torch.testing.assert_close(sub.opacities, b.opacities[:, [0, 2, 5]])


def test_cat_round_trips_indexing_and_promotes_sh():
    g = _random(10, degree=1)
    _assert_same(Gaussians.cat([g[:4], g[4:]]), g)
    low, high = _random(3, degree=0, seed=1), _random(5, degree=3, seed=2)
    both = Gaussians.cat([low, high])
    assert both.num_gaussians == 8 and both.sh_degree == 3
    torch.testing.assert_close(both.sh[:3, :1], low.sh)
    assert (both.sh[:3, 1:] == 0).all()  # promoted bands are zero, so colours are unchanged
    _assert_same(both[3:], high)
    batched = Gaussians.cat([_random(2, batch=(4,)), _random(3, batch=(4,), seed=1)])
    assert tuple(batched.batch_shape) == (4,) and batched.num_gaussians == 5
    with pytest.raises(ValueError):
        Gaussians.cat([_random(2, batch=(4,)), _random(2)])
    with pytest.raises(ValueError):
        Gaussians.cat([])


def test_with_sh_degree_truncates_and_pads():
    g = _random(4, degree=2)
    assert g.with_sh_degree(2).sh.shape == (4, 9, 3)
    lo = g.with_sh_degree(0)
    torch.testing.assert_close(lo.sh, g.sh[:, :1])
    up = lo.with_sh_degree(3)
    assert up.sh.shape == (4, 16, 3) and (up.sh[:, 1:] == 0).all()
    _assert_same(g.with_sh_degree(3).with_sh_degree(2), g)
    with pytest.raises(ValueError):
        g.with_sh_degree(4)


def test_detach_clone_to():
    g = _random(5)
    g.means.requires_grad_(True)
    d = g.detach()
    assert not d.means.requires_grad and d.means.data_ptr() == g.means.data_ptr()
    c = g.clone()
    assert c.sh.data_ptr() != g.sh.data_ptr()
    _assert_same(c.detach(), d)
    assert g.to(torch.float64).means.dtype == torch.float64


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("means", torch.zeros(10, 2), "means"),
        ("quats", torch.zeros(9, 4) + 1, "quats"),
        ("opacities", torch.zeros(10, 1), "opacities"),
        ("sh", torch.zeros(10, 5, 3), "sh"),
        ("means", torch.full((10, 3), float("nan")), "means"),
        ("sh", torch.full((10, 4, 3), float("inf")), "sh"),
        ("opacities", torch.full((10,), 1.5), "opacities"),
        ("scales", torch.zeros(10, 3), "scales"),
        ("quats", torch.zeros(10, 4), "quats"),
    ],
)
def test_validate_names_the_bad_field(field, value, message):
    g = _random(10)
    setattr(g, field, value)
    with pytest.raises(ValueError, match=message):
        g.validate()


def test_covariances_are_rotated_scales():
    g = _random(20)
    cov = g.covariances()
    torch.testing.assert_close(cov, cov.mT)
    ev = torch.linalg.eigvalsh(cov.double())
    torch.testing.assert_close(ev, g.scales.double().square().sort(-1).values, rtol=1e-4, atol=1e-6)


def test_splatfacto_params_round_trip():
    g = _random(8, degree=2)
    p = g.to_splatfacto_params()
    assert set(p) == set(SPLATFACTO_KEYS)
    assert p["features_dc"].shape == (8, 3) and p["features_rest"].shape == (8, 8, 3) and p["opacities"].shape == (8, 1)
    torch.testing.assert_close(p["scales"], g.scales.log())
    torch.testing.assert_close(p["opacities"][:, 0], torch.logit(g.opacities))
    torch.testing.assert_close(p["features_dc"], g.sh[:, 0])
    back = Gaussians.from_splatfacto_params(*(p[k] for k in SPLATFACTO_KEYS))
    for name in ("means", "quats", "sh"):
        torch.testing.assert_close(getattr(back, name), getattr(g, name))
    torch.testing.assert_close(back.scales, g.scales)
    torch.testing.assert_close(back.opacities, g.opacities)
    # DC-only, opacities given as (N,), no rest features
    dc = Gaussians.from_splatfacto_params(
        p["means"], p["scales"], p["quats"], p["features_dc"], None, p["opacities"][:, 0]
    )
    assert dc.sh_degree == 0 and dc.opacities.shape == (8,)
    # batched
    pb = _random(5, batch=(2,)).to_splatfacto_params()
    assert pb["opacities"].shape == (2, 5, 1)
    assert Gaussians.from_splatfacto_params(*(pb[k] for k in SPLATFACTO_KEYS)).opacities.shape == (2, 5)
