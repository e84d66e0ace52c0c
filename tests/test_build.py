"""Building Gaussians from a prediction: head-free geometry, colour and opacity, the input view rendered back, and
the choice of source and budget in `gaussians_from_prediction`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from da3_splat.build import (
    HEADFREE_OPACITY,
    HEADFREE_SCALE,
    confidence_to_opacity,
    gaussians_from_prediction,
    headfree_gaussians,
)
from da3_splat.errors import InputError
from da3_splat.gaussians import Gaussians
from da3_splat.model.inference import Prediction
from da3_splat.rendering import render
from da3_splat.sh import SH2RGB


def _camera(yaw: float = 0.4, t=(0.3, -0.2, 0.5)) -> torch.Tensor:
    w2c = torch.eye(4)
    c, s = math.cos(yaw), math.sin(yaw)
    w2c[:3, :3] = torch.tensor([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    w2c[:3, 3] = torch.tensor(t)
    return w2c


def _K(w: int, h: int, f: float = 40.0) -> torch.Tensor:
    return torch.tensor([[f, 0, w / 2], [0, 1.1 * f, h / 2], [0, 0, 1]])


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10 * torch.log10(((a - b) ** 2).mean()))


# --------------------------------------------------------------------------------------------------
# Head-free Gaussians


def test_means_project_back_to_their_pixel_centres_in_view_row_col_order():
    S, H, W = 2, 6, 9
    depth = 1.0 + torch.rand(S, H, W, generator=torch.Generator().manual_seed(0)) * 3
    w2c = torch.stack([_camera(0.4), _camera(-0.7, (0.0, 0.1, -0.3))])
    K = torch.stack([_K(W, H), _K(W, H, 55.0)])
    images = torch.randint(0, 256, (S, H, W, 3), dtype=torch.uint8)
    g = headfree_gaussians(depth, images, w2c, K)
    assert g.num_gaussians == S * H * W and g.validate() is g
    means = g.means.reshape(S, H, W, 3)
    cam = torch.einsum("sij,shwj->shwi", w2c[:, :3, :3], means) + w2c[:, None, None, :3, 3]
    uv = torch.einsum("sij,shwj->shwi", K, cam)
    v, u = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    torch.testing.assert_close(uv[..., 0] / uv[..., 2], u.expand(S, H, W), atol=1e-4, rtol=0)
    torch.testing.assert_close(uv[..., 1] / uv[..., 2], v.expand(S, H, W), atol=1e-4, rtol=0)
    torch.testing.assert_close(cam[..., 2], depth, atol=1e-5, rtol=1e-5)  # planar depth, not distance
    # Colour, isotropic footprint scale, identity rotation, opacity without confidence.
    torch.testing.assert_close(SH2RGB(g.sh[:, 0]), images.reshape(-1, 3).float() / 255, atol=1e-6, rtol=0)
    focal = 0.5 * (K[:, 0, 0] + K[:, 1, 1])
    want = HEADFREE_SCALE * depth / focal[:, None, None]
    torch.testing.assert_close(g.scales, want.reshape(-1, 1).expand(-1, 3))
    assert (g.quats == torch.tensor([1.0, 0, 0, 0])).all() and (g.opacities == HEADFREE_OPACITY).all()


def test_higher_sh_bands_are_zero_and_float_images_are_accepted():
    depth = torch.full((1, 3, 4), 2.0)
    img = torch.rand(1, 3, 4, 3)
    g = headfree_gaussians(depth, img, torch.eye(4)[None], _K(4, 3)[None], sh_degree=2)
    assert g.sh.shape == (12, 9, 3) and (g.sh[:, 1:] == 0).all()
    torch.testing.assert_close(SH2RGB(g.sh[:, 0]), img.reshape(-1, 3))


def test_differentiable_in_depth():
    depth = torch.full((1, 8, 10), 2.0, requires_grad=True)
    img = torch.rand(1, 8, 10, 3, generator=torch.Generator().manual_seed(1))
    K = _K(10, 8, 12.0)[None]
    g = headfree_gaussians(depth, img, torch.eye(4)[None], K, conf=torch.rand(1, 8, 10) + 1)
    out = render(g, torch.eye(4)[None], K, 10, 8, mode="RGB+ED")
    (out.depth.mean() + out.colors.mean()).backward()
    assert depth.grad is not None and torch.isfinite(depth.grad).all() and depth.grad.abs().sum() > 0


def test_input_view_renders_back():
    """Exact depth of a textured synthetic room -> head-free Gaussians -> rendered at the same camera.

    Measured 32.9 dB at this scene (scale 0.45); splats 1.5x the footprint give 24.3 dB, unprojecting pixel
    corners instead of centres (offset 0) 28.3 dB: the threshold tells those apart. A copy of the image
    shifted by one pixel scores 28.5 dB, so the render must also be better than one pixel of misregistration."""
    from da3_splat.data.synthetic import SyntheticConfig, render_scene

    sc = render_scene(SyntheticConfig(frames=1, height=72, width=96), seed=4)
    depth, images = torch.from_numpy(sc.depth), torch.from_numpy(sc.images)
    w2c, K = torch.from_numpy(sc.w2c).float(), torch.from_numpy(sc.K).float()
    g = headfree_gaussians(depth, images, w2c, K)
    out = render(g, w2c, K, 96, 72, mode="RGB+ED")
    want = images.float() / 255
    shifted = _psnr(want[:, :, 1:], want[:, :, :-1])
    got = _psnr(out.colors, want)
    assert got > 30.0 and got > shifted + 3, (got, shifted)
    assert out.alpha.min() > 0.9
    inner = (slice(None), slice(2, -2), slice(2, -2))
    rel = (out.depth[..., 0] - depth).abs() / depth
    assert rel[inner].median() < 0.01


# --------------------------------------------------------------------------------------------------
# Opacity from confidence


def test_opacity_is_monotone_in_confidence():
    conf = 1 + torch.rand(10_000, generator=torch.Generator().manual_seed(2)) ** 3 * 20
    conf, _ = conf.sort()
    op = confidence_to_opacity(conf)
    assert (op.diff() >= 0).all()
    assert 0 <= op.min() and op.max() <= HEADFREE_OPACITY
    assert (op[conf >= conf.median()] == HEADFREE_OPACITY).all()  # the confident half is fully opaque
    assert confidence_to_opacity(torch.tensor([1.0, 3.0, 5.0]))[0] == 0  # at the floor of 1: transparent
    # Scale-free: multiplying the excess confidence by 10 changes nothing.
    torch.testing.assert_close(confidence_to_opacity(1 + 10 * (conf - 1)), op)
    # Nothing to tell apart: all at full opacity.
    assert (confidence_to_opacity(torch.ones(5)) == HEADFREE_OPACITY).all()


# --------------------------------------------------------------------------------------------------
# gaussians_from_prediction


def _prediction(S=3, H=28, W=42, gaussians=None, cameras=True) -> Prediction:
    gen = np.random.default_rng(0)
    yy, xx = np.meshgrid(np.linspace(0, 1, H), np.linspace(0, 1, W), indexing="ij")
    depth = np.stack([2 + np.sin(3 * xx + s) * np.cos(2 * yy) for s in range(S)]).astype(np.float32)
    w2c = np.stack([_camera(0.2 * s, (0.1 * s, 0, 0)).numpy()[:3] for s in range(S)])
    return Prediction(
        depth=depth,
        depth_conf=(1 + gen.random((S, H, W)) * 5).astype(np.float32),
        processed_images=gen.integers(0, 256, (S, H, W, 3), dtype=np.uint8),
        extrinsics=w2c if cameras else None,
        intrinsics=np.repeat(_K(W, H).numpy()[None], S, 0) if cameras else None,
        gaussians=gaussians,
    )


def test_budget_is_respected_and_filters_apply():
    pred = _prediction()
    S, H, W = pred.depth.shape
    g, source = gaussians_from_prediction(pred, max_gaussians=500)
    assert source == "head-free" and 0 < g.num_gaussians <= 500 and g.validate() is g
    full, _ = gaussians_from_prediction(pred, max_gaussians=None, conf_percentile=None, trim_border=False)
    assert full.num_gaussians <= S * H * W and (full.opacities >= 0.005).all()  # opacity-pruned only
    trimmed, _ = gaussians_from_prediction(pred, max_gaussians=None, conf_percentile=None)
    assert trimmed.num_gaussians < full.num_gaussians  # border pixels dropped
    pred.depth[0, 10, 10] = np.nan
    pred.depth[1, 10, 10] = -1.0
    bad, _ = gaussians_from_prediction(pred, max_gaussians=None, conf_percentile=None)
    assert bad.num_gaussians == trimmed.num_gaussians - 2 and torch.isfinite(bad.means).all()


def test_gs_head_gaussians_are_used_when_present():
    pred = _prediction(S=1, H=14, W=28)
    n = 14 * 28
    head = Gaussians(
        means=torch.randn(n, 3),
        quats=torch.randn(n, 4),
        scales=torch.rand(n, 3) * 0.01 + 1e-3,
        opacities=torch.ones(n),
        sh=torch.randn(n, 9, 3),
    )
    pred.gaussians = head
    g, source = gaussians_from_prediction(pred, max_gaussians=None, conf_percentile=None, trim_border=False)
    assert source == "gs-head" and g.num_gaussians == n and g.sh_degree == 2
    assert (g.opacities < 1).all()  # saturated opacities get a finite PLY logit
    torch.testing.assert_close(g.means, head.means)
    _, source = gaussians_from_prediction(pred, max_gaussians=None, prefer_head=False)
    assert source == "head-free"


def test_no_cameras_is_a_user_error():
    with pytest.raises(InputError, match="predicts no cameras"):
        gaussians_from_prediction(_prediction(cameras=False), max_gaussians=100)
    with pytest.raises(InputError, match="at least 1"):
        gaussians_from_prediction(_prediction(), max_gaussians=0)


def test_model_with_a_gs_head_goes_through_it():
    from da3_splat.model import DA3

    torch.manual_seed(0)
    model = DA3.from_config("da3-small").add_nvs_head(features=32)
    assert model.has_gs_head
    images = [np.random.default_rng(i).integers(0, 256, (42, 56, 3), dtype=np.uint8) for i in range(2)]
    pred = model.infer(images, process_res=56, infer_gs=True)
    g, source = gaussians_from_prediction(pred, max_gaussians=300)
    assert source == "gs-head" and 0 < g.num_gaussians <= 300 and g.sh_degree == 2
