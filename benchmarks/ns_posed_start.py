"""The posed feed-forward start of ``ns-train da3-splat`` on every mydesk frame against one on 100 of them (issue 20):
peak memory, time, and held-out PSNR at step 0 (``--pipeline.model.refine-steps 0``: the feed-forward Gaussians as
they are, scored by ``ns-eval``).

    .venv/bin/python benchmarks/ns_posed_start.py                    # ~6 min on 2 CPU cores -> results/ns_posed_start.md
    .venv/bin/python benchmarks/ns_posed_start.py --views 0 --out /tmp/x.md

Each ``ns-train`` runs in its own wrapper process, whose ``RUSAGE_CHILDREN`` peak is that run's peak resident memory
(DA3 in chunks of ``--chunk-size`` views, each aligned to the known cameras, then the Gaussians voxel-merged to the
``max-gaussians`` budget, with intermediate merges past 8x the budget). nerfstudio-data's own split holds out the evaluation frames.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import RESULTS, ROOT, loadavg, machine_header, md_table

from da3_splat import BUNDLED_MODEL

MYDESK = ROOT.parent / "shared" / "data" / "mydesk"
ENV = {**os.environ, "TORCHDYNAMO_DISABLE": "1", "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1"}
# Runs a command and prints its peak resident memory (the largest of its process tree's, in KiB) as the last line.
PEAK_WRAPPER = (
    "import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)"
)


def ns(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def run(cmd: list, log: Path) -> tuple[float, int]:
    """-> (seconds, peak RSS in bytes); a failure ends the script with the log's last line."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        res = subprocess.run(
            [sys.executable, "-c", PEAK_WRAPPER, *map(str, cmd)], stdout=f, stderr=subprocess.STDOUT, env=ENV
        )
    seconds = time.perf_counter() - t0
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    if res.returncode != 0:
        sys.exit(f"error: {Path(str(cmd[0])).name} failed (exit {res.returncode}): {lines[-2:-1]} -- see {log}")
    return seconds, int(lines[-1]) * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=MYDESK)
    ap.add_argument("--views", type=int, nargs="+", default=[0, 100], help="views DA3 sees (0: every training view)")
    ap.add_argument("--weights", default=BUNDLED_MODEL)
    ap.add_argument("--chunk-size", type=int, default=16)
    ap.add_argument("--max-gaussians", type=int, default=500_000)
    ap.add_argument("--out", type=Path, default=RESULTS / "ns_posed_start.md")
    args = ap.parse_args()
    if not (args.data / "transforms.json").is_file():
        sys.exit(f"error: no transforms.json in {args.data} (the mydesk scene)")
    load_before = loadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for views in args.views:
            name = f"views{views}"
            train_s, peak = run(
                [
                    ns("ns-train"), "da3-splat", "--data", args.data, "--output-dir", work / "runs",
                    "--experiment-name", name, "--timestamp", "run", "--machine.device-type", "cpu",
                    "--vis", "tensorboard", "--pipeline.model.refine-steps", "0",
                    "--pipeline.model.weights", args.weights, "--pipeline.model.num-views", views,
                    "--pipeline.model.chunk-size", args.chunk_size,
                    "--pipeline.model.max-gaussians", args.max_gaussians,
                    "nerfstudio-data", "--downscale-factor", "4",
                ],
                work / f"train_{name}.log",
            )  # fmt: skip
            log = (work / f"train_{name}.log").read_text(errors="replace")
            said = [m.group(1) for m in re.finditer(r"([\d,]+ pixel Gaussians -> [\d,]+)", log)][:1]
            config = work / "runs" / name / "da3-splat" / "run" / "config.yml"
            metrics = work / f"metrics_{name}.json"
            eval_s, _ = run([ns("ns-eval"), "--load-config", config, "--output-path", metrics], work / f"e_{name}.log")
            res = json.loads(metrics.read_text())["results"]
            row = [
                "all training views" if views == 0 else f"{views} (farthest-point)",
                said[0] if said else "?",
                f"{peak / 2**30:.2f}",
                f"{train_s:.0f}",
                f"{res['psnr']:.2f}",
                f"{res['ssim']:.3f}",
                f"{res.get('num_rays_per_sec', float('nan')):.0f}",
                f"{eval_s:.0f}",
            ]
            rows.append(row)
            print(row, flush=True)
    text = machine_header(
        "ns-train da3-splat: the posed feed-forward start on every mydesk frame vs 100 of them",
        [
            f"- `{' '.join(['python', 'benchmarks/ns_posed_start.py', *sys.argv[1:]])}`",
            f"- scene: {args.data.name} (498 frames, nerfstudio-data --downscale-factor 4: 480x270; nerfstudio's "
            f"own train/eval split), weights {args.weights}, chunks of {args.chunk_size} views, Gaussian budget "
            f"{args.max_gaussians:,}; `--pipeline.model.refine-steps 0` (step 0: the feed-forward Gaussians)",
            f"- load average (1/5/15 min) before: {load_before}; after: {loadavg()}",
        ],
    )
    text += "\n" + md_table(
        [
            "views DA3 sees",
            "Gaussians (pixels -> start)",
            "peak RSS GiB (ns-train)",
            "ns-train s",
            "held-out PSNR (step 0)",
            "SSIM",
            "rays/s (ns-eval)",
            "ns-eval s",
        ],
        rows,
    )
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
