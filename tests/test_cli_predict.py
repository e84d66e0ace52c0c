"""`da3-splat predict` end to end, as a subprocess: outputs, known poses, --overwrite, odd inputs, and one-line
errors (exit status 1, no traceback) for everything a user can get wrong.

A tiny random da3-small is saved once per module and passed as --model, which exercises the real loading path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from plyfile import PlyData

from da3_splat import cli
from da3_splat.commands.predict import PredictConfig
from da3_splat.data.transforms import read_transforms, write_transforms
from da3_splat.errors import InputError
from da3_splat.files import INCOMPLETE_MARKER, check_output_dir
from da3_splat.inputs import match_poses, unique_names

RES = "140"


def _cmd(*args):
    return [sys.executable, "-m", "da3_splat.cli", *map(str, args)]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != cli.DEBUG_ENV}
    return {**env, "HF_HUB_OFFLINE": "1", **extra}


def run_cli(*args, **env):
    return subprocess.run(_cmd(*args), check=False, capture_output=True, text=True, env=_env(**env), timeout=300)


def assert_user_error(res, match: str):
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1, res.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr and "unexpected" not in res.stderr
    assert match in lines[0], lines[0]


def _noise(h, w, seed, channels=3, dtype=np.uint8):
    rng = np.random.default_rng(seed)
    hi = 65535 if dtype == np.uint16 else 255
    shape = (h, w) if channels == 1 else (h, w, channels)
    return rng.integers(0, hi, shape, dtype=dtype)


# --------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def model_dir(root):
    import torch

    from da3_splat import DA3

    torch.manual_seed(0)
    return DA3.from_config("da3-small").save_pretrained(root / "model")


def write_noise_images(d: Path, count: int = 3) -> Path:
    """``count`` 90x160 noise PNGs im0.png, im1.png, ... in a new folder ``d``."""
    d.mkdir()
    for i in range(count):
        cv2.imwrite(str(d / f"im{i}.png"), _noise(90, 160, i))
    return d


@pytest.fixture(scope="module")
def images(root):
    return write_noise_images(root / "images")


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
    Image.fromarray(_noise(90, 160, 1, channels=1)).save(d / "grey.png")
    Image.fromarray(_noise(100, 150, 2, channels=4), "RGBA").save(d / "rgba.png")
    cv2.imwrite(str(d / "grey16.png"), _noise(120, 120, 3, channels=1, dtype=np.uint16))
    cv2.imwrite(str(d / "rgb16.png"), _noise(80, 170, 4, dtype=np.uint16))
    Image.fromarray(_noise(90, 160, 5)).save(d / "photo.jpg", quality=90)
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


def test_video(root, model_dir):
    path = root / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (128, 96))
    if not writer.isOpened():
        pytest.skip("OpenCV cannot encode mp4v here")
    frames = [_noise(96, 128, i) for i in range(8)]
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
    top = subprocess.run(_cmd("--help"), check=False, capture_output=True, text=True, env=_env())
    assert top.returncode == 0 and "predict" in top.stdout
    env = _env(COLUMNS="200")
    sub = subprocess.run(_cmd("predict", "--help"), check=False, capture_output=True, text=True, env=env)
    assert sub.returncode == 0
    flags = (
        "INPUT -o --model --process-res --poses --overwrite --device --video-stride --max-frames "
        "--conf-percentile --max-points --use-ray-pose"
    )
    for flag in flags.split():
        assert flag in sub.stdout, flag


# --------------------------------------------------------------------------------------------------
# User errors: one line on stderr, exit status 1, no traceback. The cases the issue lists run as real
# processes, all at once (they are independent); the rest run in process through cli.main.


def _error_cases(root: Path, images: Path, model: Path):
    e = root / "errors"
    e.mkdir()
    (e / "empty").mkdir()
    (e / "corrupt").mkdir()
    shutil.copy(images / "im0.png", e / "corrupt" / "good.png")
    (e / "corrupt" / "bad.jpg").write_bytes(b"this is not a jpeg at all")
    (e / "truncated").mkdir()
    data = (images / "im1.png").read_bytes()
    (e / "truncated" / "cut.png").write_bytes(data[: len(data) // 2])
    (e / "clip.mp4").write_bytes(os.urandom(2048))
    (e / "notes.txt").write_text("hello")
    (e / "full").mkdir()
    (e / "full" / "keep.txt").write_text("precious")
    (e / "bad.json").write_text("{oops")
    (e / "no_matrix.json").write_text(json.dumps({"frames": [{"file_path": "images/im0.png"}]}))
    write_transforms(
        e / "other.json",
        ["images/x.png", "images/y.png"],
        np.tile(np.eye(4), (2, 1, 1)),
        np.tile(np.diag([100.0, 100.0, 1.0]), (2, 1, 1)),
        [(90, 160)] * 2,
    )
    (e / "clobber" / "images").mkdir(parents=True)
    shutil.copy(images / "im0.png", e / "clobber" / "images" / "im0.png")
    out = e / "out"
    m = ["--model", model, "--process-res", RES]
    subprocess_cases = {  # name -> (args, extra env, expected text in the error line)
        "missing input": (["predict", e / "nope", "-o", out, *m], {}, "input not found"),
        "zero images": (["predict", e / "empty", "-o", out, *m], {}, "no images"),
        "corrupt image": (["predict", e / "corrupt", "-o", out, *m], {}, "cannot read image"),
        "unreadable video": (["predict", e / "clip.mp4", "-o", out, *m], {}, "clip.mp4"),
        "offline weights": (
            ["predict", images, "-o", out, "--model", "someone/does-not-exist"],
            {"HF_HUB_OFFLINE": "1"},
            "huggingface-cli download someone/does-not-exist",
        ),
        "output not empty": (["predict", images, "-o", e / "full", *m], {}, "--overwrite"),
        "poses missing": (["predict", images, "-o", out, *m, "--poses", e / "nope.json"], {}, "not found"),
        "poses invalid json": (["predict", images, "-o", out, *m, "--poses", e / "bad.json"], {}, "not valid JSON"),
        "poses mismatch": (["predict", images, "-o", out, *m, "--poses", e / "other.json"], {}, "no frame in"),
    }
    in_process_cases = {
        "truncated image": (["predict", e / "truncated", "-o", out, *m], "image file is truncated"),
        "unsupported file": (["predict", e / "notes.txt", "-o", out, *m], "unsupported input"),
        "unknown random config": (["predict", images, "-o", out, "--model", "random:da3-nope"], "unknown config"),
        "output is a file": (["predict", images, "-o", e / "notes.txt", *m], "not a folder"),
        "poses without matrix": (
            ["predict", images, "-o", out, *m, "--poses", e / "no_matrix.json"],
            "no 'transform_matrix'",
        ),
        "process res too small": (
            ["predict", images, "-o", out, "--model", model, "--process-res", "7"],
            "at least 14",
        ),
        "input inside output": (
            ["predict", e / "clobber" / "images", "-o", e / "clobber", *m, "--overwrite"],
            "would overwrite an input image",
        ),
        "bad stride": (["predict", e / "clip.mp4", "-o", out, *m, "--video-stride", "0"], "--video-stride"),
    }
    return subprocess_cases, in_process_cases


@pytest.fixture(scope="module")
def error_setup(root, images, model_dir):
    return _error_cases(root, images, model_dir)


@pytest.fixture(scope="module")
def error_runs(error_setup):
    cases = error_setup[0]
    procs = {
        name: subprocess.Popen(_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(**env))
        for name, (args, env, _) in cases.items()
    }
    results = {}
    for name, p in procs.items():
        out, err = p.communicate(timeout=300)
        results[name] = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    return results


# fmt: off
SUBPROCESS_ERRORS = [
    "missing input", "zero images", "corrupt image", "unreadable video", "offline weights", "output not empty",
    "poses missing", "poses invalid json", "poses mismatch",
]
IN_PROCESS_ERRORS = [
    "truncated image", "unsupported file", "unknown random config", "output is a file", "poses without matrix",
    "process res too small", "input inside output", "bad stride",
]
# fmt: on


@pytest.mark.parametrize("case", SUBPROCESS_ERRORS)
def test_user_errors_are_one_line(error_setup, error_runs, case):
    assert_user_error(error_runs[case], error_setup[0][case][2])


@pytest.mark.parametrize("case", IN_PROCESS_ERRORS)
def test_more_user_errors_in_process(error_setup, case, capsys, monkeypatch):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    args, match = error_setup[1][case]
    with pytest.raises(SystemExit) as exit_info:
        cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    assert_user_error(subprocess.CompletedProcess(args, exit_info.value.code, captured.out, captured.err), match)


def test_errors_write_nothing(root, error_setup, error_runs):
    e = root / "errors"
    assert not (e / "out").exists()  # no failed run created its output folder
    assert [p.name for p in (e / "full").iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in (e / "clobber").rglob("*")) == ["im0.png", "images"]


# --------------------------------------------------------------------------------------------------
# The error boundary and pose matching, in process


def test_unexpected_errors_debug_and_ctrl_c(monkeypatch, capsys):
    def boom(config):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(cli, "runner_for", lambda config: boom)
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    assert cli.run(object()) == 1
    err = capsys.readouterr().err
    assert err == "error: unexpected RuntimeError: boom second line (set DA3_SPLAT_DEBUG=1 for the traceback)\n"
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with pytest.raises(RuntimeError):
        cli.run(object())
    monkeypatch.delenv(cli.DEBUG_ENV)

    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "runner_for", lambda config: interrupted)
    assert cli.run(object()) == 130 and capsys.readouterr().err == "error: interrupted\n"
    assert cli.describe_error(PermissionError(13, "Permission denied", "/x")) == "Permission denied: /x"


def test_ctrl_c_marks_the_output_folder_and_a_later_run_says_so(tmp_path, monkeypatch, capsys):
    def interrupted(config):
        (config.output / "images").mkdir(parents=True)  # some output was written
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "runner_for", lambda config: interrupted)
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    out = tmp_path / "out"
    assert cli.run(PredictConfig(input=tmp_path, output=out)) == 130
    assert capsys.readouterr().err == f"error: interrupted; {out} may be incomplete (rerun with --overwrite)\n"
    assert (out / INCOMPLETE_MARKER).is_file()
    with pytest.raises(InputError, match="holds an interrupted run; pass --overwrite"):
        check_output_dir(out, overwrite=False)
    # a completed run over it (--overwrite) removes the mark
    monkeypatch.setattr(cli, "runner_for", lambda config: lambda c: None)
    assert cli.run(PredictConfig(input=tmp_path, output=out, overwrite=True)) == 0
    assert not (out / INCOMPLETE_MARKER).exists()


@pytest.mark.parametrize("bad", ["/proc/da3-splat-out", "{file}/sub"])
def test_outputs_that_cannot_be_created_fail_before_any_work(tmp_path, bad, capsys, monkeypatch):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    (tmp_path / "a.png").write_bytes(b"")  # never decoded: the output check comes first
    (tmp_path / "file").write_text("x")
    out = bad.format(file=tmp_path / "file")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["predict", str(tmp_path / "a.png"), "-o", out, "--model", "no/such-model"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.startswith(f"error: cannot create output {out}") and err.count("\n") == 1


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
