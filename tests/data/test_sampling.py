"""View choice: farthest-point sampling, training-view sampling, evaluation index files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from da3_splat.data.sampling import (
    EvalViews,
    eval_views_for_cameras,
    farthest_point_views,
    make_eval_index,
    read_eval_index,
    sample_training_views,
    write_eval_index,
)
from da3_splat.data.synthetic import eval_index as synthetic_eval_index
from da3_splat.errors import InputError

MYDESK = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "mydesk"


def _yaw(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]])


def cameras(centres, yaws=None) -> np.ndarray:
    """w2c (N, 4, 4) of cameras at ``centres`` turned by ``yaws`` (radians) about y."""
    centres = np.asarray(centres, dtype=np.float64)
    yaws = np.zeros(len(centres)) if yaws is None else yaws
    w2c = np.tile(np.eye(4), (len(centres), 1, 1))
    for i, (c, a) in enumerate(zip(centres, yaws)):
        w2c[i, :3, :3] = _yaw(a)
        w2c[i, :3, 3] = -_yaw(a) @ c
    return w2c


def test_farthest_point_picks_the_ends_of_a_line():
    w2c = cameras([[x, 0, 0] for x in np.linspace(-3, 2, 11)])
    order = farthest_point_views(w2c, 11)
    assert sorted(order[:2]) == [0, 10] and order[2] == 5 and sorted(order) == list(range(11))
    assert farthest_point_views(w2c, 3) == order[:3]  # deterministic, a prefix of a longer choice
    assert farthest_point_views(w2c, 2, first=4) == [4, 10]
    assert sorted(farthest_point_views(w2c, 2, candidates=[2, 3, 4, 5, 6])) == [2, 6]


def test_farthest_point_uses_rotation():
    # five cameras at one spot (rotation alone separates them), turned by -60 ... 60 degrees
    w2c = cameras(np.zeros((5, 3)), np.radians([0, 30, -60, 60, -30]))
    assert sorted(farthest_point_views(w2c, 2)) == [2, 3]
    assert sorted(farthest_point_views(w2c, 3)) == [0, 2, 3]
    # two cameras at the same place: the one turned away is farther than the one 0.1 extent aside
    w2c = cameras([[0, 0, 0], [0.1, 0, 0], [0, 0, 0], [1, 0, 0]], np.radians([0, 0, 90, 0]))
    assert farthest_point_views(w2c, 2, first=0) == [0, 3]
    assert farthest_point_views(w2c, 3, first=0) == [0, 3, 2]


def test_farthest_point_errors():
    w2c = cameras(np.eye(3))
    with pytest.raises(InputError, match="cannot choose 4 views from 3"):
        farthest_point_views(w2c, 4)
    with pytest.raises(InputError, match="first view 0"):
        farthest_point_views(w2c, 1, candidates=[1, 2], first=0)


@pytest.mark.parametrize("exclude", [True, False])
def test_training_views_invariants(exclude):
    for seed in range(200):
        n = [20, 60, 300][seed % 3]
        rng = np.random.default_rng(seed)
        context, targets = sample_training_views(
            n, rng, (2, 12), window=(16, 128), num_targets=(1, 4), exclude_context=exclude
        )
        assert 2 <= len(context) <= 12 and 1 <= len(targets) <= 4
        assert context == sorted(set(context)) and targets == sorted(set(targets))
        assert 0 <= context[0] and context[-1] < n
        assert context[0] <= targets[0] and targets[-1] <= context[-1]  # inside the context span
        span = context[-1] - context[0]
        assert span <= max(128, len(context) + len(targets)) and span >= min(16, n - 1)
        if exclude:
            assert not set(context) & set(targets)
        again = sample_training_views(
            n, np.random.default_rng(seed), (2, 12), window=(16, 128), num_targets=(1, 4), exclude_context=exclude
        )
        assert again == (context, targets)


def test_training_views_spread_and_vary():
    # context views spread over the window: one per equal run between its ends
    context, _ = sample_training_views(200, np.random.default_rng(0), 6, window=(100, 100), num_targets=2)
    assert context[-1] - context[0] == 100
    gaps = np.diff(context)
    assert gaps.max() <= 2 * 100 / 4 + 1
    draws = {tuple(sample_training_views(200, np.random.default_rng(s), (2, 12))[0]) for s in range(20)}
    assert len(draws) == 20
    counts = {len(sample_training_views(200, np.random.default_rng(s), (2, 12))[0]) for s in range(200)}
    assert counts == set(range(2, 13))


def test_training_views_short_video():
    context, targets = sample_training_views(5, np.random.default_rng(0), (2, 12), num_targets=2)
    assert len(context) == 3 and len(targets) == 2 and context == [0, *context[1:-1], 4]  # S lowered to fit
    with pytest.raises(InputError, match="too short"):
        sample_training_views(5, np.random.default_rng(0), (4, 12), num_targets=2)
    with pytest.raises(InputError, match="num_context"):
        sample_training_views(50, np.random.default_rng(0), (5, 3))


class _Scene:  # what make_eval_index needs of a Scene
    def __init__(self, name, w2c, frame_ids):
        self.name, self.w2c, self.frame_ids = name, w2c, frame_ids


def test_make_eval_index_da3_protocol():
    n = 40
    t = np.linspace(0, np.pi, n)
    w2c = cameras(np.stack([np.cos(t), np.zeros(n), np.sin(t)], 1), t)
    index = make_eval_index(_Scene("s", w2c, list(range(n))), [4, 12])
    assert index["scene"] == "s" and index["targets"] == [0, 8, 16, 24, 32]
    for k in (4, 12):
        ctx = index[f"context_{k}"]
        assert len(ctx) == k and ctx == sorted(ctx) and all(c % 8 for c in ctx)
    assert index["context_4"][0] == 1 and index["context_4"][-1] == 39  # the ends of the arc
    # frames skipped on reading keep their transforms.json numbers
    keep = [i for i in range(n) if i not in (3, 16)]
    index = make_eval_index(_Scene("s", w2c[keep], keep), 4)
    assert index["targets"] == [0, 8, 24, 32] and 3 not in index["context_4"]
    with pytest.raises(InputError, match="cannot choose"):
        make_eval_index(_Scene("s", w2c[:9], list(range(9))), 9)


def test_synthetic_eval_index_uses_it():
    w2c = cameras([[x, 0, 0] for x in range(20)])
    index = synthetic_eval_index(w2c, "scene_0007")
    assert list(index) == ["scene", "protocol", "context_2", "context_4", "context_8", "context_12", "targets"]
    assert index["context_2"] == [1, 19]
    assert index == {"scene": "scene_0007", **eval_views_for_cameras(w2c, [2, 4, 8, 12])}


def test_index_file_round_trip(tmp_path):
    w2c = cameras([[x, 0, 0] for x in range(30)])
    entries = {name: make_eval_index(_Scene(name, w2c, list(range(30))), [2, 6]) for name in ("b", "a")}
    path = write_eval_index(tmp_path / "index.json", entries)
    data = json.loads(path.read_text())
    assert data["format"] == "da3-splat-eval-index" and list(data["scenes"]) == ["a", "b"]
    table = read_eval_index(path)
    assert set(table) == {"a", "b"}
    views = table["a"]
    assert views.targets == [0, 8, 16, 24]
    assert views.context == {2: entries["a"]["context_2"], 6: entries["a"]["context_6"]}
    assert views.context_views(6) == entries["a"]["context_6"] and "farthest-point" in views.protocol
    with pytest.raises(InputError, match="pick one"):
        views.context_views()
    with pytest.raises(InputError, match="no 3-view context"):
        views.context_views(3)


def test_other_index_formats(tmp_path):
    (tmp_path / "scene_x").mkdir()
    (tmp_path / "scene_x" / "eval_index.json").write_text(json.dumps({"targets": [0, 8], "context_2": [3, 1]}))
    assert read_eval_index(tmp_path / "scene_x") == {"scene_x": EvalViews([0, 8], {2: [1, 3]})}  # folder name
    depthsplat = {"h1": {"context": [0, 49], "target": [1, 3]}, "h2": {"context": [0, 9, 19], "target": [5]}}
    (tmp_path / "ds.json").write_text(json.dumps(depthsplat))
    table = read_eval_index(tmp_path / "ds.json")
    assert table["h2"].context_views() == [0, 9, 19] and table["h1"].targets == [1, 3]
    for bad, message in [
        ({"targets": [0], "context_3": [1, 2]}, "holds 2"),
        ({"targets": [0, 0], "context_1": [1]}, "repeated"),
        ({"targets": [0]}, "no 'context_N'"),
        ([1, 2], "not a JSON object"),
    ]:
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(InputError, match=message):
            read_eval_index(tmp_path / "bad.json")
    with pytest.raises(InputError, match="not found"):
        read_eval_index(tmp_path / "nope.json")


@pytest.mark.skipif(not (MYDESK / "eval_index.json").is_file(), reason=f"no real scene at {MYDESK}")
def test_mydesk_index_file():
    views = read_eval_index(MYDESK / "eval_index.json")["mydesk"]
    assert views.targets == list(range(0, 498, 8)) and list(views.context) == [32]
    assert "k-means" in views.protocol
