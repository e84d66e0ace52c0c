"""`da3-splat eval`: metrics JSON, a grid per scene, posed and pose-free, the head-free baseline, one-line errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from da3_splat.data.synthetic import SyntheticConfig, make_synthetic
from da3_splat.model import DA3, DA3Config
from tests.train.test_trainer import MICRO_ARCH


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    make_synthetic(
        root / "scenes", 2, SyntheticConfig(frames=17, height=48, width=84, antialias=False), seed=5, workers=1
    )
    torch.manual_seed(0)
    DA3(DA3Config.from_dict(MICRO_ARCH)).add_nvs_head(16, 1).save_pretrained(root / "model")
    torch.manual_seed(0)
    DA3(DA3Config.from_dict(MICRO_ARCH)).save_pretrained(root / "headless")
    return root


def run(*args, cwd):
    cmd = [sys.executable, "-m", "da3_splat.cli", "eval", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd)


def test_metrics_and_grids(setup, tmp_path):
    out = tmp_path / "out"
    res = run(
        setup / "scenes",
        "-o",
        out,
        "--model",
        setup / "model",
        "--height",
        42,
        "--width",
        70,
        "--context-views",
        2,
        "--device",
        "cpu",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["scenes"] == 2 and m["size"] == [42, 70] and m["lpips"] in (True, False)
    for mode in ("posed", "pose-free"):
        for method in ("nvs-head", "head-free"):
            r = m["results"][mode][method]
            assert r["scenes"] == 2 and 0 < r["psnr"] < 60 and -1 <= r["ssim"] <= 1
            assert r["gaussians"] == 2 * 42 * 70 and r["seconds_per_scene"] > 0
    assert m["depth"]["abs_rel"] >= 0 and m["depth"]["abs_rel_constant"] > 0 and 0 <= m["depth"]["delta1"] <= 1
    assert m["depth"] == m["geometry"]["posed"]["depth"]  # the top-level "depth" is the first mode's
    for mode in ("posed", "pose-free"):
        d = m["geometry"][mode]["depth"]
        assert d["abs_rel"] >= 0 and 0 <= d["delta1"] <= 1 and d["abs_rel_constant"] > 0
    assert m["geometry"]["posed"]["pose"] is None  # posed: the cameras are given, not predicted
    pose = m["geometry"]["pose-free"]["pose"]
    assert pose["pairs"] == 2  # 2 scenes x 1 pair of context views, pooled
    assert 0 <= pose["rotation_median"] <= 180 and 0 <= pose["translation_median"] <= 180
    assert all(0 <= pose[k] <= 1 for k in ("auc3", "auc5", "auc15")) and pose["auc3"] <= pose["auc5"] <= pose["auc15"]
    assert "pose-free cameras: rotation" in res.stderr and "pose-free depth AbsRel" in res.stderr
    for scene, entry in m["per_scene"].items():
        assert entry["targets"] == [0, 8, 16] and len(entry["context"]) == 2
        assert entry["pose-free"]["pose"]["pairs"] == 1 and "pose" not in entry["posed"]
        assert 0 <= entry["posed"]["depth"]["delta1"] <= 1
        assert not set(entry["context"]) & set(entry["targets"])
        grid = np.asarray(Image.open(out / "grids" / f"{scene}.png"))
        # rows: targets, then posed nvs-head, head-free, head-free-opaque, then the same pose-free; 3 targets wide
        assert grid.shape == (7 * 42, 3 * 70, 3)


def test_a_model_without_nvs_head_scores_the_baseline_only(setup, tmp_path):
    res = run(
        setup / "scenes",
        "-o",
        tmp_path / "o",
        "--model",
        setup / "headless",
        "--height",
        42,
        "--width",
        70,
        "--context-views",
        2,
        "--modes",
        "posed",
        "--max-scenes",
        1,
        "--device",
        "cpu",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert list(m["results"]) == ["posed"] and list(m["results"]["posed"]) == ["head-free", "head-free-opaque"]


def test_pose_solver_option_reaches_the_model(setup, tmp_path):
    common = [setup / "scenes", "--model", setup / "headless", "--height", 42, "--width", 70, "--context-views", 4]
    common += ["--modes", "pose-free", "--max-scenes", 1, "--device", "cpu"]
    poses = {}
    for solver in ("decoder", "matches"):
        res = run(*common, "-o", tmp_path / solver, "--pose-solver", solver, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        m = json.loads((tmp_path / solver / "metrics.json").read_text())
        assert m["pose_solver"] == solver
        poses[solver] = m["geometry"]["pose-free"]["pose"]
    assert poses["decoder"] != poses["matches"]  # the random model's matches give other cameras than its decoder


@pytest.mark.parametrize(
    "args, message",
    [
        (["/nonexistent", "-o", "o"], "does not exist"),
        (["SCENES", "-o", "o", "--height", "40"], "multiples of 14"),
        (["SCENES", "-o", "o", "--model", "/nonexistent/model"], "weights not found"),
        (["SCENES", "-o", "o", "--index", "/nonexistent/index.json", "--model", "MODEL"], "index.json"),
    ],
)
def test_bad_input_is_one_error_line(setup, tmp_path, args, message):
    args = [str(setup / "scenes") if a == "SCENES" else str(setup / "model") if a == "MODEL" else a for a in args]
    res = run(*args, "--device", "cpu", cwd=tmp_path)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert message in lines[0], lines[0]


def test_existing_output_is_kept_without_overwrite(setup, tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("x")
    res = run(setup / "scenes", "-o", tmp_path / "o", "--model", setup / "model", "--device", "cpu", cwd=tmp_path)
    assert res.returncode == 1 and "--overwrite" in res.stderr
    assert (tmp_path / "o" / "keep.txt").read_text() == "x"
