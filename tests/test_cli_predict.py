"""`da3-splat predict` end to end, as a subprocess: outputs, known poses, --overwrite and odd inputs (the user
errors are in test_cli_predict_errors.py).

A tiny random da3-small is saved once per module and passed as --model, which exercises the real loading path.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from plyfile import PlyData

from da3_splat import cli
from da3_splat.commands.predict import PredictConfig
from da3_splat.data.transforms import read_transforms, write_transforms
from da3_splat.inputs import match_poses, unique_names
from tests.cli_helpers import (  # noqa: F401 (root, model_dir, images: fixtures)
    RES,
    assert_user_error,
    cli_command,
    cli_env,
    images,
    model_dir,
    noise,
    root,
    run_cli,
    save_random_small_model,
    write_noise_images,
)

# --------------------------------------------------------------------------------------------------
# Fixtures: root, model_dir and images come from tests/cli_helpers.py


@pytest.fixture(scope="module")
def first_run(root, images, model_dir):
    out = root / "out1"
    res = run_cli("predict", images, "-o", out, "--model", model_dir, "--process-res", RES)
    assert res.returncode == 0, res.stderr
    return out, res


# --------------------------------------------------------------------------------------------------
# Successful runs


def test_outputs_are_complete_and_well_formed(first_run):
    out, res = first_run
    assert res.stderr == "" and str(out) in res.stdout and "points.ply" in res.stdout
    info = json.loads((out / "prediction.json").read_text())
    assert info["num_views"] == 3 and info["views"] == ["im0", "im1", "im2"] and info["model_name"] == "da3-small"
    H, W = info["processed_size"]
    assert (H, W) == (84, 140)
    for name in info["views"]:
        assert cv2.imread(str(out / "images" / f"{name}.png")).shape == (H, W, 3)
        assert cv2.imread(str(out / "depth" / f"{name}.png")).shape == (H, W, 3)
        assert cv2.imread(str(out / "confidence" / f"{name}.png"), cv2.IMREAD_UNCHANGED).shape == (H, W)
        with np.load(out / "depth" / f"{name}.npz") as z:
            assert z["depth"].shape == z["depth_conf"].shape == (H, W) and z["depth"].dtype == np.float32
    vertex = PlyData.read(str(out / "points.ply"))["vertex"].data
    assert len(vertex) == info["num_points"] > 0
    assert set(vertex.dtype.names) == {"x", "y", "z", "red", "green", "blue"} and np.isfinite(vertex["x"]).all()
    # transforms.json round-trips to the cameras of the prediction (kept in each view's npz).
    files, w2c, K, sizes = read_transforms(out / "transforms.json")
    assert files == [f"images/{n}.png" for n in info["views"]] and (sizes == [H, W]).all()
    for i, name in enumerate(info["views"]):
        with np.load(out / "depth" / f"{name}.npz") as z:
            np.testing.assert_allclose(w2c[i, :3], z["extrinsics"], atol=1e-5)
            np.testing.assert_allclose(K[i], z["intrinsics"], rtol=1e-5)
    assert not list(out.rglob("*.tmp"))


def test_known_poses_come_back(root, images, model_dir, first_run):
    out1, _ = first_run
    out = root / "out_poses"
    poses = out1 / "transforms.json"
    res = run_cli("predict", images, "-o", out, "--model", model_dir, "--process-res", RES, "--poses", poses)
    assert res.returncode == 0, res.stderr
    _, w2c_given, K_given, _ = read_transforms(out1)
    _, w2c_out, K_out, _ = read_transforms(out)
    np.testing.assert_allclose(w2c_out, w2c_given, atol=1e-5)
    np.testing.assert_allclose(K_out, K_given, rtol=1e-4)
    assert json.loads((out / "prediction.json").read_text())["poses"] == str(poses)


def test_overwrite_is_required_and_replaces_only_our_files(root, images, model_dir, first_run):
    out = root / "out_overwrite"
    shutil.copytree(first_run[0], out)
    (out / "notes.txt").write_text("mine")
    two = root / "two_images"
    two.mkdir()
    for name in ("im0.png", "im1.png"):
        shutil.copy(images / name, two / name)
    before = (out / "points.ply").read_bytes()
    assert_user_error(run_cli("predict", two, "-o", out, "--model", model_dir, "--process-res", RES), "--overwrite")
    assert (out / "points.ply").read_bytes() == before
    res = run_cli("predict", two, "-o", out, "--model", model_dir, "--process-res", RES, "--overwrite")
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "prediction.json").read_text())["views"] == ["im0", "im1"]
    assert not (out / "images/im2.png").exists() and not (out / "depth/im2.npz").exists()
    assert (out / "notes.txt").read_text() == "mine"


def test_grey_rgba_16bit_and_mixed_sizes(root, model_dir):
    from PIL import Image

    d = root / "odd_images"
    d.mkdir()
    Image.fromarray(noise(90, 160, 1, channels=1)).save(d / "grey.png")
    Image.fromarray(noise(100, 150, 2, channels=4), "RGBA").save(d / "rgba.png")
    cv2.imwrite(str(d / "grey16.png"), noise(120, 120, 3, channels=1, dtype=np.uint16))
    cv2.imwrite(str(d / "rgb16.png"), noise(80, 170, 4, dtype=np.uint16))
    Image.fromarray(noise(90, 160, 5)).save(d / "photo.jpg", quality=90)
    out = root / "out_odd"
    res = run_cli("predict", d, "-o", out, "--model", model_dir, "--process-res", RES)
    assert res.returncode == 0, res.stderr
    info = json.loads((out / "prediction.json").read_text())
    assert info["num_views"] == 5
    shapes = {np.load(out / "depth" / f"{n}.npz")["depth"].shape for n in info["views"]}
    assert shapes == {tuple(info["processed_size"])}  # centre-cropped to a common size
    assert "the images come in 4 different sizes" in " ".join(res.stderr.split())


def test_a_folder_with_one_image(root, model_dir):
    """One photo is a monocular prediction: it runs, with one view and a camera for it."""
    d = write_noise_images(root / "one_image", count=1)
    out = root / "out_one"
    res = run_cli("predict", d, "-o", out, "--model", model_dir, "--process-res", RES)
    assert res.returncode == 0, res.stderr
    info = json.loads((out / "prediction.json").read_text())
    assert info["num_views"] == 1 and info["views"] == ["im0"]
    frames = json.loads((out / "transforms.json").read_text())["frames"]
    assert len(frames) == 1 and (out / "depth" / "im0.npz").is_file() and (out / "points.ply").is_file()


def test_pose_solver_is_applied_and_recorded(root, images, model_dir, first_run):
    out = root / "out_matches"
    res = run_cli("predict", images, "-o", out, "--model", model_dir, "--process-res", RES, "--pose-solver", "matches")
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "prediction.json").read_text())["pose_solver"] == "matches"
    default = json.loads((first_run[0] / "prediction.json").read_text())  # the model's own setting
    assert default["pose_solver"] == "decoder"


def test_video(root, model_dir):
    path = root / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (128, 96))
    if not writer.isOpened():
        pytest.skip("OpenCV cannot encode mp4v here")
    frames = [noise(96, 128, i) for i in range(8)]
    frames.insert(3, np.zeros_like(frames[0]))  # a black frame and a repeated one: both dropped, and said so
    frames.insert(6, frames[5])
    for frame in frames:
        writer.write(frame)
    writer.release()
    cap = cv2.VideoCapture(str(path))
    ok = cap.isOpened() and cap.read()[0]
    cap.release()
    if not ok:
        pytest.skip("OpenCV cannot decode the mp4v clip it wrote")
    out = root / "out_video"
    res = run_cli(
        "predict",
        path,
        "-o",
        out,
        "--model",
        model_dir,
        "--process-res",
        RES,
        "--video-stride",
        "2",
        "--max-frames",
        "3",
    )
    assert res.returncode == 0, res.stderr
    info = json.loads((out / "prediction.json").read_text())
    assert info["views"] == ["frame_00001", "frame_00002", "frame_00003"]
    assert (out / "images/frame_00003.png").is_file() and (out / "points.ply").is_file()
    assert "kept 3 of 10 frames (dropped: 1 black, 1 duplicate, 5 thinned out)" in res.stderr
    res = run_cli(
        "predict", path, "-o", out, "--overwrite", "--model", model_dir, "--process-res", RES, "--video-stride", "auto"
    )
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "prediction.json").read_text())["num_views"] == 8  # noise frames: all far apart
    assert "kept 8 of 10 frames (dropped: 1 black, 1 duplicate)" in res.stderr


def test_help_is_complete():
    top = subprocess.run(cli_command("--help"), check=False, capture_output=True, text=True, env=cli_env())
    assert top.returncode == 0 and "predict" in top.stdout
    env = cli_env(COLUMNS="200")
    sub = subprocess.run(cli_command("predict", "--help"), check=False, capture_output=True, text=True, env=env)
    assert sub.returncode == 0
    flags = (
        "INPUT -o --model --process-res --poses --overwrite --device --video-stride --max-frames "
        "--conf-percentile --max-points --use-ray-pose"
    )
    for flag in flags.split():
        assert flag in sub.stdout, flag


def test_parse_builds_predict_config(tmp_path):
    cfg = cli.parse(["predict", "in", "-o", "out", "--max-frames", "4", "--device", "cpu", "--overwrite"])
    assert isinstance(cfg, PredictConfig) and cfg.input == Path("in") and cfg.output == Path("out")
    assert (cfg.max_frames, cfg.device, cfg.overwrite, cfg.process_res) == (4, "cpu", True, None)
    assert cli.runner_for(cfg).__name__ == "run_predict"


def test_match_poses_rescales_intrinsics_and_matches_by_name(tmp_path):
    K = np.array([[[320.0, 0, 160], [0, 330.0, 90], [0, 0, 1]]] * 2)
    w2c = np.tile(np.eye(4), (2, 1, 1))
    w2c[1, 0, 3] = 1.0
    f = write_transforms(tmp_path / "t.json", ["images/b.png", "images/a.png"], w2c, K, [(180, 320)] * 2)
    paths = [Path("x/a.jpg"), Path("x/b.jpg")]  # other extension: matched by stem, in the inputs' order
    E, Ks, warnings = match_poses(f, ["a", "b"], paths, [(90, 160), (90, 160)])
    np.testing.assert_allclose(E, w2c[::-1])
    np.testing.assert_allclose(Ks[0], [[160, 0, 80], [0, 165, 45], [0, 0, 1]])
    assert warnings == []
    _, _, warnings = match_poses(f, ["a", "b"], paths, [(90, 160), (160, 160)])
    assert len(warnings) == 1 and "aspect" in warnings[0]


def test_unique_names():
    paths = [Path(p) for p in ("x/a.jpg", "x/a.png", "x/a_jpg.png", "x/b.png")]
    assert unique_names(paths) == ["a_jpg", "a_png", "a_jpg_2", "b"]
