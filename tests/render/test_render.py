"""The renderer: torch (CPU) backend against a per-pixel brute force and gradcheck, against gsplat on CUDA,
degenerate input, what densification reads from `info`, and a pixel-aligned round trip."""

import math

import pytest
import torch
import torch.nn.functional as F
from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci

from da3_splat.gaussians import Gaussians
from da3_splat.rendering import RenderOutput, cpu, render
from da3_splat.sh import RGB2SH, eval_sh_basis

MODES = ["RGB", "D", "ED", "RGB+D", "RGB+ED"]
W, H = 32, 24


def random_gaussians(n, seed=0, dtype=torch.float32, sh_degree=3, behind=0.1):
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.rand(*s, generator=g, dtype=dtype)

    means = torch.cat([(r(n, 2) - 0.5) * 3, r(n, 1) * 4 + 0.5], -1)
    means[: int(behind * n), 2] *= -1  # some behind the cameras
    return Gaussians(
        means=means,
        quats=torch.randn(n, 4, generator=g, dtype=dtype),
        scales=r(n, 3) * 0.15 + 0.01,
        opacities=r(n) * 0.99,
        sh=0.5 * torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g, dtype=dtype),
    )


def cameras(n, width=W, height=H, focal=30.0, dtype=torch.float32):
    viewmats = torch.eye(4, dtype=dtype).repeat(n, 1, 1)
    for c in range(n):
        a = 0.1 * c
        viewmats[c, :3, :3] = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
        viewmats[c, :3, 3] = torch.tensor([0.1 * c, -0.05 * c, 0.2])
    K = torch.tensor([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]], dtype=dtype)
    return viewmats, K.repeat(n, 1, 1)


# --------------------------------------------------------------------------------------------------
# Brute force: every pixel, every Gaussian, front to back, with the CUDA kernel's rules


def composite_brute(means2d, conics, colors, opacities, radii, depths, width, height, tile_rule=True, stop=True):
    """Per camera and Gaussian (depth order), all pixels at once; a Gaussian reaches a pixel only inside the
    16-px tiles its radius box overlaps (gsplat's isect_tiles) when `tile_rule`; a pixel is done (this Gaussian
    and all later ones left out) once the next transmittance would be <= 1e-4, when `stop`."""
    C, _, D = colors.shape
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    px, py = xs.flatten().to(colors) + 0.5, ys.flatten().to(colors) + 0.5
    out, alpha = [], []
    for c in range(C):
        img, T = colors.new_zeros(height * width, D), colors.new_ones(height * width)
        done = torch.zeros(height * width, dtype=torch.bool)
        for n in torch.sort(depths[c], stable=True)[1].tolist():
            r = float(radii[c, n])
            if r <= 0:
                continue
            mx, my = means2d[c, n]
            a, b, cc = conics[c, n]
            dx, dy = mx - px, my - py
            sigma = 0.5 * (a * dx * dx + cc * dy * dy) + b * dx * dy
            al = (opacities[c, n] * torch.exp(-sigma)).clamp(max=0.999)
            use = (sigma >= 0) & (al >= 1 / 255)
            if tile_rule:
                tx0, tx1 = max(0, math.floor(mx / 16 - r / 16)), math.ceil(mx / 16 + r / 16)
                ty0, ty1 = max(0, math.floor(my / 16 - r / 16)), math.ceil(my / 16 + r / 16)
                tx, ty = xs.flatten() // 16, ys.flatten() // 16
                use &= (tx >= tx0) & (tx < tx1) & (ty >= ty0) & (ty < ty1)
            if stop:
                done |= use & (T * (1 - al) <= 1e-4)
                use &= ~done
            al = torch.where(use, al, 0.0)
            img = img + (al * T)[:, None] * colors[c, n]
            T = T * (1 - al)
        out.append(img.view(height, width, D))
        alpha.append((1 - T).view(height, width, 1))
    return torch.stack(out), torch.stack(alpha)


