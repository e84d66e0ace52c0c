"""Options for training the camera path from scratch: the decoder's token normalisation
(``DA3Config.camera_token_norm``) and the ViT initialisation of a random start."""

from __future__ import annotations

import torch

from da3_splat import DA3
from da3_splat.model import OFFICIAL_MODELS, get_config
from da3_splat.model.camera import CameraDecoder
from da3_splat.model.config import DA3Config


def test_normalised_token_ignores_its_shared_offset_and_scale():
    """With it on, what the decoder sees of a token is its shape across channels, not one large vector common to
    all views (the raw token of a model trained from scratch, which kills most of the decoder's ReLUs)."""
    torch.manual_seed(0)
    token = torch.randn(2, 3, 64)
    on, off = CameraDecoder(64, normalize_token=True), CameraDecoder(64)
    off.load_state_dict(on.state_dict())  # no parameters of its own: the same keys either way
    shifted = 7.0 * token + 3.0
    torch.testing.assert_close(on(shifted), on(token), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(off(shifted), off(token), atol=1e-3)


def test_off_for_the_official_models_and_saved_with_the_config(tmp_path):
    assert not any(get_config(name).camera_token_norm for name in OFFICIAL_MODELS)
    cfg = DA3Config.from_dict({**get_config("da3-small").to_dict(), "camera_token_norm": True})
    assert DA3Config.from_dict(cfg.to_dict()).camera_token_norm
    with torch.device("meta"):
        assert DA3(cfg).cam_dec.normalize_token and not DA3(get_config("da3-small")).cam_dec.normalize_token


def test_vit_initialisation_of_a_random_start():
    from da3_splat.model.weights import init_vit_weights

    torch.manual_seed(0)
    model = DA3.from_config(DA3Config.from_dict({**get_config("da3-small").to_dict(), "camera_token_norm": True}))
    head = {k: v.clone() for k, v in model.head.state_dict().items()}
    assert float(model.backbone.pos_embed.abs().max()) == 0.0  # PyTorch's start: no absolute position
    init_vit_weights(model)
    vit = model.backbone
    assert abs(float(vit.pos_embed.std()) - 0.02) < 2e-3
    assert abs(float(vit.blocks[0].attn.qkv.weight.std()) - 0.02) < 1e-3 and not vit.blocks[0].attn.qkv.bias.any()
    assert abs(float(model.cam_dec.fc_qvec.weight.std()) - 0.02) < 5e-3
    assert float(vit.camera_token.abs().max()) < 1e-4 and float(vit.cls_token.abs().max()) < 1e-4
    assert all(torch.equal(v, model.head.state_dict()[k]) for k, v in head.items())  # the heads keep theirs
