"""The CPU-side parts of the GPU check (`benchmarks/gpu_check.sh`, `gpu_bf16.py`, `gpu_fps.py`), tested here
because the GPU machine that runs them for real is only lent now and then:

- the script parses (`bash -n`), refuses with one line where no CUDA device is visible, and runs every step at
  tiny size on the CPU with `--cpu-dry-run` (the CUDA tests skip there; nerfstudio trains 2 steps);
- the two Python benchmarks run their whole code path with `--dry-run` and reject bad arguments in one line.
No timing is asserted: the numbers of a dry run mean nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
BENCH = ROOT / "benchmarks"
NO_CUDA = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONWARNINGS": "ignore", "PYTHON": sys.executable}
STEPS = ["setup", "gsplat", "bf16", "fps", "cuda-tests", "gsplat-vs-cpu", "ns-train", "ns-eval"]


def _bench(name: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCH / name), *args],
        cwd=ROOT,
        env=NO_CUDA,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _one_error_line(res: subprocess.CompletedProcess, prog: str, match: str) -> None:
    assert res.returncode != 0, res.stdout[-2000:]
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error:") and match in lines[0], res.stderr


def test_script_syntax():
    assert shutil.which("bash")
    res = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr


def test_script_help_and_bad_argument():
    res = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and "--cpu-dry-run" in res.stdout and "carry" in res.stdout
    res = subprocess.run(["bash", str(SCRIPT), "--no-such-flag"], capture_output=True, text=True, timeout=30)
    _one_error_line(res, "gpu_check.sh", "unknown argument '--no-such-flag'")


def test_script_refuses_without_cuda(tmp_path):
    res = subprocess.run(
        ["bash", str(SCRIPT)],
        env={**NO_CUDA, "OUT": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and res.stdout == ""
    _one_error_line(res, "gpu_check.sh", "no CUDA device")
    assert "--cpu-dry-run" in res.stderr
    assert not any(tmp_path.iterdir())  # nothing was written


def test_script_cpu_dry_run(tmp_path):
    pytest.importorskip("nerfstudio", reason="the nerfstudio extra is not installed (make test installs it)")
    res = subprocess.run(
        ["bash", str(SCRIPT), "--cpu-dry-run"],
        cwd=tmp_path,  # the script finds the repository from its own path
        env={**NO_CUDA, "OUT": str(tmp_path / "out"), "GPU_CHECK_WORK": str(tmp_path / "work")},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    status = {step: result for result, step in re.findall(r"^(PASS|FAIL)\s+(\S+)", res.stdout, re.M)}
    assert status == dict.fromkeys(STEPS, "PASS"), res.stdout
    md = (tmp_path / "out" / "gpu.md").read_text()
    assert "CPU dry run" in md and "8 passed, 0 failed" in md
    for step in STEPS:
        assert f"| {step} | PASS |" in md, step
    # each step's section made it into the report: the two benchmark tables, the tests, the nerfstudio run
    assert "| da3-small |" in md and "| da3-tiny-synthetic |" in md and "paper A100 FPS" in md
    assert "needs a CUDA device" in md and re.search(r"ns-eval: psnr \d+\.\d+", md)
    assert (tmp_path / "out" / "gpu_check.log").stat().st_size > 0


@pytest.mark.parametrize("name", ["gpu_bf16.py", "gpu_fps.py"])
def test_benchmark_dry_run(tmp_path, name):
    md = tmp_path / "section.md"
    res = _bench(name, "--dry-run", "--md", str(md))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    text = md.read_text()
    assert text in res.stdout and "| da3-small |" in text and "dry run" in text
    if name == "gpu_bf16.py":
        assert "check: outputs finite and depth mean rel <= 0.05: passed" in text
        row = next(line for line in text.splitlines() if line.startswith("| da3-small |"))
        max_rel = float(row.split("|")[2])
        assert 0.0 < max_rel < 0.05  # bf16 differs from fp32, but only a little
    else:
        assert "| 160.5 |" in text  # the paper's A100 figure for da3-small


@pytest.mark.parametrize("name", ["gpu_bf16.py", "gpu_fps.py"])
def test_benchmark_arguments(name):
    res = _bench(name, "--dry-run", "--height", "30")
    _one_error_line(res, name, "multiples of 14")
    res = _bench(name, "--dry-run", "--models", "da3-nonexistent")
    _one_error_line(res, name, "unknown model 'da3-nonexistent'")
    res = _bench(name, "--runs", "1")  # no --dry-run and no CUDA device
    _one_error_line(res, name, "no CUDA device")
