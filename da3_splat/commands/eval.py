"""`da3-splat eval`: feed-forward novel-view synthesis and geometry on held-out scenes, posed and pose-free; the
protocol itself is the library's (:mod:`da3_splat.eval_protocol`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from da3_splat import BUNDLED_MODEL
from da3_splat.errors import InputError


@dataclass
class EvalConfig:
    """Novel-view synthesis on held-out scenes: PSNR / SSIM (LPIPS when its weights are on disk) on target views,
    posed and pose-free, with the head-free Gaussians as the baseline; also context-view depth (AbsRel, delta<1.25,
    where the scenes have GT depth) and, pose-free, the predicted cameras' pairwise rotation / translation errors
    and AUC@3/5/15. Writes OUT/metrics.json and a grid per scene."""

    scenes: Annotated[tuple[Path, ...], tyro.conf.Positional, tyro.conf.arg(metavar="SCENES")]
    """Scene folders or folders of scenes (DL3DV layouts, synthetic)."""
    output: Annotated[Path, tyro.conf.arg(aliases=("-o",))]
    """Output folder (new or empty unless --overwrite)."""
    model: str = BUNDLED_MODEL
    """Weights: Hugging Face repo id, folder, .safetensors file, a bundled name, random:CONFIG."""
    index: Path | None = None
    """Evaluation index JSON ({scene: {context: [...], targets: [...]}}); default: each scene's eval_index.json
    (its context_N entry), else every 8th frame a target and N farthest-point context views."""
    context_views: int = 4
    """N: context views per scene when the index gives several sets."""
    modes: tuple[Literal["posed", "pose-free"], ...] = ("posed", "pose-free")
    height: int = 126
    """Evaluation height (multiple of 14); images are resized to cover it and centre-cropped."""
    width: int = 224
    downscale: int | None = 4
    """Read images_N of each scene."""
    baseline: bool = True
    """Also score the head-free Gaussians built from the model's own depth."""
    pose_free_tto_steps: int = 0
    """Pose-free: also score each method after test-time target-pose optimisation (as NoPoSplat / AnySplat are
    scored): every target's camera refined on its own image, Gaussians frozen, for at most N Adam steps; adds
    `<method>+tto` rows. 0: off."""
    pose_free_tto_lr: float = 5e-3
    pose_free_tto_scale: float = 0.5
    """The refinement renders at this fraction of --height/--width."""
    pose_free_tto_init: Literal["gt", "nearest-context"] = "gt"
    """Refinement start: the GT target pose in the aligned frame, or the nearest context view's predicted pose."""
    pose_solver: Literal["decoder", "matches"] | None = None
    """Pose-free cameras from the camera decoder or from the model's patch matches and depth
    (``model.match_pose``); default: the model's own setting (``pose_solver`` of its config)."""
    max_scenes: int | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    overwrite: bool = False