def render_brute(g, viewmats, Ks, width, height, sh_degree, background, mode, antialiased=False):
    covars, _ = _quat_scale_to_covar_preci(g.quats, g.scales, compute_preci=False)
    radii, means2d, depths, conics, comp = _fully_fused_projection(
        g.means, covars, viewmats, Ks, width, height, calc_compensations=antialiased
    )
    opacities = g.opacities * comp if antialiased else g.opacities.expand_as(depths)
    campos = torch.inverse(viewmats)[:, :3, 3]
    dirs = F.normalize(g.means[None] - campos[:, None], dim=-1)
    k = (sh_degree + 1) ** 2
    rgb = ((eval_sh_basis(sh_degree, dirs)[..., None] * g.sh[None, :, :k]).sum(-2) + 0.5).clamp_min(0)
    feats = torch.cat([rgb, depths[..., None]], -1)
    img, alpha = composite_brute(means2d, conics, feats, opacities, radii, depths, width, height)
    colors, depth = img[..., :3] + (1 - alpha) * background[:, None, None], img[..., 3:]
    if "ED" in mode:
        depth = depth / alpha.clamp(min=1e-10)
    return colors, depth, alpha


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("sh_degree", [0, 1, 2, 3])
def test_matches_brute_force(mode, sh_degree):
    g = random_gaussians(200, seed=sh_degree, dtype=torch.float64)
    viewmats, Ks = cameras(2, dtype=torch.float64)
    bg = torch.tensor([[0.2, 0.5, 0.9], [1.0, 0.0, 0.3]], dtype=torch.float64)
    out = render(g, viewmats, Ks, W, H, sh_degree=sh_degree, background=bg, mode=mode)
    colors, depth, alpha = render_brute(g, viewmats, Ks, W, H, sh_degree, bg, mode)
    assert 0.2 < alpha.mean() < 0.9  # a real test: overlaps, gaps, several 16-px tiles
    torch.testing.assert_close(out.alpha, alpha, atol=1e-5, rtol=0)
    assert (out.colors is None) == (mode in ("D", "ED")) and (out.depth is None) == (mode == "RGB")
    if out.colors is not None:
        torch.testing.assert_close(out.colors, colors, atol=1e-5, rtol=0)
    if out.depth is not None:
        torch.testing.assert_close(out.depth, depth, atol=1e-5, rtol=0)


def test_matches_brute_force_float32():
    g = random_gaussians(200, seed=7)
    viewmats, Ks = cameras(2)
    bg = torch.tensor([0.3, 0.3, 0.3])
    out = render(g, viewmats, Ks, W, H, background=bg, mode="RGB+D")
    colors, depth, alpha = render_brute(g, viewmats, Ks, W, H, 3, bg.expand(2, 3), "RGB+D")
    for got, want in [(out.colors, colors), (out.depth, depth), (out.alpha, alpha)]:
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_antialiased_matches_brute_force():
    g = random_gaussians(200, seed=11, dtype=torch.float64)
    viewmats, Ks = cameras(2, dtype=torch.float64)
    bg = torch.zeros(3, dtype=torch.float64)
    out = render(g, viewmats, Ks, W, H, background=bg, mode="RGB+D", rasterize_mode="antialiased")
    want = render_brute(g, viewmats, Ks, W, H, 3, bg.expand(2, 3), "RGB+D", antialiased=True)
    for got, w in zip((out.colors, out.depth, out.alpha), want):
        torch.testing.assert_close(got, w, atol=1e-5, rtol=0)
    assert (out.alpha - render(g, viewmats, Ks, W, H).alpha).abs().max() > 1e-2  # it does change the image


def test_gsplat_tile_rule_at_tile_edges():
    """A wide, opaque splat whose 3-sigma radius box ends exactly at a 16-px tile edge still has alpha > 1/255
    beyond it; gsplat's kernel leaves those pixels out, and so must we."""
    s = 3.0 - 1e-3  # sqrt of the largest eigenvalue: radius = ceil(3 s) = 9
    var = s * s - 0.1  # gsplat: v1 = b + sqrt(max(b^2 - det, 0.01)) = var + 0.1 for an isotropic splat
    means2d = torch.tensor([[[16 + 9 + 0.01, 12.0], [30.0, 20.0]]], dtype=torch.float64)
    conics = torch.tensor([[[1 / var, 0.0, 1 / var], [0.5, 0.1, 0.4]]], dtype=torch.float64)
    colors = torch.tensor([[[1.0, 0.5], [0.2, 0.7]]], dtype=torch.float64)
    opacities = torch.tensor([[0.999, 0.8]], dtype=torch.float64)
    radii = torch.tensor([[9, 5]], dtype=torch.int32)
    depths = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    args = (means2d, conics, colors, opacities, radii, depths, 48, 32)
    img, alpha = cpu._Composite.apply(*args, False)
    want_img, want_alpha = composite_brute(*args)
    torch.testing.assert_close(img, want_img, atol=1e-12, rtol=0)
    torch.testing.assert_close(alpha, want_alpha, atol=1e-12, rtol=0)
    assert (composite_brute(*args, tile_rule=False)[1] - alpha).abs().max() > 1e-3  # the rule matters here


