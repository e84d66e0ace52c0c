"""The trainable NVS head: any backbone, configurable width and SH degree, saved and reloaded with its config."""

import torch

from da3_splat.model import DA3
from da3_splat.model.config import gs_head_channels, with_nvs_head, get_config


def test_nvs_head_width_follows_backbone_and_round_trips(tmp_path):
    cfg = with_nvs_head(get_config("da3-base"), features=64, sh_degree=1)
    assert cfg.gs_head.features == 64 and cfg.gs_head.output_dim == gs_head_channels(1) == 23
    assert cfg.gs_head.out_channels == (48, 96, 192, 384)  # base head channels scaled by 64/128

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
