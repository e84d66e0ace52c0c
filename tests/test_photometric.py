"""Photometric consistency between posed views: the global depth scale (posed depth calibration), the per-pixel
plane sweep, and the model options that use them."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from da3_splat.data.synthetic import SyntheticConfig, render_scene
from da3_splat.photometric import nearest_views, photometric_depth_scale, plane_sweep


@pytest.fixture(scope="module")
def room():
    """Four views spread along a synthetic camera path, exact depth, 112x196."""
    sc = render_scene(SyntheticConfig(frames=24, height=112, width=196, antialias=False), seed=3)
    pick = [0, 7, 15, 23]
    images = torch.from_numpy(sc.images[pick]).permute(0, 3, 1, 2).float() / 255
    return (
        torch.from_numpy(sc.depth[pick]),
        images,
        torch.from_numpy(sc.w2c[pick]).float(),
        torch.from_numpy(sc.K[pick]).float(),
    )


def blocky_noise(depth, sigma=0.3, seed=0):
    """x exp(N(0, sigma)) per 8x8 block: shape errors like a small model's."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(depth.shape[0], 1, 14, 25, generator=g) * sigma
    return torch.nn.functional.interpolate(noise, size=depth.shape[-2:], mode="nearest")[:, 0]


def tiny_model(**options):
    from da3_splat.model import DA3, DA3Config
    from da3_splat.runtime import CONFIG_DIR

    torch.manual_seed(0)
    model = DA3(DA3Config.from_dict(json.loads((CONFIG_DIR / "arch" / "da3-tiny.json").read_text()))).eval()
    return model.add_nvs_head(16, 0, **options)


@pytest.mark.parametrize("wrong", [0.3, 1.0, 2.5])
def test_recovers_the_scale_of_the_cameras(room, wrong):
    """Depth off by a factor: the returned factor undoes it (to the 2^(1/32) search step plus slack)."""
    depth, images, w2c, K = room
    f = float(photometric_depth_scale(depth * wrong, images, w2c, K))
    assert abs(f * wrong - 1.0) < 0.08, (wrong, f)


def test_depth_noise_does_not_move_the_scale(room):
    """Shape errors like a small model's (x exp(N(0, 0.3)) per 8x8 block) leave the scale near 1."""
    depth, images, w2c, K = room
    f = float(photometric_depth_scale(depth * blocky_noise(depth).exp() * 1.7, images, w2c, K))
    assert abs(f * 1.7 - 1.0) < 0.15, f


def test_one_view_returns_one(room):
    depth, images, w2c, K = room
    assert float(photometric_depth_scale(depth[:1] * 3, images[:1], w2c[:1], K[:1])) == 1.0


def test_model_option_rescales_depth_and_gaussians(room):
    """posed_depth_calibration: depth x depth_scale and the Gaussians placed at the rescaled depth; off (the
    official models' setting) the forward is unchanged."""
    from da3_splat.model.preprocess import normalize_float

    depth, images, w2c, K = room
    model = tiny_model()
    x = normalize_float(images[None])
    cams = (w2c[None], K[None])
    with torch.inference_mode():
        plain = model(x, *cams, infer_gs=True, gs_cameras=cams, return_rays=False)
        model.config = replace(model.config, posed_depth_calibration=True)
        cal = model(x, *cams, infer_gs=True, gs_cameras=cams, return_rays=False)
    s = cal["depth_scale"]
    assert s.shape == (1,) and "depth_scale" not in plain
    torch.testing.assert_close(cal["depth"], plain["depth"] * s)
    torch.testing.assert_close(cal["extrinsics"][..., :3, 3], plain["extrinsics"][..., :3, 3] * s)
    # Gaussian centres at the calibrated depth along the given cameras' rays.
    c = -(w2c[0, :3, :3].T @ w2c[0, :3, 3])
    d_plain = (plain["gaussians"].means[0, :10] - c).norm(dim=-1)
    d_cal = (cal["gaussians"].means[0, :10] - c).norm(dim=-1)
    assert not torch.allclose(d_plain, d_cal)


def test_camera_calibration_uses_the_predicted_baselines(room):
    """posed_depth_calibration "cameras": depth x (given baselines / the model's own predicted baselines), so a model
    whose depth and cameras share one free scale lands at the given cameras' scale; the photometric step after it
    multiplies in its own factor."""
    from da3_splat.geometry import baseline_scale
    from da3_splat.model.preprocess import normalize_float

    depth, images, w2c, K = room
    model = tiny_model()
    x = normalize_float(images[None])
    cams = (w2c[None], K[None])
    with torch.inference_mode():
        plain = model(x, *cams, infer_gs=False, gs_cameras=cams)
        model.config = replace(model.config, posed_depth_calibration="cameras")
        cal = model(x, *cams, infer_gs=False, gs_cameras=cams)
        model.config = replace(model.config, posed_depth_calibration="cameras+photometric")
        both = model(x, *cams, infer_gs=False, gs_cameras=cams)
    expected = baseline_scale(plain["extrinsics"][0], w2c)
    torch.testing.assert_close(cal["depth_scale"], expected[None])
    torch.testing.assert_close(cal["depth"], plain["depth"] * expected)
    torch.testing.assert_close(cal["ray"][..., 3:], plain["ray"][..., 3:] * expected)
    assert not torch.allclose(both["depth_scale"], cal["depth_scale"])  # the photometric factor on top
    # The predicted baselines after calibration equal the given ones.
    torch.testing.assert_close(baseline_scale(cal["extrinsics"][0], w2c), torch.tensor(1.0), rtol=1e-5, atol=1e-5)


