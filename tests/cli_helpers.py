"""What the CLI tests share: running `da3-splat` as a subprocess, the one-line user-error check, and noise images."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from da3_splat import cli

RES = "140"  # --process-res of the CLI tests: small and fast


def cli_command(*args):
    return [sys.executable, "-m", "da3_splat.cli", *map(str, args)]


def cli_env(**extra):
    env = {k: v for k, v in os.environ.items() if k != cli.DEBUG_ENV}
    return {**env, "HF_HUB_OFFLINE": "1", **extra}


def run_cli(*args, **env):
    return subprocess.run(
        cli_command(*args), check=False, capture_output=True, text=True, env=cli_env(**env), timeout=300
    )


def assert_user_error(res, match: str):
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1, res.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr and "unexpected" not in res.stderr
    assert match in lines[0], lines[0]


def noise(h, w, seed, channels=3, dtype=np.uint8):
    rng = np.random.default_rng(seed)
    hi = 65535 if dtype == np.uint16 else 255
    shape = (h, w) if channels == 1 else (h, w, channels)
    return rng.integers(0, hi, shape, dtype=dtype)


def write_noise_images(d: Path, count: int = 3) -> Path:
    """``count`` 90x160 noise PNGs im0.png, im1.png, ... in a new folder ``d``."""
    d.mkdir()
    for i in range(count):
        cv2.imwrite(str(d / f"im{i}.png"), noise(90, 160, i))
    return d


def save_random_small_model(folder: Path) -> Path:
    """A random da3-small (seed 0) saved as a weight folder: the real loading path, without a download."""
    import torch

    from da3_splat import DA3

    torch.manual_seed(0)
    return DA3.from_config("da3-small").save_pretrained(folder)


# Fixtures shared by the predict test modules (each imports them: one instance per module)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def model_dir(root):
    return save_random_small_model(root / "model")


@pytest.fixture(scope="module")
def images(root):
    return write_noise_images(root / "images")
