"""NVSDataset: item contents, determinism per (seed, epoch, item), batches sharing S, evaluation mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from da3_splat.data.dataset import NVSDataset, collate
from da3_splat.data.dl3dv import crop_intrinsics, read_scene
from da3_splat.data.synthetic import SyntheticConfig, make_synthetic
from da3_splat.errors import InputError

MYDESK = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "mydesk"
SIZE = (28, 42)  # from 28 x 56 images: a centre crop of 42 columns


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return make_synthetic(out, 3, SyntheticConfig(frames=24, height=28, width=56), seed=5, workers=1)


def _dataset(scenes, **kw):
    args = {"size": SIZE, "num_context": (2, 5), "num_targets": (1, 3), "window": (6, 20), "seed": 7}
    return NVSDataset(scenes, **{**args, **kw})


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a
    )


def test_item_contents(scenes):
    ds = _dataset(scenes)
    assert len(ds) == 3
    item = ds[0]
    S, T = len(item["context_indices"]), len(item["target_indices"])
    assert 2 <= S <= 5 and 1 <= T <= 3
    assert item["context_images"].shape == (S, 3, *SIZE) and item["target_images"].shape == (T, 3, *SIZE)
    assert item["context_w2c"].shape == (S, 4, 4) and item["target_K"].shape == (T, 3, 3)
    assert item["context_depth"].shape == (S, *SIZE) and item["target_depth"].shape == (T, *SIZE)
    assert 0.0 <= item["context_images"].min() and item["context_images"].max() <= 1.0
    assert item["context_images"].dtype == item["context_K"].dtype == torch.float32
    ctx, tgt = item["context_indices"].tolist(), item["target_indices"].tolist()
    assert ctx[0] < min(tgt) and max(tgt) < ctx[-1] and not set(ctx) & set(tgt)
    scene = read_scene(scenes[[p.name for p in scenes].index(item["scene"])])
    expected_K = crop_intrinsics(scene.intrinsics[ctx], 28, 56, SIZE)
    np.testing.assert_allclose(item["context_K"].numpy(), expected_K, rtol=1e-6)
    assert expected_K[0, 0, 2] == pytest.approx(scene.intrinsics[0, 0, 2] - 7)  # 56 -> 42 columns, centred
    np.testing.assert_allclose(item["target_w2c"].numpy(), scene.w2c[tgt], atol=1e-6)


def test_deterministic_per_seed_epoch_and_item(scenes):
    a, b = _dataset(scenes), _dataset(scenes)
    a.set_epoch(3)
    b.set_epoch(3)
    assert _same(a[2], b[2]) and _same(a[0], b[0])
    epoch3 = [a.views(i) for i in range(3)]
    a.set_epoch(4)
    epoch4 = [a.views(i) for i in range(3)]
    assert epoch3 != epoch4
    assert sorted(v.scene for v in epoch4) == [0, 1, 2]  # every scene once per epoch
    a.set_epoch(3)
    assert [a.views(i) for i in range(3)] == epoch3  # a resumed run sees the same items
    assert [_dataset(scenes, seed=8).views(i) for i in range(3)] != [_dataset(scenes).views(i) for i in range(3)]


def test_batches_share_the_view_counts(scenes):
    ds = _dataset(scenes, batch_size=2, items_per_epoch=12, num_context=(2, 8), num_targets=(1, 4))
    ds.set_epoch(1)
    counts = [(len(v.context), len(v.targets)) for v in (ds.views(i) for i in range(12))]
    assert all(counts[i] == counts[i + 1] for i in range(0, 12, 2))
    assert len(set(counts)) > 1  # but they vary from batch to batch
    loader = DataLoader(ds, batch_size=2, shuffle=False, collate_fn=collate)
    batch = next(iter(loader))
    S, T = counts[0]
    assert batch["context_images"].shape == (2, S, 3, *SIZE) and batch["target_depth"].shape == (2, T, *SIZE)
    assert len(batch["scene"]) == 2 and batch["context_indices"].shape == (2, S)
    odd = next(i for i in range(2, 12, 2) if counts[i][0] != S)
    with pytest.raises(ValueError, match="share its numbers of views"):
        collate([ds[0], ds[odd]])


def test_evaluation_mode(scenes):
    ds = NVSDataset.for_evaluation(scenes, SIZE, num_context=4)
    assert len(ds) == 3
    ds.set_epoch(9)  # no effect
    item = ds[1]
    index = read_scene(scenes[1]).eval_index
    assert item["scene"] == "scene_0001" and item["target_indices"].tolist() == index["targets"] == [0, 8, 16]
    assert item["context_indices"].tolist() == index["context_4"]
    assert item["context_images"].shape == (4, 3, *SIZE)
    batch = collate([ds[0], ds[2]])  # equal counts here, so they stack
    assert batch["target_images"].shape == (2, 3, 3, *SIZE)
    with pytest.raises(InputError, match="pick one"):
        NVSDataset.for_evaluation(scenes, SIZE)
    with pytest.raises(InputError, match="no entry for scene scene_0000"):
        NVSDataset.for_evaluation(scenes[:1], SIZE, index={}, num_context=2)


def test_scene_without_index_gets_the_da3_protocol(scenes, tmp_path):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(scenes[1], bare)
    (bare / "eval_index.json").unlink()
    ds = NVSDataset.for_evaluation([bare], SIZE, num_context=4)
    item = ds[0]
    # Same protocol as the stored file: every 8th frame a target, farthest-point context among the others.
    index = read_scene(scenes[1]).eval_index
    assert item["target_indices"].tolist() == index["targets"] == [0, 8, 16]
    assert item["context_indices"].tolist() == index["context_4"]


def test_constructor_errors(scenes):
    with pytest.raises(InputError, match="multiples of 14"):
        _dataset(scenes, size=(28, 40))
    with pytest.raises(InputError, match="has 24 frames; need at least 30"):
        _dataset(scenes, num_context=(2, 26), num_targets=4)
    with pytest.raises(InputError, match="no scenes"):
        _dataset([])


@pytest.mark.skipif(not (MYDESK / "eval_index.json").is_file(), reason=f"no real scene at {MYDESK}")
def test_mydesk_evaluation_views():
    ds = NVSDataset.for_evaluation([MYDESK], (126, 224), downscale=4)
    views = ds.views(0)
    assert len(views.context) == 32 and views.targets == list(range(0, 498, 8))
    train = NVSDataset([ds.scenes[0]], (126, 224), num_context=(2, 12), num_targets=4, window=(16, 128), seed=0)
    item = train[0]
    assert item["context_images"].shape[1:] == (3, 126, 224) and "context_depth" not in item
