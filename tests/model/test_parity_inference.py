"""`infer()` end to end against the official `DepthAnything3.inference()` (depth-anything-3==0.1.1).

Real photos of the shared mydesk scene with their real cameras go through both: pre-processing (resize and
crop, intrinsics rescaled), the pose normalisation the model is conditioned on, the forward, and the
alignment of the predictions back to the caller's frame (plain Umeyama below 10 views, RANSAC from 10 on).
Both run in fp32: the official API wraps its forward in CPU fp16 autocast, switched off here, because half
precision would hide differences larger than the tolerance.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from da3_splat import DA3, opengl_c2w_to_opencv_w2c
from da3_splat.model.inference import infer
from tests.oracle import build_official, official_api, rel_err, requires_oracle, save_hub_layout

pytestmark = requires_oracle
TOL = 1e-4
MYDESK = Path(__file__).resolve().parents[3] / "shared" / "data" / "mydesk"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    wrapper = build_official("da3-small", seed=21)
    ours = DA3.from_pretrained(save_hub_layout(wrapper, tmp_path_factory.mktemp("small"), "da3-small"))
    return ours, official_api(wrapper)


def mydesk_views(count: int, size: tuple[int, int] | None = None):
    """`count` evenly spaced photos (uint8 HxWx3, optionally resized to size=(W, H)) with OpenCV world-to-camera
    poses (count, 4, 4) and intrinsics (count, 3, 3) in pixels of the returned images."""
    if not (MYDESK / "transforms.json").is_file():
        pytest.skip(f"the mydesk scene is not at {MYDESK}")
    frames = json.loads((MYDESK / "transforms.json").read_text())["frames"]
    picked = [frames[i] for i in np.linspace(0, len(frames) - 1, count).round().astype(int)]
    images, w2c, K = [], [], []
    for f in picked:
        img = Image.open(MYDESK / "images_4" / Path(f["file_path"]).name).convert("RGB")
        if size is not None:
            img = img.resize(size, Image.BICUBIC)
        fx, fy = f["fl_x"] / f["w"] * img.width, f["fl_y"] / f["h"] * img.height
        cx, cy = f["cx"] / f["w"] * img.width, f["cy"] / f["h"] * img.height
        images.append(np.asarray(img))
        K.append(np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=np.float64))
        w2c.append(opengl_c2w_to_opencv_w2c(torch.tensor(f["transform_matrix"], dtype=torch.float64)).numpy())
    return images, np.stack(w2c).astype(np.float32), np.stack(K).astype(np.float32)


def official_inference(api, images, w2c=None, K=None, process_res=504):
    real_autocast = torch.autocast
    torch.autocast = lambda *a, **k: contextlib.nullcontext()  # fp32, like ours on CPU
    try:
        torch.manual_seed(0)
        return api.inference(images, extrinsics=w2c, intrinsics=K, process_res=process_res)
    finally:
        torch.autocast = real_autocast


def assert_same(a, b):
    # Ours are the exact uint8 pixels the network saw; the official ones are de-normalised floats truncated
    # (not rounded) back to uint8, so they may lie one level below.
    lost = a.processed_images.astype(np.int16) - b.processed_images
    assert lost.min() >= 0 and lost.max() <= 1
    errs = {
        "depth": rel_err(torch.from_numpy(a.depth), torch.from_numpy(b.depth)),
        "depth_conf": rel_err(torch.from_numpy(a.depth_conf), torch.from_numpy(b.conf)),
        "extrinsics": rel_err(torch.from_numpy(a.extrinsics), torch.from_numpy(b.extrinsics[:, :3])),
        "intrinsics": rel_err(torch.from_numpy(a.intrinsics), torch.from_numpy(b.intrinsics)),
    }
    assert all(e <= TOL for e in errs.values()), errs


def test_pose_free_matches_official_inference(models):
    ours, api = models
    images, _, _ = mydesk_views(3, (1280, 720))  # upscaled: the resize to 504 is exercised too
    torch.manual_seed(0)
    assert_same(infer(ours, images, process_res=504), official_inference(api, images))


@pytest.mark.parametrize("views, res", [(4, 504), (10, 280)], ids=["umeyama", "ransac"])
def test_known_poses_match_official_inference(models, views, res):
    ours, api = models
    images, w2c, K = mydesk_views(views)
    torch.manual_seed(0)
    a = infer(ours, images, w2c, K, process_res=res)
    b = official_inference(api, images, w2c, K, process_res=res)
    assert_same(a, b)
    np.testing.assert_allclose(a.extrinsics, w2c[:, :3], atol=1e-6)  # the caller's cameras come back as given
