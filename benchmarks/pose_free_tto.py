"""Pose-free evaluation as the field runs it: with and without test-time target-pose optimisation (issue 17).

    python benchmarks/pose_free_tto.py [--data data/synthetic/val] [--model da3-tiny-synthetic] [--scenes 8]
        [--steps 100] [--scale 0.5] [--no-baseline] [--threads N] [--out benchmarks/results/pose_free_tto.md]

One `da3-splat eval --modes pose-free --pose-free-tto-steps N` run (each scene's eval_index.json, every 8th frame a
target, 4 farthest-point context views, 126x224): every method is scored raw (targets rendered at their GT poses
after the first-camera alignment, as the protocol does without TTO) and after TTO (each target's pose refined on
its own image with the Gaussians frozen, `da3_splat.pose_refine`, starting from that same pose). Writes PSNR / SSIM
raw vs refined, the seconds per scene of each, and how far the refinement moved the targets.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
from _common import RESULTS, loadavg, machine_header, md_table  # benchmarks/ is on sys.path as the script's folder

from da3_splat.commands.eval import EvalConfig, run_eval


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=Path("data/synthetic/val"))
    p.add_argument("--model", default="da3-tiny-synthetic")
    p.add_argument("--scenes", type=int, default=8, help="the first N scenes")
    p.add_argument("--steps", type=int, default=100, help="TTO steps at most (it stops early when converged)")
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--scale", type=float, default=0.5, help="TTO render scale")
    p.add_argument("--no-baseline", action="store_true", help="the NVS head only (about half the time)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", type=Path, default=RESULTS / "pose_free_tto.md")
    a = p.parse_args()
    if not a.data.is_dir():
        raise SystemExit(f"error: {a.data} not found; `make tiny-model` generates the held-out scenes")
    if a.threads:
        torch.set_num_threads(a.threads)

    load_before = loadavg()
    tmp = Path(tempfile.mkdtemp(prefix="pose_free_tto_"))
    t0 = time.perf_counter()
    try:
        cfg = EvalConfig(
            scenes=(a.data,),
            output=tmp / "eval",
            model=a.model,
            modes=("pose-free",),
            baseline=not a.no_baseline,
            pose_free_tto_steps=a.steps,
            pose_free_tto_lr=a.lr,
            pose_free_tto_scale=a.scale,
            max_scenes=a.scenes,
            device="cpu",
            overwrite=True,
        )
        m = run_eval(cfg)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    wall = time.perf_counter() - t0

    res = m["results"]["pose-free"]
    rows, moved_rows, scene_rows = [], [], []
    # TTO skips the opaque variants of the head-free rows (eval scores them raw only): no pair to report
    raw_only = [k for k in res if not k.endswith("+tto") and f"{k}+tto" not in res and "psnr" in res[k]]
    for method in [k for k in res if not k.endswith("+tto") and f"{k}+tto" in res]:
        raw, tto = res[method], res[f"{method}+tto"]
        rows.append(
            [
                method,
                f"{raw['psnr']:.2f}",
                f"{tto['psnr']:.2f}",
                f"{tto['psnr'] - raw['psnr']:+.2f}",
                f"{raw['ssim']:.3f}",
                f"{tto['ssim']:.3f}",
                f"{raw['seconds_per_scene']:.1f}",
                f"{tto['seconds_per_scene']:.1f}",
            ]
        )
        t = tto["tto"]
        moved_rows.append(
            [
                method,
                f"{t['steps']:.1f}",
                f"{t['loss_before']:.4f}",
                f"{t['loss_after']:.4f}",
                f"{t['rotation_deg']:.2f}",
                f"{t['translation']:.3f}",
                f"{t['depth_unit']:.3g}",
                f"{t['seconds']:.1f}",
            ]
        )
        for scene, entry in m["per_scene"].items():
            r, s = entry["pose-free"][method], entry["pose-free"][f"{method}+tto"]
            scene_rows.append([scene, method, f"{r['psnr']:.2f}", f"{s['psnr']:.2f}", s["tto"]["steps"]])

    text = machine_header(
        "Pose-free NVS with test-time target-pose optimisation (`benchmarks/pose_free_tto.py`)",
        [
            f"- load average before: {load_before}; after: {loadavg()}",
            f"- model: {a.model}; the first {m['scenes']} scenes of {a.data}; {m['size'][0]}x{m['size'][1]}, "
            f"{m['context_views']} context views, targets every 8th frame; wall {wall / 60:.1f} min",
            f"- TTO: at most {a.steps} Adam steps (lr {a.lr}, early stop), rendering at {a.scale} of the size, "
            "MSE on each target's own image, Gaussians frozen, start: the GT target pose in the aligned frame"
            + (f"; scored raw only (TTO skips them): {', '.join(raw_only)}" if raw_only else ""),
        ],
    )
    text += "\n## Target views, raw (GT poses after first-camera alignment) vs after TTO (mean over scenes)\n\n"
    text += md_table(
        ["method", "PSNR raw", "PSNR TTO", "gain (dB)", "SSIM raw", "SSIM TTO", "s / scene raw", "s / scene TTO"],
        rows,
    )
    text += (
        "\n## What TTO did (means over scenes; losses, rotation and translation over all targets)\n\n"
        "Translation in the evaluation frame's units (the context cameras' median distance to the first is 1); "
        "scene depth: the median distance of the Gaussians to the target cameras in those units.\n\n"
    )
    text += md_table(
        ["method", "steps", "loss before", "loss after", "moved (deg)", "moved (units)", "scene depth", "TTO s"],
        moved_rows,
    )
    text += "\n## Per scene (PSNR)\n\n" + md_table(["scene", "method", "raw", "TTO", "steps"], scene_rows)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
