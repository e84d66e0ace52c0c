"""``ns-train da3-splat`` end to end on CPU, then evaluation and export.

- synthetic scene, GS-head checkpoint, a few dozen refinement steps; ``ns-eval`` and ``ns-export gaussian-splat``
  as commands (their own processes: the plugin must register from a clean interpreter);
- a subset of mydesk (nerfstudio-data, --downscale-factor 4), head-free checkpoint, ``refine-steps 0``;
- ``da3-images`` on a folder of unposed photos, cameras written to the run folder and reused by evaluation;
- bad data: one ``error:`` line, exit status 1.
The weights are tiny random DA3s (conftest), so the checks are about plumbing, not image quality.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from da3_splat.ply import read_ply
from tests.nerfstudio_plugin.conftest import CPU, assert_one_error_line, ns

pytest.importorskip("nerfstudio", reason="the nerfstudio extra is not installed (make test installs it)")

BUDGET = 4000
FAST = (
    "--pipeline.model.process-res",
    "112",
    "--pipeline.model.max-gaussians",
    str(BUDGET),
    "--pipeline.model.num-views",
    "8",
)


def _run_dir(out: Path) -> Path:
    (config,) = out.rglob("config.yml")
    return config.parent


def _checkpoints(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "nerfstudio_models").glob("*.ckpt"))


def _eval_in_process(config: Path, output: Path) -> dict:
    """``ns-eval`` without a new interpreter (what the command runs, minus ~10 s of imports)."""
    from nerfstudio.scripts.eval import ComputePSNR

    ComputePSNR(load_config=config, output_path=output).main()
    return json.loads(output.read_text())


def _export_in_process(config: Path, output_dir: Path) -> Path:
    from nerfstudio.scripts.exporter import ExportGaussianSplat

    ExportGaussianSplat(load_config=config, output_dir=output_dir).main()
    return output_dir / "splat.ply"


def _check_metrics(results: dict) -> None:
    assert math.isfinite(results["psnr"]) and results["psnr"] > 0
    assert 0.0 <= results["ssim"] <= 1.0 and results["fps"] > 0
    assert all(math.isfinite(v) for v in results.values())  # LPIPS is absent without weights, never NaN


def _check_ply(ply: Path, max_count: int, sh_degree: int):
    g = read_ply(ply)
    assert 0 < g.num_gaussians <= max_count and g.sh_degree == sh_degree
    for name in ("means", "quats", "scales", "opacities", "sh"):
        assert torch.isfinite(getattr(g, name)).all(), name
    return g


def test_synthetic_scene_train_eval_export(tmp_path, synthetic_scene, tiny_weights):
    steps = 30
    res = ns(
        "ns-train",
        "da3-splat",
        "--data",
        synthetic_scene,
        *CPU,
        "--output-dir",
        tmp_path / "out",
        "--max-num-iterations",
        steps,
        "--pipeline.model.weights",
        tiny_weights["gs-head"],
        *FAST,
        "nerfstudio-data",
        "--downscale-factor",
        "4",
        "--eval-mode",
        "interval",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    log = res.stdout + res.stderr
    assert "DA3 (gs-head) on 8 of 21 training views" in log  # 24 frames, every 8th held out
    run = _run_dir(tmp_path / "out")
    assert _checkpoints(run) == [f"step-{steps - 1:09d}.ckpt"]

    res = ns("ns-eval", "--load-config", run / "config.yml", "--output-path", tmp_path / "eval.json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval.json").read_text())
    assert metrics["method_name"] == "da3-splat"
    _check_metrics(metrics["results"])

    res = ns(
        "ns-export",
        "gaussian-splat",
        "--load-config",
        run / "config.yml",
        "--output-dir",
        tmp_path / "ply",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    state = torch.load(run / "nerfstudio_models" / _checkpoints(run)[0], weights_only=True)["pipeline"]
    n_trained = len(state["_model.gauss_params.means"])
    # The exporter drops splats that are (almost) fully transparent; splatfacto's sh_degree (3) is kept.
    g = _check_ply(tmp_path / "ply" / "splat.ply", n_trained, sh_degree=3)
    assert g.num_gaussians >= 0.5 * n_trained


def test_mydesk_feed_forward_only(tmp_path, mydesk_subset, tiny_weights):
    """--pipeline.model.refine-steps 0: one no-op step whatever --max-num-iterations says, then the checkpoint
    holds DA3's Gaussians untouched (no optimiser ever stepped)."""
    res = ns(
        "ns-train",
        "da3-splat",
        "--data",
        mydesk_subset,
        *CPU,
        "--output-dir",
        tmp_path / "out",
        "--max-num-iterations",
        "50",
        "--pipeline.model.refine-steps",
        "0",
        "--pipeline.model.weights",
        tiny_weights["head-free"],
        *FAST,
        "--pipeline.datamanager.camera-res-scale-factor",
        "0.5",
        "nerfstudio-data",
        "--downscale-factor",
        "4",
        "--eval-mode",
        "interval",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "DA3 (head-free) on 8 of 10 training views" in res.stdout + res.stderr
    run = _run_dir(tmp_path / "out")
    # The trainer always runs a first step (here a no-op) and names the checkpoint after the steps it ran.
    assert _checkpoints(run) == ["step-000000001.ckpt"]
    ckpt = torch.load(run / "nerfstudio_models" / "step-000000001.ckpt", weights_only=True)
    assert not ckpt["optimizers"]["means"]["state"]  # Adam never took a step
    n = len(ckpt["pipeline"]["_model.gauss_params.means"])
    assert 0 < n <= BUDGET

    results = _eval_in_process(run / "config.yml", tmp_path / "eval.json")["results"]
    _check_metrics(results)
    _check_ply(_export_in_process(run / "config.yml", tmp_path / "ply"), n, sh_degree=3)


def test_da3_images_predicts_and_records_cameras(tmp_path, synthetic_scene, tiny_weights, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    for src in sorted((synthetic_scene / "images_4").glob("*.png"))[:10]:
        (photos / src.name).write_bytes(src.read_bytes())
    res = ns(
        "ns-train",
        "da3-splat",
        "--data",
        photos,
        *CPU,
        "--output-dir",
        tmp_path / "out",
        "--max-num-iterations",
        "5",
        "--pipeline.model.weights",
        tiny_weights["head-free"],
        *FAST,
        "da3-images",
        "--weights",
        tiny_weights["head-free"],
        "--process-res",
        "112",
        "--device",
        "cpu",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "DA3 predicts the cameras of 10 images" in res.stdout + res.stderr
    run = _run_dir(tmp_path / "out")
    meta = json.loads((run / "transforms.json").read_text())
    assert len(meta["frames"]) == 10
    for frame in meta["frames"]:  # paths relative to the run folder, as nerfstudio reads them
        assert (run / frame["file_path"]).resolve().parent == photos.resolve()
        assert (frame["w"], frame["h"]) == (240, 135)
    config = yaml.load((run / "config.yml").read_text(), Loader=yaml.Loader)
    assert config.pipeline.datamanager.dataparser.cameras == (run / "transforms.json").resolve()

    from nerfstudio_plugin.dataparser import DA3ImagesDataParser

    def no_second_prediction(self, paths):
        raise AssertionError("evaluation predicted the cameras again instead of reading the run's transforms.json")

    monkeypatch.setattr(DA3ImagesDataParser, "_predict", no_second_prediction)
    _check_metrics(_eval_in_process(run / "config.yml", tmp_path / "eval.json")["results"])


def test_bad_data_gets_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    res = ns(
        "ns-train",
        "da3-splat",
        "--data",
        tmp_path / "empty",
        *CPU,
        "--output-dir",
        tmp_path / "out",
        "da3-images",
        cwd=tmp_path,
    )
    assert_one_error_line(res, "no images")

    scene = tmp_path / "scene"
    (scene / "images").mkdir(parents=True)
    for i in range(2):
        cv2.imwrite(str(scene / "images" / f"{i}.png"), np.zeros((20, 30, 3), np.uint8))
    frames = [{"file_path": "images/0.png"}, {"file_path": "../../secret/1.png"}]
    meta = {
        "fl_x": 30,
        "fl_y": 30,
        "cx": 15,
        "cy": 10,
        "w": 30,
        "h": 20,
        "frames": [{**f, "transform_matrix": np.eye(4).tolist()} for f in frames],
    }
    (scene / "transforms.json").write_text(json.dumps(meta))
    res = ns("ns-train", "da3-splat", "--data", scene, *CPU, "--output-dir", tmp_path / "out", cwd=tmp_path)
    assert_one_error_line(res, "points outside the folder of the transforms file")
