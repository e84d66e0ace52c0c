"""The torch renderer's forward-only path (`rendering/fast.py`, `fast_composite.py`), taken when no gradient is
recorded: it must give what the differentiable path gives (and the brute force of `test_render.py`)."""

import math

import pytest
import torch

from da3_splat.gaussians import Gaussians
from da3_splat.rendering import cpu, fast, fast_composite, native, render
from tests.render.test_render import H, W, cameras, composite_brute, random_gaussians

MODES = ["RGB", "D", "ED", "RGB+D", "RGB+ED"]


def both_paths(g, viewmats, Ks, width=W, height=H, **kwargs):
    """(forward-only, differentiable) outputs of `render` for the same scene, with `info`."""
    with torch.no_grad():
        fast_out = render(g, viewmats, Ks, width, height, return_info=True, **kwargs)
    g = Gaussians(g.means.clone().requires_grad_(), g.quats, g.scales, g.opacities, g.sh)
    diff_out = render(g, viewmats, Ks, width, height, return_info=True, **kwargs)
    assert diff_out.alpha.requires_grad and not fast_out.alpha.requires_grad  # each took its own path
    return fast_out, diff_out


def assert_same_image(a, b, atol):
    for name in ("colors", "depth", "alpha"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            torch.testing.assert_close(x, y.detach(), atol=atol, rtol=0, msg=name)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("antialiased", [False, True])
def test_matches_differentiable_path_float64(mode, antialiased):
    g = random_gaussians(300, seed=21, dtype=torch.float64, sh_degree=2)
    viewmats, Ks = cameras(2, dtype=torch.float64)
    bg = torch.tensor([[0.2, 0.5, 0.9], [1.0, 0.0, 0.3]], dtype=torch.float64)
    kwargs = dict(background=bg, mode=mode, rasterize_mode="antialiased" if antialiased else "classic")
    fast_out, diff_out = both_paths(g, viewmats, Ks, **kwargs)
    assert 0.2 < fast_out.alpha.mean() < 0.95
    assert_same_image(fast_out, diff_out, atol=1e-10)


@pytest.mark.parametrize("seed,sh_degree,cull_rows", [(0, 0, 3.0), (1, 1, 0.0), (2, 3, math.inf)])
def test_matches_differentiable_path_float32(seed, sh_degree, cull_rows, monkeypatch):
    """Larger scenes in float32, several rounds and passes per sub-tile, footprint rows cut to their ellipses or
    not: within 1e-5."""
    monkeypatch.setattr(fast_composite, "CULL_ROWS", cull_rows)
    g = random_gaussians(3000, seed=seed, sh_degree=sh_degree)
    g.scales = g.scales * 0.5
    viewmats, Ks = cameras(2, width=96, height=64, focal=70.0)
    fast_out, diff_out = both_paths(g, viewmats, Ks, 96, 64, sh_degree=sh_degree, mode="RGB+ED")
    assert fast_out.alpha.mean() > 0.5
    assert_same_image(fast_out, diff_out, atol=1e-5)


@pytest.mark.parametrize("width,height,cams,shrink", [(37, 29, 2, 1.0), (728, 364, 2, 0.1)])
def test_odd_sizes_large_splats_and_many_sub_tiles(width, height, cams, shrink):
    """Image sizes that are not whole sub-tiles, splats larger than the image, and more sub-tiles than int16 keys
    can name (728x364, 2 cameras: 33124)."""
    g = random_gaussians(250, seed=13, dtype=torch.float64)
    g.scales = g.scales * shrink
    g.scales[:3] = 2.0  # a few splats wider than the view
    viewmats, Ks = cameras(cams, width=width, height=height, focal=0.9 * width, dtype=torch.float64)
    fast_out, diff_out = both_paths(g, viewmats, Ks, width, height, mode="RGB+D")
    assert_same_image(fast_out, diff_out, atol=1e-10)


def test_info_matches_differentiable_path():
    g = random_gaussians(200, seed=5, dtype=torch.float64)
    fast_out, diff_out = both_paths(g, *cameras(2, dtype=torch.float64), mode="RGB", rasterize_mode="antialiased")
    fast_info, diff_info = fast_out.info, diff_out.info
    assert fast_info.keys() == diff_info.keys() and fast_info["gaussian_ids"] is None
    assert torch.equal(fast_info["radii"], diff_info["radii"]) and fast_info["radii"].dtype == torch.int32
    for key in ("means2d", "depths", "conics", "opacities"):
        assert fast_info[key].shape == diff_info[key].shape, key
        torch.testing.assert_close(fast_info[key], diff_info[key].detach(), atol=1e-12, rtol=1e-12, msg=key)


def test_projection_matches_cpu_project():
    g = random_gaussians(500, seed=8, dtype=torch.float64)
    viewmats, Ks = cameras(3, dtype=torch.float64)
    args = (g.means, g.quats, g.scales, viewmats, Ks, W, H, 0.3, 0.01, 1e10, True)
    want, got = cpu.project(*args), fast.project(*args)
    assert torch.equal(got[0], want[0]) and (want[0] > 0).float().mean() > 0.3
    for a, b in zip(got[1:], want[1:]):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def native_composite(means2d, conics, colors, opacities, radii, depths, width, height):
    """`fast_composite.composite`'s contract, through the compiled compositor (`rendering/composite.c`)."""
    C, N, D = colors.shape
    ids, order = fast_composite.visible(radii, opacities, depths)
    feats = colors.reshape(C * N, D).index_select(0, ids).T
    out = native.composite_visible(ids, order, means2d, conics, opacities, radii, feats, width, height)
    assert out is not None, "the compiled compositor is unavailable"
    return out


@pytest.mark.parametrize("composite", [fast_composite.composite, native_composite], ids=["torch", "C"])
def test_compositor_matches_brute_force_at_tile_edges_and_early_stop(composite):
    """The two rule cases of `test_render.py` (gsplat's 16-px tile rule, the kernel's early stop), plus both at
    once in one image, for both forward-only compositors."""
    dtype = torch.float64
    var = (3.0 - 1e-3) ** 2 - 0.1  # radius 9 ends exactly at a tile edge: alpha beyond it is left out
    means2d = torch.tensor([[[25.01, 12.0], [30.0, 20.0], [7.5, 7.5], [7.5, 7.5], [7.5, 7.5]]], dtype=dtype)
    conics = torch.tensor([[[1 / var, 0.0, 1 / var], [0.5, 0.1, 0.4]] + [[0.05, 0.0, 0.05]] * 3], dtype=dtype)
    colors = torch.tensor([[[1.0, 0.5], [0.2, 0.7], [1.0, 0.1], [2.0, 0.2], [3.0, 0.3]]], dtype=dtype)
    opacities = torch.tensor([[0.999, 0.8, 0.995, 0.995, 0.995]], dtype=dtype)
    radii = torch.tensor([[9, 5, 14, 14, 14]], dtype=torch.int32)
    depths = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]], dtype=dtype)
    args = (means2d, conics, colors, opacities, radii, depths, 48, 32)
    img, alpha = composite(*args)
    want_img, want_alpha = composite_brute(*args)
    torch.testing.assert_close(img, want_img, atol=1e-12, rtol=0)
    torch.testing.assert_close(alpha, want_alpha, atol=1e-12, rtol=0)
    assert (composite_brute(*args, tile_rule=False)[1] - alpha).abs().max() > 1e-3  # the tile rule matters
    assert (composite_brute(*args, stop=False)[1] - alpha).abs().max() > 1e-3  # so does the stop


