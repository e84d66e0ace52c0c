"""Shared fixtures for the nerfstudio plugin tests: tiny random DA3 checkpoints, a synthetic scene, a subset of
the shared mydesk scene, and a runner for nerfstudio's commands. Everything runs on CPU at small sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MYDESK = Path(os.environ.get("DA3_SPLAT_MYDESK", REPO.parent / "shared" / "data" / "mydesk"))
TINY_ARCH = REPO / "da3_splat" / "configs" / "arch" / "da3-tiny.json"
# Every run: CPU, no viewer server, no inductor compile of nerfstudio's helpers.
CPU = ("--machine.device-type", "cpu", "--vis", "tensorboard")
ENV = {**os.environ, "TORCHDYNAMO_DISABLE": "1", "PYTHONWARNINGS": "ignore"}


def ns(command: str, *args, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a nerfstudio command (ns-train, ns-eval, ...) of this environment."""
    exe = Path(sys.executable).parent / command
    return subprocess.run(
        [str(exe), *map(str, args)], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout
    )


def assert_one_error_line(res: subprocess.CompletedProcess, match: str) -> str:
    """Exit status 1, no traceback, and exactly one ``error:`` line on stderr, containing ``match``."""
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-2000:]
    assert "Traceback" not in res.stderr + res.stdout
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and match in errors[0], res.stderr[-2000:]
    return errors[0]


def tiny_da3(gs_head: bool):
    """A randomly initialised DA3 of the tiny architecture (the bundled model's), optionally with a GS head."""
    import torch

    from da3_splat import DA3
    from da3_splat.model.config import DA3Config, register_config

    cfg = DA3Config.from_dict(json.loads(TINY_ARCH.read_text()))
    register_config(cfg)
    torch.manual_seed(0)
    model = DA3.from_config(cfg.model_name)
    return model.add_nvs_head(16, 1) if gs_head else model


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> dict[str, Path]:
    """{"head-free": folder, "gs-head": folder}: tiny random checkpoints in the Hub layout."""
    root = tmp_path_factory.mktemp("weights")
    out = {}
    for name, head in (("head-free", False), ("gs-head", True)):
        out[name] = tiny_da3(head).save_pretrained(root / name)
    return out


@pytest.fixture(scope="session")
def synthetic_scene(tmp_path_factory) -> Path:
    """One synthetic DL3DV-style scene (24 frames, images_4/ at 135x240, transforms.json, eval_index.json)."""
    root = tmp_path_factory.mktemp("synthetic")
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "da3_splat.cli",
            "make-synthetic",
            str(root),
            "--scenes",
            "1",
            "--frames",
            "24",
            "--height",
            "135",
            "--width",
            "240",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    return root / "scene_0000"


@pytest.fixture(scope="session")
def mydesk_subset(tmp_path_factory) -> Path:
    """12 frames of the shared mydesk scene (every 4th of the first 48): a transforms.json in a temporary folder
    whose images_4/ is a link to the shared, read-only images (nerfstudio reads images_4/<name> for
    --downscale-factor 4; nothing is copied)."""
    if not (MYDESK / "transforms.json").is_file():
        pytest.skip(f"the mydesk scene is not at {MYDESK}")
    meta = json.loads((MYDESK / "transforms.json").read_text())
    root = tmp_path_factory.mktemp("mydesk")
    meta["frames"] = meta["frames"][:48:4]
    (root / "transforms.json").write_text(json.dumps(meta))
    (root / "images_4").symlink_to(MYDESK / "images_4", target_is_directory=True)
    return root
