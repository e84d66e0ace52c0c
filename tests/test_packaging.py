"""The wheel carries what an installed da3-splat needs: the training presets and the tiny architecture
(``da3_splat/configs``), the bundled model and the C renderer's source, so that `da3-splat train tiny-synthetic` works outside a checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    src = out / "src"  # a clean copy: a checkout's stale build/ folder must not leak into the wheel
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for pkg in ("da3_splat", "nerfstudio_plugin"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)]
    subprocess.run(cmd, check=True, capture_output=True, cwd=out)
    (path,) = out.glob("da3_splat-*.whl")
    return path


def test_wheel_ships_presets_and_bundled_model(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in (
        "da3_splat/configs/tiny-synthetic.json",
        "da3_splat/configs/tiny-synthetic-geometry.json",
        "da3_splat/configs/tiny-synthetic-geometry-finish.json",
        "da3_splat/configs/arch/da3-tiny.json",
        "da3_splat/weights/da3-tiny-synthetic/model.safetensors",
        "da3_splat/weights/da3-tiny-synthetic/config.json",
        "da3_splat/rendering/composite.c",  # the compiled renderer's source, built at first use
    ):
        assert name in names, name


def test_installed_wheel_trains_a_preset_outside_the_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel)]
    subprocess.run(pip, check=True, capture_output=True)
    work = tmp_path / "work"  # no configs/ here: the presets must come from the installed package
    work.mkdir()
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], cwd=work, env=env, capture_output=True, text=True)

    where = run("-c", "import da3_splat; print(da3_splat.__file__)")
    assert where.stdout.strip().startswith(str(site)), where.stdout + where.stderr
    scenes = work / "scenes"
    made = run("-m", "da3_splat.cli", "make-synthetic", str(scenes), "--scenes", "1", "--frames", "10",
               "--height", "28", "--width", "56", "--workers", "1")  # fmt: skip
    assert made.returncode == 0, made.stderr
    train = run(
        "-m", "da3_splat.cli", "train", "tiny-synthetic", "--steps", "1", "-o", "run", "--no-progress",
        "--model.weights", "arch:arch/da3-tiny.json", "--data.train", str(scenes), "--data.val",
        "--data.height", "28", "--data.width", "56", "--data.window", "4", "10",
    )  # fmt: skip
    assert train.returncode == 0, train.stderr[-3000:]
    assert (work / "run" / "model" / "model.safetensors").is_file()