def test_early_stop_like_the_kernel():
    """Three Gaussians of opacity 0.995 centred on one pixel: after the first, T = 0.005 there, and the second would
    take it below 1e-4, so the kernel stops: that pixel gets alpha 0.995 and only the first colour."""
    means2d = torch.tensor([[[7.5, 7.5]] * 3], dtype=torch.float64)
    conics = torch.tensor([[[0.05, 0.0, 0.05]] * 3], dtype=torch.float64)
    colors = torch.tensor([[[1.0], [2.0], [3.0]]], dtype=torch.float64)
    opacities = torch.full((1, 3), 0.995, dtype=torch.float64)
    radii, depths = torch.full((1, 3), 14, dtype=torch.int32), torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    args = (means2d, conics, colors, opacities, radii, depths, 16, 16)
    img, alpha = cpu._Composite.apply(*args, False)
    assert (alpha[0, 7, 7, 0].item(), img[0, 7, 7, 0].item()) == (0.995, 0.995)
    assert (composite_brute(*args, stop=False)[1] - alpha).abs().max() > 1e-3  # the stop matters here
    want_img, want_alpha = composite_brute(*args)
    torch.testing.assert_close(img, want_img, atol=1e-12, rtol=0)
    torch.testing.assert_close(alpha, want_alpha, atol=1e-12, rtol=0)


def test_chunking_does_not_change_results(monkeypatch):
    g = random_gaussians(150, seed=3, dtype=torch.float64)
    viewmats, Ks = cameras(2, dtype=torch.float64)

    def run():
        params = [t.clone().requires_grad_() for t in (g.means, g.quats, g.scales, g.opacities, g.sh)]
        out = render(Gaussians(*params), viewmats, Ks, W, H, mode="RGB+ED")
        (out.colors.square().sum() + out.depth.sum() + out.alpha.sum()).backward()
        return [out.colors, out.depth, out.alpha] + [p.grad for p in params]

    whole = run()
    for name, value in [("ENTRY_BUDGET", 7), ("RUN_BUDGET", 3), ("SLAB", 2)]:  # many groups and slabs
        monkeypatch.setattr(cpu, name, value)
    for a, b in zip(whole, run()):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


# --------------------------------------------------------------------------------------------------
# Gradients


def _small_scene():
    n, dtype = 6, torch.float64
    g = torch.Generator().manual_seed(1)
    means = torch.cat([(torch.rand(n, 2, generator=g, dtype=dtype) - 0.5) * 0.6, 2 + torch.rand(n, 1, generator=g)], -1)
    gaussians = Gaussians(
        means=means,
        quats=torch.randn(n, 4, generator=g, dtype=dtype),
        scales=0.2 + 0.3 * torch.rand(n, 3, generator=g, dtype=dtype),
        opacities=0.3 + 0.6 * torch.rand(n, generator=g, dtype=dtype),
        sh=0.5 * torch.randn(n, 4, 3, generator=g, dtype=dtype),
    )
    viewmats, Ks = cameras(2, width=8, height=6, focal=8.0, dtype=dtype)
    return gaussians, viewmats, Ks


@pytest.mark.parametrize("mode,fast,slab", [("RGB+D", False, None), ("ED", True, 1)])
def test_gradcheck(mode, fast, slab, monkeypatch):
    if slab:  # one entry per sub-tile and step: transmittance carried across slabs
        monkeypatch.setattr(cpu, "SLAB", slab)
    g, viewmats, Ks = _small_scene()
    bg = torch.tensor([0.3, 0.6, 0.1], dtype=torch.float64)

    def f(means, quats, scales, opacities, sh, viewmats):
        out = render(Gaussians(means, quats, scales, opacities, sh), viewmats, Ks, 8, 6, background=bg, mode=mode)
        return tuple(x for x in (out.colors, out.depth, out.alpha) if x is not None)

    inputs = [t.clone().requires_grad_() for t in (g.means, g.quats, g.scales, g.opacities, g.sh, viewmats)]
    assert f(*inputs)[-1].mean() > 0.3  # overlapping splats, not a sparse image
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=fast)


