"""The trainable NVS head: any backbone, configurable width and SH degree, saved and reloaded with its config."""

import torch

from da3_splat.model import DA3
from da3_splat.model.config import get_config, gs_head_channels, with_nvs_head


def test_nvs_head_width_follows_backbone_and_round_trips(tmp_path):
    cfg = with_nvs_head(get_config("da3-base"), features=64, sh_degree=1)
    assert cfg.gs_head.dpt.features == 64 and cfg.gs_head.dpt.output_dim == gs_head_channels(1) == 23
    assert cfg.gs_head.dpt.out_channels == (48, 96, 192, 384)  # base head channels scaled by 64/128

    torch.manual_seed(0)
    m = DA3.from_config("da3-small").add_nvs_head(features=32, sh_degree=1)
    x = torch.randn(1, 2, 3, 56, 98)
    with torch.no_grad():
        g = m(x, infer_gs=True)["gaussians"]
    assert g.means.shape == (1, 2 * 56 * 98, 3) and g.sh.shape[-2:] == (4, 3)
    assert torch.isfinite(g.means).all() and ((g.opacities > 0) & (g.opacities < 1)).all()

    m.save_pretrained(tmp_path / "m")
    m2 = DA3.from_pretrained(str(tmp_path / "m"))
    assert m2.config == m.config and m2.has_gs_head
    with torch.no_grad():
        g2 = m2(x, infer_gs=True)["gaussians"]
    torch.testing.assert_close(g2.means, g.means)
    # the official name still loads the official architecture when no config travels with it
    assert DA3.from_config("da3-small").config.gs_head is None


def test_planar_depth_adapter_places_pixel_centres_at_their_z_depth():
    from da3_splat.geometry import depth_to_world_points
    from da3_splat.model.gs_adapter import num_raw_channels, raw_to_gaussians

    torch.manual_seed(1)
    B, S, H, W = 1, 2, 6, 8
    raw = torch.zeros(B, S, H, W, num_raw_channels(1))
    depth = torch.rand(B, S, H, W) + 1.0
    K = torch.tensor([[7.0, 0, 4.1], [0, 6.5, 2.9], [0, 0, 1]]).expand(B, S, 3, 3)
    w2c = torch.eye(4).repeat(B, S, 1, 1)
    w2c[0, 1, :3, 3] = torch.tensor([0.3, -0.2, 0.5])
    g = raw_to_gaussians(raw, torch.full((B, S, H, W), 0.5), depth, w2c, K, sh_degree=1, planar_depth=True)
    expected = depth_to_world_points(depth, K, w2c, offset=0.5)
    torch.testing.assert_close(g.means.reshape(B, S, H, W, 3), expected, atol=1e-5, rtol=1e-5)


def test_scale_range_is_the_configs():
    from da3_splat.model.config import NVS_SCALE_MAX
    from da3_splat.model.gs_adapter import SCALE_MAX, num_raw_channels, raw_to_gaussians

    assert with_nvs_head(get_config("da3-small")).gs_head.scale_max == NVS_SCALE_MAX < SCALE_MAX
    assert get_config("da3-giant").gs_head.scale_max == SCALE_MAX  # the official GS head keeps the official range
    B, S, H, W = 1, 1, 4, 6
    raw = torch.zeros(B, S, H, W, num_raw_channels(0))
    raw[..., 2:5] = 50.0  # scale logits saturated: every scale at the top of its range
    K = torch.tensor([[10.0, 0, 3.0], [0, 10.0, 2.0], [0, 0, 1]]).expand(B, S, 3, 3)
    w2c, depth, opacity = torch.eye(4).expand(B, S, 4, 4), torch.full((B, S, H, W), 2.0), torch.full((B, S, H, W), 0.5)
    big = raw_to_gaussians(raw, opacity, depth, w2c, K, sh_degree=0).scales
    small = raw_to_gaussians(raw, opacity, depth, w2c, K, sh_degree=0, scale_max=NVS_SCALE_MAX).scales
    # std = scale_max * 0.1 * (1/fx + 1/fy) * distance: 30 -> 1.2 units here, 10 -> 0.4
    torch.testing.assert_close(big, torch.full_like(big, 30 * 0.1 * 0.2 * 2.0), rtol=1e-5, atol=0)
    torch.testing.assert_close(small, torch.full_like(small, NVS_SCALE_MAX * 0.1 * 0.2 * 2.0), rtol=1e-5, atol=0)


def test_rgb_shortcut_makes_the_colour_a_residual_on_the_input_pixel():
    from da3_splat.model.gs_adapter import num_raw_channels, raw_to_gaussians
    from da3_splat.sh import SH2RGB

    assert with_nvs_head(get_config("da3-small"), rgb_shortcut=True).gs_head.rgb_shortcut
    assert (
        not with_nvs_head(get_config("da3-small")).gs_head.rgb_shortcut
        and not get_config("da3-giant").gs_head.rgb_shortcut
    )
    torch.manual_seed(2)
    B, S, H, W = 1, 2, 3, 5
    raw = torch.randn(B, S, H, W, num_raw_channels(1))
    raw[..., 9:] = 0.0  # no colour from the head
    colors = torch.rand(B, S, H, W, 3)
    K = torch.tensor([[5.0, 0, 2.5], [0, 5.0, 1.5], [0, 0, 1]]).expand(B, S, 3, 3)
    w2c, depth, opacity = torch.eye(4).expand(B, S, 4, 4), torch.ones(B, S, H, W), torch.full((B, S, H, W), 0.5)
    g = raw_to_gaussians(raw, opacity, depth, w2c, K, sh_degree=1, colors=colors)
    torch.testing.assert_close(SH2RGB(g.sh[..., 0, :]), colors.reshape(B, -1, 3), atol=1e-6, rtol=0)
    assert g.sh[..., 1:, :].abs().max() == 0
    # a head colour moves it off the pixel's colour by exactly the residual
    raw[..., 9] = 0.4  # red DC channel (colour-major)
    g = raw_to_gaussians(raw, opacity, depth, w2c, K, sh_degree=1, colors=colors)
    torch.testing.assert_close(
        SH2RGB(g.sh[..., 0, 0]) - colors.reshape(B, -1, 3)[..., 0],
        torch.full((B, S * H * W), 0.4 * 0.28209479177387814),
        atol=1e-6,
        rtol=0,
    )
