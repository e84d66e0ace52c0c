"""Learning curves of training runs from their own logs (issue 16): held-out depth AbsRel and pose-free camera
errors against steps, beside the training loss.

    python benchmarks/train_curves.py outputs/tiny-geometry [more runs] [--out benchmarks/results/train_curves.md]

Reads each run's metrics.jsonl (written by `da3-splat train`; the held-out rows come from its periodic validation
on the first --data.val-scenes scenes of --data.val, each scene's eval_index.json with 4 context views: posed and
pose-free depth AbsRel, pose-free median pairwise rotation / translation-direction errors and AUC@15) and
summary.json (steps, wall and CPU time). The training-loss column is the median of the logged losses since the
previous validation row.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from _common import RESULTS, machine_header, md_table  # benchmarks/ is on sys.path as the script's folder

COLUMNS = [
    ("val/depth_abs_rel", "AbsRel posed", ".3f"),
    ("val/depth_abs_rel_pose_free", "AbsRel pose-free", ".3f"),
    ("val/rotation_median", "rot. err. median (deg)", ".2f"),
    ("val/translation_median", "transl. dir. err. median (deg)", ".2f"),
    ("val/pose_auc15", "AUC@15", ".3f"),
]


def curve_rows(run: Path) -> list[list]:
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows, since = [], []
    for rec in log:
        if "loss" in rec:
            since.append(rec["loss"])
        if not any(key in rec for key, _, _ in COLUMNS):
            continue
        loss = f"{np.median(since):.3f}" if since else ""
        cells = [format(rec[key], spec) if key in rec else "" for key, _, spec in COLUMNS]
        rows.append([rec["step"], loss, *cells])
        since = []
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", type=Path, nargs="+")
    p.add_argument("--out", type=Path, default=RESULTS / "train_curves.md")
    a = p.parse_args()
    text = machine_header("Learning curves (`benchmarks/train_curves.py`)")
    for run in a.runs:
        summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
        config = json.loads((run / "config.json").read_text())
        text += f"\n## {run.name}: preset {config.get('preset')}, {config['train']}, {config['steps']} steps\n\n"
        if summary:
            text += (
                f"- {summary['steps']} steps in {summary['seconds'] / 60:.1f} min wall, "
                f"{summary['cpu_seconds'] / 60:.1f} CPU-min\n"
            )
        text += f"- held-out: {config['data']['val_scenes']} scenes of {', '.join(config['data']['val'])}\n\n"
        text += md_table(["step", "train loss (median)", *(label for _, label, _ in COLUMNS)], curve_rows(run))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