def test_gradcheck_through_early_stop():
    """Wide, nearly opaque splats stacked: many pixels stop before the third; gradients see only what was drawn."""
    dtype = torch.float64
    means2d = torch.tensor([[[7.5, 7.5], [7.0, 8.0], [8.2, 7.1], [6.0, 6.0]]], dtype=dtype)
    conics = torch.tensor([[[0.03, 0, 0.03], [0.025, 0.002, 0.03], [0.02, -0.003, 0.025], [0.1, 0, 0.1]]], dtype=dtype)
    colors = torch.rand(1, 4, 3, dtype=dtype, generator=torch.Generator().manual_seed(0))
    opacities = torch.tensor([[0.998, 0.997, 0.98, 0.9]], dtype=dtype)
    radii, depths = torch.full((1, 4), 10, dtype=torch.int32), torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=dtype)
    args = (radii, depths, 16, 16, False)
    inputs = [t.clone().requires_grad_() for t in (means2d, conics, colors, opacities)]
    _, alpha = cpu._Composite.apply(*inputs, *args)
    _, alpha_no_stop = composite_brute(means2d, conics, colors, opacities, radii, depths, 16, 16, stop=False)
    assert ((alpha - alpha_no_stop).abs() > 1e-9).sum() > 10
    assert torch.autograd.gradcheck(lambda *x: cpu._Composite.apply(*x, *args), inputs, eps=1e-7, atol=1e-6, rtol=1e-4)


def test_info_for_densification():
    g = random_gaussians(100, seed=2)
    params = [t.clone().requires_grad_() for t in (g.means, g.quats, g.scales, g.opacities, g.sh)]
    out = render(Gaussians(*params), *cameras(2), W, H, mode="RGB", return_info=True, absgrad=True)
    info = out.info
    assert {"width", "height", "n_cameras", "radii", "gaussian_ids", "means2d"} <= info.keys()
    assert (info["width"], info["height"], info["n_cameras"], info["gaussian_ids"]) == (W, H, 2, None)
    assert info["radii"].shape == (2, 100) and info["radii"].dtype == torch.int32
    assert info["means2d"].shape == (2, 100, 2)
    info["means2d"].retain_grad()  # what DefaultStrategy.step_pre_backward does
    out.colors.sum().backward()
    grad, visible = info["means2d"].grad, info["radii"] > 0
    assert grad is not None and grad.shape == (2, 100, 2)
    assert grad[visible].abs().sum(-1).gt(0).float().mean() > 0.8 and not grad[~visible].any()
    assert info["means2d"].absgrad.shape == (2, 100, 2)
    assert (info["means2d"].absgrad >= grad.abs() - 1e-6).all()
    assert render(g, *cameras(2), W, H).info == {}  # return_info=False


def test_default_strategy_runs_on_cpu():
    from gsplat.strategy import DefaultStrategy

    g = random_gaussians(100, seed=4, behind=0.0)
    params = torch.nn.ParameterDict(
        {k: torch.nn.Parameter(getattr(g, k).clone()) for k in ("means", "quats", "scales", "opacities", "sh")}
    )
    strategy = DefaultStrategy(absgrad=False)
    state = strategy.initialize_state()
    out = render(Gaussians(**params), *cameras(1), W, H, mode="RGB", return_info=True)
    strategy.step_pre_backward(params, {}, state, 1, out.info)
    out.colors.mean().backward()
    strategy.step_post_backward(params, {}, state, 1, out.info)  # step 1: statistics only, no refinement
    assert state["grad2d"].shape == (100,) and state["count"].sum() > 0


def test_cpu_tensors_never_call_gsplat_rasterization(monkeypatch):
    import gsplat

    def fail(*args, **kwargs):
        raise AssertionError("gsplat.rasterization called for CPU tensors")

    monkeypatch.setattr(gsplat, "rasterization", fail)
    out = render(random_gaussians(20), *cameras(1), W, H)
    assert isinstance(out, RenderOutput) and out.colors.shape == (1, H, W, 3) and out.depth.shape == (1, H, W, 1)


# --------------------------------------------------------------------------------------------------
# Degenerate input


@pytest.mark.parametrize("case", ["empty", "behind"])
def test_nothing_visible_gives_background(case):
    g = random_gaussians(0 if case == "empty" else 30, behind=1.0)
    means = g.means.clone().requires_grad_()
    bg = torch.tensor([0.1, 0.2, 0.3])
    out = render(
        Gaussians(means, g.quats, g.scales, g.opacities, g.sh),
        *cameras(2),
        W,
        H,
        background=bg,
        mode="RGB+ED",
        return_info=True,
    )
    assert torch.equal(out.colors, bg.expand(2, H, W, 3)) and not out.alpha.any() and not out.depth.any()
    assert out.info["radii"].shape == (2, len(means)) and not out.info["radii"].any()
    (out.colors.sum() + out.depth.sum()).backward()
    assert means.grad is not None and not means.grad.any()


@pytest.mark.parametrize("field", ["means", "quats", "scales", "opacities", "sh"])
def test_nan_parameters_raise(field):
    g = random_gaussians(10)
    getattr(g, field).view(-1)[3] = float("nan")
    with pytest.raises(ValueError, match=field):
        render(g, *cameras(1), W, H)