def run_eval(cfg: EvalConfig, console=None) -> dict:
    import torch
    from rich.console import Console

    from da3_splat.data.dataset import NVSDataset, collate
    from da3_splat.data.dl3dv import scene_list
    from da3_splat.eval_protocol import GEOMETRY_KEYS, MethodResult, TTOSettings, evaluate_scene, geometry_summary
    from da3_splat.files import check_output_dir, write_json, write_png
    from da3_splat.geometry_metrics import finite_or_none, pose_scores
    from da3_splat.image_metrics import load_lpips, lpips_status
    from da3_splat.nvs import SceneBatch
    from da3_splat.pose_refine import PoseRefineSettings
    from da3_splat.rendering.camera_path import to_uint8
    from da3_splat.runtime import load_model, resolve_device, set_pose_solver

    console = console or Console(stderr=True)
    if cfg.height % 14 or cfg.width % 14:
        raise InputError(f"--height/--width must be multiples of 14, got {cfg.height}x{cfg.width}")
    steps, lr, scale = cfg.pose_free_tto_steps, cfg.pose_free_tto_lr, cfg.pose_free_tto_scale
    if steps < 0 or not lr > 0 or not 0 < scale <= 1:
        raise InputError(
            "--pose-free-tto-steps must be >= 0, --pose-free-tto-lr > 0 and --pose-free-tto-scale in (0, 1]; "
            f"got {steps}, {lr}, {scale}"
        )
    tto = TTOSettings(PoseRefineSettings(steps=steps, lr=lr, render_scale=scale), cfg.pose_free_tto_init)
    paths = scene_list(cfg.scenes)[: cfg.max_scenes]
    check_output_dir(cfg.output, cfg.overwrite)
    device = resolve_device(cfg.device)
    model = load_model(cfg.model, device, console).eval()
    set_pose_solver(model, cfg.pose_solver)
    data = NVSDataset.for_evaluation(
        paths, size=(cfg.height, cfg.width), index=cfg.index, num_context=cfg.context_views, downscale=cfg.downscale
    )
    lpips_fn = load_lpips(device)
    console.print(
        f"evaluating {cfg.model} on {len(paths)} scene(s), modes {', '.join(cfg.modes)}; NVS head: "
        f"{'yes' if model.has_gs_head else 'no'}; LPIPS: {'used' if lpips_fn is not None else lpips_status()}",
        highlight=False,
    )
    totals = {m: {} for m in cfg.modes}
    per_scene = {}
    depth = {m: [] for m in cfg.modes}  # per-scene depth score dicts
    pose = {m: ([], []) for m in cfg.modes}  # pooled pairwise rotation / translation errors
    for i in range(len(data)):
        item = data[i]
        scene = item["scene"]
        batch = SceneBatch.from_dataset(collate([item]), device)
        per_scene[scene] = {"context": item["context_indices"].tolist(), "targets": item["target_indices"].tolist()}
        grid_rows = [batch.target_images[0]]
        for mode in cfg.modes:
            res = evaluate_scene(model, batch, mode, cfg.baseline, lpips_fn, tto)
            per_scene[scene][mode] = scene_scores = dict(res["scores"])
            for method, scores in res["scores"].items():
                if method in GEOMETRY_KEYS:
                    continue
                totals[mode].setdefault(method, MethodResult()).add(scores)
                grid_rows.append(res["renders"][method])
            if "depth" in scene_scores:
                depth[mode].append(scene_scores["depth"])
            if "pose" in scene_scores:  # metrics.json keeps the scene's summary, the pairs are pooled
                errors = scene_scores["pose"]
                pose[mode][0].extend(errors["rotation"])
                pose[mode][1].extend(errors["translation"])
                scene_pose = pose_scores(errors["rotation"], errors["translation"]).to_dict()
                scene_scores["pose"] = {k: finite_or_none(v) for k, v in scene_pose.items()}
        grid = torch.cat([torch.cat(list(r), dim=-1) for r in grid_rows], dim=-2)
        write_png(cfg.output / "grids" / f"{scene}.png", to_uint8(grid, channels_first=True))
        line = "  ".join(
            f"{mode}/{method} {s['psnr']:.2f} dB"
            for mode in cfg.modes
            for method, s in per_scene[scene][mode].items()
            if method not in GEOMETRY_KEYS
        )
        console.print(f"{scene}: {line}", highlight=False)
    geometry = {mode: geometry_summary(depth[mode], *pose[mode]) for mode in cfg.modes}
    summary = {
        "model": cfg.model,
        "scenes": len(paths),
        "size": [cfg.height, cfg.width],
        "context_views": cfg.context_views,
        "pose_solver": model.config.pose_solver,
        "pose_free_tto": {"steps": steps, "lr": lr, "scale": scale, "init": cfg.pose_free_tto_init} if steps else None,
        "lpips": lpips_fn is not None,
        "results": {mode: {name: r.summary() for name, r in res.items()} for mode, res in totals.items()},
        "geometry": geometry,
        "depth": geometry[cfg.modes[0]]["depth"],  # the first mode's, as before "geometry" existed
        "per_scene": per_scene,
    }
    write_json(cfg.output / "metrics.json", summary)
    for mode, res in summary["results"].items():
        for name, s in res.items():
            t = s.get("tto")  # how far the refinement moved the targets (units: the context cameras' spread)
            moved = (
                f", TTO {t['steps']:.0f} steps moved {t['rotation_deg']:.2f} deg / {t['translation']:.3f}" if t else ""
            )
            console.print(
                f"{mode:9s} {name:19s} PSNR {s['psnr']:.2f} dB  SSIM {s['ssim']:.3f}  "
                f"{s['gaussians']:.0f} Gaussians  {s['seconds_per_scene']:.2f} s/scene{moved}",
                highlight=False,
            )
    for mode, geo in geometry.items():
        if geo["depth"]:
            d = {k: _fmt(v, ".3f") for k, v in geo["depth"].items()}
            console.print(
                f"{mode} depth AbsRel {d['abs_rel']} delta<1.25 {d['delta1']} (constant {d['abs_rel_constant']})",
                highlight=False,
            )
        if geo["pose"]:
            p = geo["pose"]
            auc = "/".join(_fmt(p[k], ".2f") for k in ("auc3", "auc5", "auc15"))
            console.print(
                f"{mode} cameras: rotation {_fmt(p['rotation_median'], '.1f')} deg, translation "
                f"{_fmt(p['translation_median'], '.1f')} deg (median over {p['pairs']} pairs), "
                f"AUC@3/5/15 {auc}",
                highlight=False,
            )
    return summary


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)
