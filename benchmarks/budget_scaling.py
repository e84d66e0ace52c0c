"""The same stage-1 recipe at several compute budgets, scored alike, and where its trend would reach issue 16's
geometry bars ("the same recipe's curve on a small and a large compute budget").

    python benchmarks/budget_scaling.py --model LABEL MODEL STEPS_1A STEPS_1B [--model ...] \
        [--rate RUN_1A RUN_1B] [--val data/synthetic/val] [--scenes 20] [--out results/budget_scaling.md]

MODEL is a trained geometry model folder: stage 1b's ``model/``, or the bundled da3-tiny-synthetic (its NVS stage
trains the head on frozen geometry, so its geometry is 1b's). STEPS_1A / STEPS_1B are the two stages' steps (each
run's own cosine schedule: a budget, not a checkpoint of a longer run). Every model is scored once on the held-out
scenes with its own match cameras, as ``benchmarks/match_pose.py`` scores them. ``--rate`` reads two finished runs'
summary.json for this machine's minutes per 1000 steps of each stage, to put the extrapolation in hours.

The trend: each metric as a line in log2 of the budget (the largest budget = 1), fitted through every budget and
through the last doubling alone. Where it crosses a bar is an extrapolation of a few points, written as such.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from _common import RESULTS, machine_header, md_table  # benchmarks/ is on sys.path as the script's folder
from match_pose import score
from recipe_compare import SIZE

from da3_splat.data.dataset import NVSDataset
from da3_splat.data.dl3dv import scene_list
from da3_splat.runtime import load_model, set_pose_solver

BARS = {"AbsRel": 0.15, "rotation (deg)": 5.0, "translation direction (deg)": 15.0}  # issue 16, item 3


def minutes_per_1000(run: Path) -> float:
    summary = json.loads((run / "summary.json").read_text())
    return summary["seconds"] / 60 / summary["steps"] * 1000


def trend(budget: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """(value at the largest budget, change per doubling) of a least-squares line in log2(budget)."""
    slope, intercept = np.polyfit(np.log2(budget), values, 1)
    return float(intercept), float(slope)


def needed_budget(at_top: float, per_doubling: float, bar: float) -> float | None:
    """The budget (a multiple of the largest one) where a line falling ``per_doubling`` from ``at_top`` reaches
    ``bar``; 1 where it is already met, None where the line does not fall towards it."""
    if at_top <= bar:
        return 1.0
    if per_doubling >= 0:
        return None
    return float(2.0 ** ((bar - at_top) / per_doubling))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", nargs=4, action="append", required=True, metavar=("LABEL", "MODEL", "S1A", "S1B"))
    p.add_argument("--rate", nargs=2, type=Path, metavar=("RUN_1A", "RUN_1B"))
    p.add_argument("--val", type=Path, default=Path("data/synthetic/val"))
    p.add_argument("--scenes", type=int, default=20)
    p.add_argument("--out", type=Path, default=RESULTS / "budget_scaling.md")
    a = p.parse_args()
    if len(a.model) < 2:
        p.error("a trend needs at least two budgets")
    torch.manual_seed(0)
    data = NVSDataset.for_evaluation(scene_list([a.val])[: a.scenes], size=SIZE, num_context=4, downscale=4)
    t0 = time.perf_counter()
    steps = np.array([[int(s1), int(s2)] for _, _, s1, s2 in a.model], dtype=float)
    budget = steps[:, 0] / steps[:, 0].max()
    if not np.allclose(steps[:, 1] / steps[:, 1].max(), budget):
        p.error("every budget must scale both stages alike (the same recipe)")
    rows, metrics = [], []
    for (label, folder, s1, s2), frac in zip(a.model, budget):
        model = load_model(folder, "cpu")
        set_pose_solver(model, "decoder")  # the scoring solves the matches from the same pass itself
        res = score(model.eval(), data)
        m = res["matches"]
        values = [res["abs_rel"]["matches"], m.rotation_median, m.translation_median]
        metrics.append(values)
        rows.append(
            [
                label,
                f"{frac:g}",
                s1,
                s2,
                f"{values[0]:.3f}",
                f"{m.rotation_median:.2f}",
                f"{m.translation_median:.2f}",
                f"{m.auc15:.3f}",
            ]
        )
        print(" | ".join(map(str, rows[-1])), flush=True)
    metrics = np.array(metrics)
    rate = (minutes_per_1000(a.rate[0]), minutes_per_1000(a.rate[1])) if a.rate else None
    top = steps[budget.argmax()]
    trend_rows = []
    order = np.argsort(budget)
    for (name, bar), column in zip(BARS.items(), metrics.T):
        fitted_top, fitted = trend(budget, column)
        last = trend(budget[order[-2:]], column[order[-2:]])[1]  # the last doubling alone
        measured_top = float(column[order[-1]])
        row = [name, bar, f"{measured_top:.3f}"]
        for at_top, per_doubling in ((fitted_top, fitted), (measured_top, last)):
            factor = needed_budget(at_top, per_doubling, bar)
            hours = "n/a"
            if factor is not None and rate:
                hours = f"{factor * (top[0] * rate[0] + top[1] * rate[1]) / 1000 / 60:.1f}"
            row += [f"{per_doubling:+.3f}", "n/a" if factor is None else f"{factor:.1f}x", hours]
        trend_rows.append(row)
    extra = [
        *[f"- {label}: `{folder}`, {s1} steps at 70x126 then {s2} at 126x224" for label, folder, s1, s2 in a.model],
        f"- held out: {a.val}, first {a.scenes} scenes, 4 context views from each scene's eval_index.json, "
        f"{SIZE[0]}x{SIZE[1]}, pose-free, cameras from the model's own matches (as shipped)",
        "- AbsRel: one median scale per scene, each view's depth in the reference view's units",
        (
            f"- this machine: {rate[0]:.2f} min per 1000 stage-1a steps, {rate[1]:.2f} per 1000 stage-1b steps "
            f"(`{a.rate[0]}`, `{a.rate[1]}` summary.json)"
            if rate
            else "- no --rate: no hours"
        ),
        f"- scoring took {time.perf_counter() - t0:.0f} s",
    ]
    text = machine_header("The stage-1 recipe at several compute budgets (`benchmarks/budget_scaling.py`)", extra)
    text += "\n## Each budget, held out\n\n"
    text += md_table(
        ["run", "budget", "1a steps", "1b steps", "AbsRel", "rot. median (deg)", "transl. dir. median (deg)", "AUC@15"],
        rows,
    )
    text += (
        "\n## The trend, extrapolated to the bars\n\nTwo lines in log2(budget): least squares through every budget, "
        "and the last doubling alone (the two largest budgets; the more cautious where returns diminish). 'needs' is "
        "the budget, as a multiple of the largest, where the line reaches the bar; hours: wall time of both stage-1 "
        "stages at that budget on this machine (2 cores). An extrapolation of these points, not a measurement.\n\n"
    )
    text += md_table(
        [
            "metric",
            "bar",
            "measured at budget 1",
            "fit: per doubling",
            "fit: needs",
            "fit: hours",
            "last doubling: per doubling",
            "last doubling: needs",
            "last doubling: hours",
        ],
        trend_rows,
    )
    a.out.write_text(text)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
