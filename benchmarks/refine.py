"""PSNR on held-out target views against refinement steps, for the nerfstudio method ``da3-splat``:
DA3-initialised Gaussians vs the same refinement from random points (vs the dataset's point cloud where a scene
has one; neither scene set here has).

Scenes (targets: every 8th frame, as the DA3 protocol; nothing else of a target is seen):
- synthetic held-out scenes: ``da3_splat.data.synthetic`` with seed 3000 (the bundled model trained on seed
  1000 and validated on seed 2000), 48 frames at 135x240, like its training data;
- mydesk (``../shared/data/mydesk``, read-only): its first 96 frames, so the targets are its eval_index.json
  targets 0, 8, ..., 88; images_4 (270x480) scaled to the synthetic size.
Images are used at half that size by default (68x120): the random start's large splats make CPU steps slow.
Training views: every non-target frame; DA3 sees ``--views`` of them chosen by farthest-point sampling.

Everything goes through nerfstudio's own Trainer (``train_iteration`` and the training callbacks: densification,
SH schedule, learning-rate schedules), in-process, on CPU unless CUDA is there. The refinement schedule is
splatfacto's scaled to the short budget (warm-up, refine interval, SH interval); both starts get the same
schedule and the same number of Gaussians (DA3's budget = the random start's count). Timings exclude evaluation.
With CUDA, one more run times a full 7k-step refinement with the method's defaults.

    .venv/bin/python benchmarks/refine.py            # ~10-15 min on 2 CPU cores -> results/refine.md
    .venv/bin/python benchmarks/refine.py --quick    # smoke run, writes only with --out FILE
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # nerfstudio compiles a helper we do not call

import torch  # noqa: E402
from _common import RESULTS, ROOT, loadavg, machine_header, md_table  # noqa: E402

MYDESK = Path(os.environ.get("DA3_SPLAT_MYDESK", ROOT.parent / "shared" / "data" / "mydesk"))
SEED = 3000


def scene_config(data: Path, init: str, args, out_dir: Path, res_scale: float, budget: int, tag: str):
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    from nerfstudio_plugin.config import da3_splat_method, optimizers

    cfg = copy.deepcopy(da3_splat_method.config)
    cfg.machine.device_type = "cuda" if torch.cuda.is_available() else "cpu"
    cfg.vis, cfg.logging.local_writer.enable = "tensorboard", False
    cfg.output_dir, cfg.experiment_name, cfg.timestamp = out_dir, tag, init
    cfg.max_num_iterations, cfg.optimizers = budget, optimizers(max_steps=budget)
    cfg.steps_per_save = 10**9
    dm = cfg.pipeline.datamanager
    dm.data = data
    dm.dataparser = NerfstudioDataParserConfig(
        downscale_factor=4, eval_mode="interval", eval_interval=8, load_3D_points=False
    )
    dm.camera_res_scale_factor = res_scale
    m = cfg.pipeline.model
    m.init, m.weights, m.num_views, m.process_res = init, args.weights, args.views, args.process_res
    m.max_gaussians = m.num_random = args.gaussians
    if budget < 7000:  # splatfacto's schedule, shrunk to the budget (its defaults assume 30k steps)
        m.num_downscales, m.warmup_length, m.refine_every = 0, budget // 10, max(budget // 12, 10)
        m.reset_alpha_every, m.stop_split_at = 10**6, budget
        m.sh_degree_interval = max(budget // 4, 1)
    return cfg


@torch.no_grad()
def target_psnr(pipeline) -> float:
    from da3_splat.image_metrics import psnr

    model = pipeline.model
    model.eval()
    values = []
    for camera, batch in pipeline.datamanager.fixed_indices_eval_dataloader:
        out = model.get_outputs_for_camera(camera)
        gt = model.composite_with_background(model.get_gt_img(batch["image"]), out["background"])
        values.append(float(psnr(out["rgb"].permute(2, 0, 1), gt[..., :3].permute(2, 0, 1))))
    model.train()
    return sum(values) / len(values)


def refine(cfg, eval_steps: list[int]) -> list[dict]:
    """Train with nerfstudio's Trainer for max(eval_steps) steps; PSNR on the targets at each eval step."""
    from nerfstudio.engine.callbacks import TrainingCallbackLocation as Loc

    trainer = cfg.setup(local_rank=0, world_size=1)
    t0 = time.perf_counter()
    trainer.setup()
    setup_s = time.perf_counter() - t0
    rows, train_s = [], 0.0
    for step in range(max(eval_steps) + 1):
        if step in eval_steps:
            rows.append(
                {
                    "step": step,
                    "psnr": target_psnr(trainer.pipeline),
                    "seconds": train_s,
                    "gaussians": trainer.pipeline.model.num_points,
                }
            )
        if step == max(eval_steps):
            break
        t0 = time.perf_counter()
        for cb in trainer.callbacks:
            cb.run_callback_at_location(step, location=Loc.BEFORE_TRAIN_ITERATION)
        trainer.train_iteration(step)
        for cb in trainer.callbacks:
            cb.run_callback_at_location(step, location=Loc.AFTER_TRAIN_ITERATION)
        train_s += time.perf_counter() - t0
    rows[0]["setup_s"] = setup_s
    return rows