def test_baseline_scale_and_calibration_steps():
    from da3_splat.geometry import baseline_scale
    from da3_splat.model import DA3Config

    w2c = torch.eye(4).repeat(3, 1, 1)
    w2c[1, 0, 3], w2c[2, 1, 3] = -1.0, -2.0  # centres (0,0,0), (1,0,0), (0,2,0)
    scaled = w2c.clone()
    scaled[:, :3, 3] *= 0.25
    assert float(baseline_scale(scaled, w2c)) == pytest.approx(4.0)
    assert float(baseline_scale(torch.eye(4).repeat(3, 1, 1), w2c)) == 1.0  # coincident predictions: no factor
    cfg = DA3Config(model_name="x")
    assert cfg.depth_calibration_steps == ()
    assert replace(cfg, posed_depth_calibration=True).depth_calibration_steps == ("photometric",)
    assert replace(cfg, posed_depth_calibration="cameras+photometric").depth_calibration_steps == (
        "cameras",
        "photometric",
    )
    with pytest.raises(ValueError, match="unknown"):
        _ = replace(cfg, posed_depth_calibration="camera").depth_calibration_steps


def test_nearest_views_skip_the_view_itself():
    centres = torch.tensor([0.0, 1.0, 3.0, 7.0])
    w2c = torch.eye(4).repeat(4, 1, 1)
    w2c[:, 0, 3] = -centres  # camera centre x = centres
    assert nearest_views(w2c, 2).tolist() == [[1, 2], [0, 2], [1, 0], [2, 1]]
    assert nearest_views(w2c, 9).shape == (4, 3)


def test_plane_sweep_keeps_correct_depth(room):
    """Exact depth: the factor stays at 1 where the views tell depths apart."""
    depth, images, w2c, K = room
    s = plane_sweep(depth, images, w2c, K)
    assert all(v.shape == depth.shape for v in s.values())
    sure = s["contrast"] > 0.05
    assert sure.float().mean() > 0.3
    assert s["log_factor"][sure].abs().median() < 0.03


def test_plane_sweep_undoes_per_pixel_depth_errors(room):
    """Blocky per-pixel errors (median 0.2 in log depth): the sweep's factor cancels them where it is sure, and
    returns 1 (log 0) on flat cost curves instead of an end of the range."""
    depth, images, w2c, K = room
    noise = blocky_noise(depth)
    s = plane_sweep(depth * noise.exp(), images, w2c, K)
    sure = s["contrast"] > 0.05
    before = noise[sure].abs().median()
    after = (noise + s["log_factor"])[sure].abs().median()
    assert before > 0.15 and after < 0.5 * before, (float(before), float(after))
    flat = s["contrast"] < 1e-6
    assert flat.any() and (s["log_factor"][flat] == 0).all()


def test_plane_sweep_one_view(room):
    depth, images, w2c, K = room
    s = plane_sweep(depth[:1], images[:1], w2c[:1], K[:1])
    assert (s["log_factor"] == 0).all() and (s["contrast"] == 0).all()


def test_plane_sweep_head_starts_from_the_swept_depth(room):
    """gs_head.plane_sweep: the head reads 3 more channels, the Gaussians sit at the swept depth (times the head's
    offset, zeroed here), and the swept depth is returned for the head-free comparison."""
    from da3_splat.model.preprocess import normalize_float

    depth, images, w2c, K = room
    model = tiny_model(plane_sweep=True)
    assert model.gs_head.images_merger[0].in_channels == 6
    with torch.no_grad():  # zero depth offset: the last raw channel before opacity
        conv = model.gs_head.scratch.output_conv2[-1]
        conv.weight[-2].zero_()
        conv.bias[-2].zero_()
    x = normalize_float(images[None])
    cams = (w2c[None], K[None])
    with torch.inference_mode():
        out = model(x, *cams, infer_gs=True, gs_cameras=cams, return_rays=False)
    sweep = plane_sweep(out["depth"][0], images, w2c, K)
    torch.testing.assert_close(out["swept_depth"][0], out["depth"][0] * sweep["log_factor"].exp())
    from da3_splat.nvs import gaussian_depth_in_context

    z = gaussian_depth_in_context(out["gaussians"], w2c[None], depth.shape)
    torch.testing.assert_close(z, out["swept_depth"], rtol=1e-4, atol=1e-4)
