"""`da3-splat demo` end to end through the CLI, in its small variant: a 16-frame synthetic scene at 160x90, one
`ns-train da3-splat` run (bundled da3-tiny-synthetic, 10 refinement steps), `ns-eval` on the held-out views.

Checks that the command prints a held-out PSNR, that the number is finite and plausible, and that it is the PSNR of
the renders the demo writes (recomputed from ns-eval's ground truth | render images), which are real images, not
constant ones. `make demo` runs the same code with the defaults (32 frames at 480x270, a feed-forward run and a
300-step refined run, a PLY export)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("nerfstudio", reason="the nerfstudio extra is not installed (make test installs it)")

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "--frames",
    "16",
    "--width",
    "160",
    "--height",
    "90",
    "--refine-steps",
    "10",
    "--no-feedforward",
    "--max-gaussians",
    "3000",
    "--process-res",
    "112",
    "--no-export",
]
PSNR_LINE = re.compile(r"held-out PSNR, (.+?):\s+(\S+) dB")


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) / 255 - b.astype(np.float64) / 255) ** 2))
    return -10 * math.log10(mse)


def test_small_demo_prints_the_psnr_of_its_renders(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    res = subprocess.run(
        [sys.executable, "-m", "da3_splat.cli", "demo", str(out), "--overwrite", *SMALL],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    # One PSNR line (no feed-forward-only run), finite and in a plausible range for a 10-step refinement.
    found = PSNR_LINE.findall(res.stdout)
    assert [label for label, _ in found] == ["+10 refinement steps"], res.stdout
    printed = float(found[0][1])
    assert math.isfinite(printed) and 8.0 < printed < 60.0, printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["psnr"] == {"refined": pytest.approx(printed, abs=0.006)}
    assert summary["ply"] is None and summary["refine_steps"] == 10 and summary["frames"] == 16

    # ns-eval wrote one ground truth | render image per held-out view (frames 0 and 8 of 16).
    renders = sorted((out / "renders" / "refined").glob("*_img_*.png"))
    assert len(renders) == 2, renders
    psnrs = []
    for path in renders:
        img = np.asarray(Image.open(path).convert("RGB"))
        assert img.shape == (90, 2 * 160, 3), img.shape
        gt, render = img[:, :160], img[:, 160:]
        assert render.std() > 5.0, f"{path.name}: the render is (nearly) constant"
        assert len(np.unique(render.reshape(-1, 3), axis=0)) > 100, f"{path.name}: too few colours"
        assert gt.std() > 5.0
        psnrs.append(_psnr(render, gt))
    # The printed figure is the mean PSNR of exactly these renders (up to their 8-bit quantisation).
    assert float(np.mean(psnrs)) == pytest.approx(printed, abs=0.05)

    preview = np.asarray(Image.open(out / "preview.png").convert("RGB"))
    assert preview.shape == (2 * 90, 2 * 160, 3)  # rows: held-out views; columns: ground truth | refined
