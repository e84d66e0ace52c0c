"""`da3-splat predict`: one-line errors (exit status 1, no traceback, nothing written) for everything a user can
get wrong, as real processes and in process through cli.main; Ctrl-C and unexpected errors.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from da3_splat import cli
from da3_splat.commands.predict import PredictConfig
from da3_splat.data.transforms import write_transforms
from da3_splat.errors import InputError
from da3_splat.files import INCOMPLETE_MARKER, check_output_dir
from tests.cli_helpers import (  # noqa: F401 (root, model_dir, images: fixtures)
    RES,
    assert_user_error,
    cli_command,
    cli_env,
    images,
    model_dir,
    root,
    save_random_small_model,
    write_noise_images,
)

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
        name: subprocess.Popen(
            cli_command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(**env)
        )
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
