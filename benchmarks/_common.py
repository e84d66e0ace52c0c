"""Shared by the benchmark scripts: the repo on sys.path, model pairs on the same weights, machine info, tables."""

from __future__ import annotations

import datetime
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # for tests.oracle
os.environ.setdefault("DA3_LOG_LEVEL", "WARN")  # the official net logs every reference-view selection at INFO

import torch  # noqa: E402


def official_and_ours(name: str, seed: int = 0, keep_official: bool = True):
    """(official wrapper or None, ours): the official net with perturbed random weights (tests/oracle.py) and
    ours holding the same tensors (built on the meta device, loaded through the strict key map, no disk)."""
    from da3_splat import DA3
    from da3_splat.model.weights import check_and_map
    from tests.oracle import build_official

    wrapper = build_official(name, seed=seed)
    with torch.device("meta"):
        ours = DA3.from_config(name)
    ours.load_state_dict(check_and_map(ours, wrapper.state_dict()), strict=True, assign=True)
    return (wrapper if keep_official else None), ours.eval()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def loadavg() -> str:
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


def machine_header(title: str, extra: list[str] = ()) -> str:
    lines = [
        f"# {title}",
        "",
        f"- date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- machine: {os.cpu_count()} CPU cores, {cpu_model()}, Python {platform.python_version()}",
        f"- torch {torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()}"
        + (f", CUDA: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no CUDA device"),
        *extra,
    ]
    return "\n".join(lines) + "\n"


def md_table(headers: list[str], rows: list[list]) -> str:
    def cell(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(out) + "\n"
