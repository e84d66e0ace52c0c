"""Speed of the synthetic scene generator (issue 5: 50 scenes x 60 frames at 270x480 on 2 cores in < 5 min).

    python benchmarks/synthetic_speed.py [--scenes 50] [--frames 60] [--workers 2] [--out /tmp/da3_synthetic_speed]

Renders and writes the scenes with ``make_synthetic`` (the output folder is deleted afterwards unless --keep),
pinned to ``workers`` CPU cores, and writes benchmarks/results/synthetic_speed.md. Besides wall time it
reports the CPU seconds of the worker processes: on a machine shared with other jobs, CPU seconds / workers
is what the run would take with the cores to itself.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import time
from pathlib import Path

from _common import RESULTS, loadavg, machine_header  # benchmarks/ is on sys.path as the script's folder

from da3_splat.data.synthetic import SyntheticConfig, make_synthetic

LIMIT_S = 300.0


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scenes", type=int, default=50)
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--height", type=int, default=270)
    p.add_argument("--width", type=int, default=480)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("/tmp/da3_synthetic_speed"))
    p.add_argument("--keep", action="store_true", help="keep the rendered scenes")
    a = p.parse_args()

    cores = sorted(os.sched_getaffinity(0))[: a.workers]
    os.sched_setaffinity(0, cores)  # "on N cores": the pool's processes inherit this
    shutil.rmtree(a.out, ignore_errors=True)
    cfg = SyntheticConfig(frames=a.frames, height=a.height, width=a.width)
    load_start = loadavg()
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    paths = make_synthetic(a.out, a.scenes, cfg, seed=a.seed, workers=a.workers)
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    load_end = loadavg()
    size = sum(f.stat().st_size for f in a.out.rglob("*") if f.is_file())
    if not a.keep:
        shutil.rmtree(a.out)

    frames = len(paths) * a.frames
    ok = wall < LIMIT_S
    lines = [
        machine_header(
            "Synthetic scene generator speed",
            [f"- pinned to CPU cores {cores}; load average (1/5/15 min): {load_start} at start, {load_end} at end"],
        ),
        (
            f"`python benchmarks/synthetic_speed.py --scenes {a.scenes} --frames {a.frames} --height {a.height} "
            f"--width {a.width} --workers {a.workers}`: `make_synthetic` renders every frame (ray casting, "
            "textures, shadows, silhouette anti-aliasing) and writes it in the DL3DV layout (PNG, float32 depth "
            ".npy, transforms.json, eval_index.json)."
        ),
        "",
        "| scenes x frames | size | workers | wall s | CPU s (all processes) | CPU ms / frame | output | limit |",
        "|---|---|---|---|---|---|---|---|",
        (
            f"| {len(paths)} x {a.frames} | {a.height}x{a.width} | {a.workers} | {wall:.1f} | {cpu:.1f} | "
            f"{1000 * cpu / frames:.1f} | {size / 2**30:.2f} GiB | {'PASS' if ok else 'FAIL'} (< {LIMIT_S:.0f} s) |"
        ),
        "",
        (
            f"CPU s / workers = {cpu / a.workers:.1f} s: the wall time with the {a.workers} cores to itself "
            "(the load average above shows how much other jobs were running)."
        ),
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "synthetic_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