def test_ill_conditioned_conics():
    """Conics with a condition number above 1e4, where rounding could take sigma below 0, go through the
    pixel-by-pixel sigma < 0 check; with it they still match the brute force and the differentiable path."""
    gen = torch.Generator().manual_seed(3)
    n = 30
    means2d = torch.rand(1, n, 2, generator=gen) * torch.tensor([48.0, 32.0])
    angle = torch.rand(n, generator=gen) * 3.14
    c, s = torch.cos(angle), torch.sin(angle)
    l0, l1 = torch.tensor([0.2, 1e-5]).repeat(n // 2), torch.full((n,), 0.5)  # eigenvalues: half elongated
    conics = torch.stack([l0 * c * c + l1 * s * s, (l0 - l1) * c * s, l0 * s * s + l1 * c * c], -1)[None]
    colors = torch.rand(1, n, 3, generator=gen)
    opacities = 0.3 + 0.6 * torch.rand(1, n, generator=gen)
    radii = torch.full((1, n), 12, dtype=torch.int32)
    depths = torch.rand(1, n, generator=gen)
    args = (means2d, conics, colors, opacities, radii, depths, 48, 32)
    got = fast_composite.composite(*args)
    for want in (composite_brute(*args), cpu._Composite.apply(*args, False)):
        for x, y in zip(got, want):
            torch.testing.assert_close(x, y, atol=1e-5, rtol=0)


def test_passes_rounds_steps_and_row_cuts_do_not_change_results(monkeypatch):
    g = random_gaussians(400, seed=9, dtype=torch.float64)
    viewmats, Ks = cameras(2, dtype=torch.float64)
    with torch.no_grad():
        whole = render(g, viewmats, Ks, W, H, mode="RGB+D")
        settings = [("PASSES", (0.1, 0.3, 0.6)), ("ROUNDS", (3, 2)), ("BATCH", 100), ("CHUNK", 37), ("CULL_ROWS", 0.0)]
        for name, value in settings:
            monkeypatch.setattr(fast_composite, name, value)
        parts = render(g, viewmats, Ks, W, H, mode="RGB+D")
    assert_same_image(parts, whole, atol=1e-12)


def test_nothing_visible_gives_background():
    bg = torch.tensor([0.1, 0.2, 0.3])
    for g in (random_gaussians(0), random_gaussians(30, behind=1.0)):
        with torch.no_grad():
            out = render(g, *cameras(2), W, H, background=bg, mode="RGB+ED", return_info=True)
        assert torch.equal(out.colors, bg.expand(2, H, W, 3)) and not out.alpha.any() and not out.depth.any()
        assert out.info["radii"].shape == (2, g.num_gaussians) and not out.info["radii"].any()


def test_grad_mode_chooses_the_path(monkeypatch):
    """Inputs that need no gradient, or autograd off: forward-only; a parameter with requires_grad under
    autograd: the differentiable path."""
    g = random_gaussians(50, seed=1)
    calls = []
    real = fast.rasterize
    monkeypatch.setattr(fast, "rasterize", lambda *a, **k: calls.append(1) or real(*a, **k))
    render(g, *cameras(1), W, H)
    with torch.no_grad():
        render(Gaussians(g.means.clone().requires_grad_(), g.quats, g.scales, g.opacities, g.sh), *cameras(1), W, H)
    assert len(calls) == 2
    out = render(Gaussians(g.means, g.quats, g.scales, g.opacities.clone().requires_grad_(), g.sh), *cameras(1), W, H)
    assert len(calls) == 2 and out.colors.requires_grad
