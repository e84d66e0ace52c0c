"""Posed depth calibration: geometry.photometric_depth_scale and the model option that uses it."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from da3_splat.data.synthetic import SyntheticConfig, render_scene
from da3_splat.geometry import photometric_depth_scale


@pytest.fixture(scope="module")
def room():
    """Four views spread along a synthetic camera path, exact depth, 112x196."""
    sc = render_scene(SyntheticConfig(frames=24, height=112, width=196, antialias=False), seed=3)
    pick = [0, 7, 15, 23]
    images = torch.from_numpy(sc.images[pick]).permute(0, 3, 1, 2).float() / 255
    return torch.from_numpy(sc.depth[pick]), images, torch.from_numpy(sc.w2c[pick]).float(), torch.from_numpy(sc.K[pick]).float()


@pytest.mark.parametrize("wrong", [0.3, 1.0, 2.5])
def test_recovers_the_scale_of_the_cameras(room, wrong):
    """Depth off by a factor: the returned factor undoes it (to the 2^(1/32) search step plus slack)."""
    depth, images, w2c, K = room
    f = float(photometric_depth_scale(depth * wrong, images, w2c, K))
    assert abs(f * wrong - 1.0) < 0.08, (wrong, f)


def test_depth_noise_does_not_move_the_scale(room):
    """Shape errors like a small model's (x exp(N(0, 0.3)) per 8x8 block) leave the scale near 1."""
    depth, images, w2c, K = room
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(depth.shape[0], 1, 14, 25, generator=g) * 0.3
    noise = torch.nn.functional.interpolate(noise, size=depth.shape[-2:], mode="nearest")[:, 0]
    f = float(photometric_depth_scale(depth * noise.exp() * 1.7, images, w2c, K))
    assert abs(f * 1.7 - 1.0) < 0.15, f


def test_one_view_returns_one(room):
    depth, images, w2c, K = room
    assert float(photometric_depth_scale(depth[:1] * 3, images[:1], w2c[:1], K[:1])) == 1.0


def test_model_option_rescales_depth_and_gaussians(room):
    """posed_depth_calibration: depth x depth_scale and the Gaussians placed at the rescaled depth; off (the
    official models' setting) the forward is unchanged."""
    from da3_splat.model import DA3, DA3Config
    from da3_splat.model.preprocess import normalize_float
    from da3_splat.train.config import CONFIG_DIR

    depth, images, w2c, K = room
    torch.manual_seed(0)
    model = DA3(DA3Config.from_dict(json.loads((CONFIG_DIR / "arch" / "da3-tiny.json").read_text()))).eval()
    model.add_nvs_head(16, 0)
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