def synthetic_scenes(root: Path, n: int, frames: int) -> list[Path]:
    from da3_splat.data.synthetic import SyntheticConfig, make_synthetic

    return make_synthetic(root / "synthetic", n, SyntheticConfig(frames=frames, height=135, width=240), seed=SEED)


def mydesk_subset(root: Path, frames: int) -> Path | None:
    """The first ``frames`` frames in a folder of their own; images_4 links to the shared (read-only) images."""
    if not (MYDESK / "transforms.json").is_file():
        return None
    meta = json.loads((MYDESK / "transforms.json").read_text())
    meta["frames"] = meta["frames"][:frames]
    out = root / "mydesk"
    out.mkdir()
    (out / "transforms.json").write_text(json.dumps(meta))
    (out / "images_4").symlink_to(MYDESK / "images_4", target_is_directory=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default="da3-tiny-synthetic")
    ap.add_argument("--budget", type=int, default=200, help="refinement steps of each run")
    ap.add_argument("--res-scale", type=float, default=0.5, help="training/target image size, x 135x240")
    ap.add_argument("--scenes", type=int, default=2, help="synthetic held-out scenes")
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--views", type=int, default=12, help="training views DA3 sees")
    ap.add_argument("--gaussians", type=int, default=10000, help="DA3 budget and random-start count")
    ap.add_argument("--process-res", type=int, default=None, help="default: the model's own")
    ap.add_argument("--no-mydesk", action="store_true")
    ap.add_argument("--quick", action="store_true", help="1 scene, 40 steps, no mydesk")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.quick:
        args.budget, args.scenes, args.frames, args.no_mydesk = 40, 1, 24, True
    out = args.out or (None if args.quick else RESULTS / "refine.md")
    B = args.budget
    eval_steps = sorted({0, B // 10, B // 5, 2 * B // 5, 3 * B // 5, B})
    load_before = loadavg()

    results: dict[str, dict[str, list[dict]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # Both image sets at the same size: synthetic 135x240 and mydesk's images_4 (270x480) scaled to it.
        r = args.res_scale
        scenes = [(f"synthetic {i}", p, r) for i, p in enumerate(synthetic_scenes(root, args.scenes, args.frames))]
        desk = None if args.no_mydesk else mydesk_subset(root, 96)
        if desk is not None:
            scenes.append(("mydesk", desk, r / 2))
        for k, (name, path, res_scale) in enumerate(scenes):
            for init in ("da3", "random"):
                cfg = scene_config(path, init, args, root / "runs", res_scale, B, name.replace(" ", "_"))
                print(f"{name}, {init} start: {B} steps ...", file=sys.stderr, flush=True)
                results.setdefault(name, {})[init] = refine(cfg, eval_steps)
            if k + 1 < len(scenes):  # keep what is measured so far, should the run be cut short
                partial = f"\n**Partial: {k + 1} of {len(scenes)} scenes so far.**\n"
                _write(out, report(results, eval_steps, args, load_before, None, desk is not None) + partial)
        gpu = gpu_full_run(scenes[0][1], args, root) if torch.cuda.is_available() else None

    text = report(results, eval_steps, args, load_before, gpu, desk is not None)
    print(text)
    _write(out, text)


def _write(out: Path | None, text: str) -> None:
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}", file=sys.stderr)


def gpu_full_run(scene: Path, args, root: Path) -> dict:
    """The method's defaults, 7k steps, on CUDA: wall time and the final target PSNR."""
    from nerfstudio_plugin.config import MAX_STEPS

    cfg = scene_config(scene, "da3", args, root / "gpu", 1.0, MAX_STEPS, "gpu")
    cfg.pipeline.model.max_gaussians = 500_000
    rows = refine(cfg, [0, MAX_STEPS])
    return {"steps": MAX_STEPS, "seconds": rows[-1]["seconds"], "psnr": rows[-1]["psnr"], "psnr0": rows[0]["psnr"]}


def report(results, eval_steps, args, load_before, gpu, has_mydesk) -> str:
    B = args.budget
    headers = ["step"] + [f"{name}: {init}" for name in results for init in ("da3", "random")]
    rows = []
    for k, step in enumerate(eval_steps):
        rows.append([step] + [f"{results[n][i][k]['psnr']:.2f}" for n in results for i in ("da3", "random")])
    times = []
    for name in results:
        for init in ("da3", "random"):
            r = results[name][init]
            seconds = r[-1]["seconds"]
            times.append(
                [
                    f"{name}: {init}",
                    f"{r[0]['setup_s']:.1f}",
                    f"{seconds:.1f}",
                    f"{seconds / B:.3f}",
                    f"{r[0]['gaussians']:,}",
                    f"{r[-1]['gaussians']:,}",
                ]
            )
    fifth = eval_steps.index(B // 5)
    bar = []
    for name in results:
        da3_fifth, rand_end = results[name]["da3"][fifth]["psnr"], results[name]["random"][-1]["psnr"]
        verdict = "met" if da3_fifth >= rand_end else "not met"
        bar.append(
            f"- {name}: DA3 start at step {B // 5} {da3_fifth:.2f} dB vs random start at step {B} "
            f"{rand_end:.2f} dB: **{verdict}**"
        )
    extra = [
        f"- load average (1/5/15 min) before: {load_before}; after: {loadavg()} (other processes share the cores)",
        f"- weights: `{args.weights}`; DA3 on {args.views} farthest-point training views at process-res "
        f"{args.process_res or 'of the model'}; {args.gaussians:,} Gaussians at the start for both (DA3: voxel-merged to that budget; "
        "random: splatfacto's cube of side 10 around the normalised scene)",
        f"- synthetic: {args.scenes} held-out scenes (seed {SEED}), {args.frames} frames rendered at 135x240"
        + ("; mydesk: frames 0-95 (images_4, 270x480)" if has_mydesk else "")
        + f"; all trained and evaluated at {round(135 * args.res_scale)}x{round(240 * args.res_scale)}",
        f"- refinement: {B} steps, splatfacto's schedule shrunk to the budget (warm-up {B // 10}, densify every "
        f"{max(B // 12, 10)}, no opacity reset, SH degree +1 every {max(B // 4, 1)}); as in splatfacto, "
        "densification waits (training views + densify interval) steps after the step-0 opacity reset",
        "- dataset point cloud: none of these scenes has one (no ply_file_path), so that column is absent",
    ]
    text = machine_header("Refinement: DA3 start vs random start (`benchmarks/refine.py`)", extra)
    text += "\n## PSNR (dB) on the target views\n\n" + md_table(headers, rows)
    text += "\n## Bar: DA3 start within 1/5 of the steps reaches the random start's final PSNR\n\n" + "\n".join(bar)
    text += "\n\n## Time\n\n" + md_table(
        ["run", "set-up s (DA3 incl.)", "refinement s", "s / step", "Gaussians at start", "at end"], times
    )
    text += "\n## Full 7k-step run on CUDA\n\n"
    if gpu is None:
        text += "Not run: no CUDA device on this machine.\n"
    else:
        text += (
            f"{gpu['steps']} steps in {gpu['seconds']:.0f} s ({torch.cuda.get_device_name(0)}); target PSNR "
            f"{gpu['psnr0']:.2f} dB at the start, {gpu['psnr']:.2f} dB at the end (synthetic 0).\n"
        )
    return text


if __name__ == "__main__":
    main()