def test_bad_arguments_raise():
    g = random_gaussians(10)
    viewmats, Ks = cameras(1)
    with pytest.raises(ValueError, match="mode"):
        render(g, viewmats, Ks, W, H, mode="RGBD")
    with pytest.raises(ValueError, match="sh_degree"):
        render(g, viewmats, Ks, W, H, sh_degree=4)
    with pytest.raises(ValueError, match="unbatched"):
        render(Gaussians(*(t[None] for t in (g.means, g.quats, g.scales, g.opacities, g.sh))), viewmats, Ks, W, H)
    with pytest.raises(ValueError, match="viewmats"):
        render(g, viewmats[0], Ks, W, H)


# --------------------------------------------------------------------------------------------------
# A pixel-aligned scene comes back


def test_pixel_aligned_scene_renders_its_source_image():
    h, w, f = 36, 48, 40.0
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    depth = 2.0 + 0.5 * torch.sin(3 * xx) * torch.cos(2 * yy)
    rgb = torch.stack([xx, yy, 0.5 + 0.4 * torch.sin(4 * xx + 3 * yy)], -1)
    K = torch.tensor([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]])
    v, u = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    rays = torch.stack([u, v, torch.ones_like(u)], -1) @ torch.linalg.inv(K).T
    w2c = torch.eye(4)
    w2c[:3, :3] = torch.tensor([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]])  # a rotated, translated camera
    w2c[:3, 3] = torch.tensor([0.3, -0.2, 0.5])
    cam = (rays * depth[..., None]).reshape(-1, 3)
    means = (cam - w2c[:3, 3]) @ w2c[:3, :3]  # world = R^T (x_cam - t)
    n = len(means)
    g = Gaussians(
        means,
        torch.tensor([1.0, 0, 0, 0]).repeat(n, 1),
        (0.5 * depth / f).reshape(-1, 1).repeat(1, 3),
        torch.full((n,), 0.99),
        RGB2SH(rgb.reshape(-1, 1, 3)),
    )
    out = render(g, w2c[None], K[None], w, h, mode="RGB+ED")
    inner = (slice(None), slice(3, -3), slice(3, -3))  # borders lack the neighbours beyond the image
    assert out.alpha[inner].min() > 0.99
    # Neighbouring splats overlap (and the nearer ones occlude), so allow one (diagonal) pixel step of the source.
    for got, want in [(out.colors[0], rgb), (out.depth[0, ..., 0], depth)]:
        step = (want[1:] - want[:-1]).abs().max() + (want[:, 1:] - want[:, :-1]).abs().max()
        assert (got - want)[inner[1:]].abs().max() < step


# --------------------------------------------------------------------------------------------------
# gsplat's CUDA rasteriser


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (compares with gsplat's CUDA kernels)")
@pytest.mark.parametrize("mode", ["RGB+D", "RGB+ED"])
def test_matches_gsplat_cuda(mode):
    g = random_gaussians(2000, seed=5)
    g.scales = g.scales * 0.5
    viewmats, Ks = cameras(2, width=64, height=48, focal=50.0)
    bg = torch.tensor([0.2, 0.4, 0.6])
    weights = torch.rand(2, 48, 64, 3, generator=torch.Generator().manual_seed(0))

    def run(device):
        params = [t.detach().to(device).requires_grad_() for t in (g.means, g.quats, g.scales, g.opacities, g.sh)]
        out = render(
            Gaussians(*params),
            viewmats.to(device),
            Ks.to(device),
            64,
            48,
            background=bg.to(device),
            mode=mode,
            return_info=True,
        )
        (out.colors * weights.to(device)).sum().backward()
        return out, [p.grad.cpu() for p in params]

    (cpu_out, cpu_grads), (gpu_out, gpu_grads) = run("cpu"), run("cuda")
    assert cpu_out.info.keys() == gpu_out.info.keys()
    torch.testing.assert_close(gpu_out.colors.detach().cpu(), cpu_out.colors.detach(), atol=1e-3, rtol=0)
    torch.testing.assert_close(gpu_out.alpha.detach().cpu(), cpu_out.alpha.detach(), atol=1e-3, rtol=0)
    solid = cpu_out.alpha.detach() > 0.5  # expected depth divides by alpha: compare where it is well defined
    torch.testing.assert_close(gpu_out.depth.detach().cpu()[solid], cpu_out.depth.detach()[solid], atol=1e-3, rtol=1e-3)
    for name, a, b in zip(("means", "quats", "scales", "opacities", "sh"), gpu_grads, cpu_grads):
        torch.testing.assert_close(a, b, atol=1e-3 * float(b.abs().max()), rtol=1e-2, msg=f"grad of {name}")
