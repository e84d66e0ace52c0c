"""Weight loading and saving: official key layout, strict checks, file forms, sources (folder, file, Hub)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from da3_splat import DA3
from da3_splat.model import OFFICIAL_MODELS, WeightsError
from da3_splat.model import weights as W
from tests.oracle import key_dump


@pytest.mark.parametrize("name", OFFICIAL_MODELS)
def test_keys_and_shapes_match_official_dumps(name):
    with torch.device("meta"):
        model = DA3.from_config(name)
    ours = {W.ours_to_official(k): tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == key_dump(name)
    # Shared ray LayerNorm stored once, as in the Hub files (437 / 637 / 971 / 406 / 1377 tensors).
    expected = {
        "da3-small": 437,
        "da3-base": 437,
        "da3-large": 637,
        "da3-giant": 971,
        "da3metric-large": 406,
        "da3mono-large": 406,
        "da3nested-giant-large": 1377,
    }[name]
    assert len(W.official_key_names(model)) == expected


def test_key_map_roundtrip_and_camera_decoder_backbone_untouched():
    for k in [
        "model.backbone.pretrained.blocks.0.attn.qkv.weight",
        "model.cam_dec.backbone.0.weight",
        "model.da3.backbone.pretrained.norm.bias",
        "model.da3_metric.head.projects.0.weight",
    ]:
        assert W.ours_to_official(W.official_to_ours(k)) == k
    assert W.official_to_ours("model.cam_dec.backbone.0.weight") == "cam_dec.backbone.0.weight"
    assert W.official_to_ours("model.da3.backbone.pretrained.norm.bias") == "anyview.backbone.norm.bias"


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    torch.manual_seed(0)
    model = DA3.from_config("da3-small")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    folder = model.save_pretrained(tmp_path_factory.mktemp("small"))
    return model, folder


def _same(a: DA3, b: DA3):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_save_pretrained_layout_and_roundtrip(small):
    model, folder = small
    assert json.loads((folder / "config.json").read_text())["model_name"] == "da3-small"
    sd = load_file(folder / "model.safetensors")
    assert len(sd) == 437 and all(k.startswith("model.") for k in sd)
    assert "model.head.scratch.output_conv2_aux.0.2.weight" in sd
    assert "model.head.scratch.output_conv2_aux.3.2.weight" not in sd
    _same(model, DA3.from_pretrained(folder))


def test_full_443_form_loads_and_level3_layernorm_is_used(small, tmp_path):
    model, folder = small
    sd = load_file(folder / "model.safetensors")
    ln3 = torch.randn(32)
    for lvl in "0123":  # a file that lists the shared LayerNorm under all four names (module state_dict form)
        sd[f"model.head.scratch.output_conv2_aux.{lvl}.2.weight"] = ln3.clone()
        sd[f"model.head.scratch.output_conv2_aux.{lvl}.2.bias"] = torch.zeros(32)
    save_file(sd, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"model_name": "da3-small"}))
    loaded = DA3.from_pretrained(tmp_path)
    assert torch.equal(loaded.head.scratch.output_conv2_aux[3][2].weight, ln3)


def test_bare_safetensors_infers_architecture(small, tmp_path):
    model, folder = small
    f = tmp_path / "weights.safetensors"
    f.write_bytes((folder / "model.safetensors").read_bytes())
    loaded = DA3.from_pretrained(f)
    assert loaded.config.model_name == "da3-small"
    _same(model, loaded)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda sd: sd.pop("model.head.norm.weight"), "missing key"),
        (lambda sd: sd.__setitem__("model.head.extra.weight", torch.zeros(1)), "unexpected key"),
        (lambda sd: sd.__setitem__("model.cam_dec.fc_t.weight", torch.zeros(4, 768)), "shape mismatch"),
    ],
)
def test_strict_check_names_the_keys(small, tmp_path, edit, message):
    _, folder = small
    sd = load_file(folder / "model.safetensors")
    edit(sd)
    save_file(sd, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"model_name": "da3-small"}))
    with pytest.raises(WeightsError, match=message) as err:
        DA3.from_pretrained(tmp_path)
    assert "model.head" in str(err.value) or "model.cam_dec" in str(err.value)


def test_wrong_architecture_is_reported(small, tmp_path):
    _, folder = small
    (tmp_path / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    (tmp_path / "config.json").write_text(json.dumps({"model_name": "da3-base"}))
    with pytest.raises(WeightsError, match="does not match da3-base"):
        DA3.from_pretrained(tmp_path)


def test_pickle_and_bad_sources_are_refused(tmp_path):
    pt = tmp_path / "model.pt"
    pt.write_bytes(b"not really a pickle")
    with pytest.raises(WeightsError, match="only .safetensors"):
        DA3.from_pretrained(pt)
    corrupt = tmp_path / "x.safetensors"
    corrupt.write_bytes(b"garbage")
    with pytest.raises(WeightsError, match="cannot read"):
        DA3.from_pretrained(corrupt)
    (tmp_path / "folder").mkdir()
    with pytest.raises(WeightsError, match="no model.safetensors"):
        DA3.from_pretrained(tmp_path / "folder")
    with pytest.raises(WeightsError, match="neither a file"):
        DA3.from_pretrained("./does/not/exist")
    bad = tmp_path / "bad"
    bad.mkdir()
    save_file({"a": torch.zeros(1)}, bad / "model.safetensors")
    (bad / "config.json").write_text(json.dumps({"model_name": "da3-huge"}))
    with pytest.raises(WeightsError, match="da3-huge"):
        DA3.from_pretrained(bad)


def test_hub_source_uses_the_same_loader(small, monkeypatch):
    """A repo id goes through huggingface_hub; here the 'Hub' is a local folder we wrote."""
    model, folder = small
    calls = []

    def fake_download(repo_id, filename, **kw):
        calls.append((repo_id, filename))
        return str(Path(folder) / filename)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    loaded = DA3.from_pretrained("depth-anything/DA3-SMALL")
    assert calls == [("depth-anything/DA3-SMALL", "config.json"), ("depth-anything/DA3-SMALL", "model.safetensors")]
    _same(model, loaded)


def test_offline_hub_error_says_how_to_get_weights(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="huggingface-cli download someone/does-not-exist"):
        DA3.from_pretrained("someone/does-not-exist")


def test_save_refuses_to_overwrite(small, tmp_path):
    model, _ = small
    model.save_pretrained(tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError):
        model.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path, overwrite=True)
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_registered_config_roundtrips(tmp_path):
    from dataclasses import replace

    from da3_splat.model.config import ViTConfig, get_config

    cfg = replace(
        get_config("da3-small"),
        model_name="da3-test-tiny",
        vit=ViTConfig(dim=64, depth=4, num_heads=1, ffn_hidden=128, out_layers=(0, 1, 2, 3), alt_start=2),
    )
    model = DA3.from_config(cfg)
    model.save_pretrained(tmp_path)
    W.CONFIGS.pop("da3-test-tiny", None)
    loaded = DA3.from_pretrained(tmp_path)
    assert loaded.config == cfg
    _same(model, loaded)


def test_a_nested_config_builds_the_composed_nested_model():
    from da3_splat.model.da3 import NestedDA3

    with torch.device("meta"):
        nested = DA3.from_config("da3nested-giant-large")
        single = DA3.from_config("da3-giant")
    assert type(nested) is NestedDA3 and type(single) is DA3
    assert type(nested.anyview) is DA3 and type(nested.metric) is DA3 and not hasattr(nested, "backbone")
    assert nested.has_cameras and nested.has_gs_head == single.has_gs_head
    # The official checkpoint layout: the any-view model's keys, then the metric model's, under their prefixes.
    prefixes = {k.split(".")[0] for k in nested.state_dict()}
    assert prefixes == {"anyview", "metric"}
