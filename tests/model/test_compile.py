"""`DA3.compile_parts()`: the opt-in torch.compile path really compiles, and keeps the eager numerics."""

from __future__ import annotations

import json

import torch

from da3_splat.model import DA3, DA3Config
from da3_splat.runtime import CONFIG_DIR


def test_compiled_parts_match_eager_and_are_compiled():
    torch.manual_seed(0)
    config = DA3Config.from_dict(json.loads((CONFIG_DIR / "arch" / "da3-tiny.json").read_text()))
    model = DA3(config).eval()
    # 3 views: the backbone selects a reference view (a data-dependent index) between its blocks.
    x = torch.randn(1, 3, 3, 28, 42, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        eager = model(x)
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        compiled = model.compile_parts()(x)
    frames = torch._dynamo.utils.counters["frames"]
    assert frames["ok"] >= 2, dict(frames)  # the blocks and the head's per-chunk pass, at least
    assert all(block._compiled_call_impl is not None for block in model.backbone.blocks)
    for key in ("depth", "depth_conf", "ray", "ray_conf", "extrinsics", "intrinsics"):
        ref = eager[key]
        err = float((compiled[key] - ref).abs().max() / ref.abs().max())
        assert err < 1e-4, (key, err)
    torch._dynamo.reset()
