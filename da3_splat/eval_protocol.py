"""Evaluation protocols: feed-forward novel-view synthesis on held-out scenes (``da3-splat eval``).

For every scene a fixed set of context and target views (an index file, or each scene's own eval_index.json:
every 8th frame a target, farthest-point context views) goes through DA3; the NVS head's Gaussians and the
head-free baseline (one Gaussian per pixel from the model's own depth; for a plane-sweep head also from the swept
depth, so the head is compared with what the non-learned sweep gives) are rendered at the targets and scored
with PSNR / SSIM (and LPIPS when its weights are on disk). Posed: the context cameras condition DA3 and place
the Gaussians. Pose-free: predicted cameras, aligned to the GT context cameras before rendering the targets.

Geometry is scored too (``da3_splat.geometry_metrics``), in each mode: the context views' depth where the scenes
have GT depth (AbsRel and delta<1.25 after one median scale per scene, beside the constant-depth baseline), and
in pose-free mode the predicted context cameras (median pairwise relative rotation and translation-direction
errors, AUC@3/5/15 over the pairs of all scenes pooled).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import tyro

from da3_splat import BUNDLED_MODEL
from da3_splat.errors import InputError

if TYPE_CHECKING:  # torch is imported where it is used, so that `da3-splat --help` stays fast
    import numpy as np
    from torch import Tensor


def to_uint8(image: Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] -> (H, W, 3) uint8."""
    import numpy as np

    return (image.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)


def _mean(values: list) -> float | None:
    return sum(values) / len(values) if values else None


GEOMETRY_KEYS = ("depth", "pose")  # entries of a scene's scores that are not an NVS method


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
    max_scenes: int | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    overwrite: bool = False


@dataclass
class MethodResult:
    psnr: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)
    lpips: list[float] = field(default_factory=list)
    gaussians: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def add(self, scores: dict) -> None:
        self.psnr.append(scores["psnr"])
        self.ssim.append(scores["ssim"])
        if "lpips" in scores:
            self.lpips.append(scores["lpips"])
        self.gaussians.append(scores["gaussians"])
        self.seconds.append(scores["seconds"])

    def summary(self) -> dict:
        return {"psnr": _mean(self.psnr), "ssim": _mean(self.ssim), "lpips": _mean(self.lpips),
                "gaussians": _mean(self.gaussians), "seconds_per_scene": _mean(self.seconds), "scenes": len(self.psnr)}  # fmt: skip


def evaluate_scene(model, batch, mode: str, baseline: bool, lpips_fn=None) -> dict:
    """Scores of the model's NVS head (when it has one) and of the head-free baseline on one scene batch (B = 1).

    Beside the methods, the scores hold ``depth`` (DepthScores as a dict, NaN as None) when the batch has GT
    depth and, pose-free, ``pose``: the context views' pairwise errors in degrees ({"rotation": [...],
    "translation": [...]}, for pooling over scenes with ``geometry_metrics.pose_scores``)."""
    import torch

    with torch.inference_mode():
        return _evaluate_scene(model, batch, mode, baseline, lpips_fn)


def _evaluate_scene(model, batch, mode: str, baseline: bool, lpips_fn) -> dict:
    import torch

    from da3_splat.build import headfree_gaussians
    from da3_splat.eval import psnr, ssim
    from da3_splat.gaussians import Gaussians
    from da3_splat.geometry import apply_sim3_to_w2c
    from da3_splat.geometry_metrics import depth_scores, finite_or_none, relative_pose_errors
    from da3_splat.train.nvs import first_camera_alignment, predict, render_views

    posed = mode == "posed"
    H, W = batch.target_images.shape[-2:]
    result, renders = {}, {}
    t0 = time.perf_counter()
    out = predict(model, batch, posed=posed, nvs=model.has_gs_head)
    t_model = time.perf_counter() - t0
    methods = []
    if model.has_gs_head:
        methods.append(("nvs-head", out["gaussians"], t_model))
    if baseline:
        t_align = time.perf_counter()
        if posed:
            w2c, K = batch.context_w2c, batch.context_K
        else:
            R, t, s = first_camera_alignment(out["extrinsics"], batch.context_w2c)
            w2c = torch.stack([apply_sim3_to_w2c(out["extrinsics"][b], R[b], t[b], s[b]) for b in range(len(R))])
            K = out["intrinsics"]
        t_align = time.perf_counter() - t_align
        # With a plane-sweep NVS head, also the head-free Gaussians at the swept depth: what the sweep alone gives.
        depths = [("head-free", out["depth"])]
        if "swept_depth" in out:
            depths.append(("head-free-swept", out["swept_depth"]))
        for name, depth in depths:
            t1 = time.perf_counter()
            depth = depth * (s[:, None, None, None] if not posed else 1.0)
            g = Gaussians.stack([
                headfree_gaussians(
                    depth[b], batch.context_images[b].permute(0, 2, 3, 1), w2c[b], K[b], out["depth_conf"][b]
                )
                for b in range(depth.shape[0])
            ])  # fmt: skip
            methods.append((name, g, t_model + t_align + time.perf_counter() - t1))
    for name, g, secs in methods:
        t2 = time.perf_counter()
        rgb, _ = render_views(g, batch.target_w2c, batch.target_K, H, W)
        rgb, tgt = rgb.flatten(0, 1).clamp(0, 1), batch.target_images.flatten(0, 1)
        scores = {"psnr": float(psnr(rgb, tgt).mean()), "ssim": float(ssim(rgb, tgt).mean())}
        if lpips_fn is not None:
            scores["lpips"] = float(lpips_fn(rgb, tgt).mean())
        scores["gaussians"] = int(g.num_gaussians)
        scores["seconds"] = secs + time.perf_counter() - t2
        result[name] = scores
        renders[name] = rgb
    if batch.context_depth is not None:
        dscores = depth_scores(out["depth"], batch.context_depth).to_dict()
        result["depth"] = {k: finite_or_none(v) for k, v in dscores.items()}
    if not posed and "extrinsics" in out:
        rot, trans = relative_pose_errors(out["extrinsics"][0], batch.context_w2c[0])
        result["pose"] = {"rotation": rot.tolist(), "translation": trans.tolist()}
    return {"scores": result, "renders": renders}


def run_eval(cfg: EvalConfig, console=None) -> dict:
    import torch
    from rich.console import Console

    from da3_splat.data.dataset import NVSDataset, collate
    from da3_splat.eval import load_lpips, lpips_status
    from da3_splat.export import write_json, write_png
    from da3_splat.geometry_metrics import finite_or_none, pose_scores
    from da3_splat.predict import check_output_dir, load_model, resolve_device
    from da3_splat.train.nvs import SceneBatch
    from da3_splat.data.dl3dv import scene_list

    console = console or Console(stderr=True)
    if cfg.height % 14 or cfg.width % 14:
        raise InputError(f"--height/--width must be multiples of 14, got {cfg.height}x{cfg.width}")
    paths = scene_list(cfg.scenes)[: cfg.max_scenes]
    check_output_dir(cfg.output, cfg.overwrite)
    device = resolve_device(cfg.device)
    model = load_model(cfg.model, device, console).eval()
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
            res = evaluate_scene(model, batch, mode, cfg.baseline, lpips_fn)
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
        write_png(cfg.output / "grids" / f"{scene}.png", to_uint8(grid))
        line = "  ".join(
            f"{mode}/{method} {s['psnr']:.2f} dB" for mode in cfg.modes for method, s in per_scene[scene][mode].items()
            if method not in GEOMETRY_KEYS
        )  # fmt: skip
        console.print(f"{scene}: {line}", highlight=False)
    geometry = {mode: _geometry_summary(depth[mode], *pose[mode]) for mode in cfg.modes}
    summary = {
        "model": cfg.model, "scenes": len(paths), "size": [cfg.height, cfg.width], "context_views": cfg.context_views,
        "lpips": lpips_fn is not None,
        "results": {mode: {name: r.summary() for name, r in res.items()} for mode, res in totals.items()},
        "geometry": geometry,
        "depth": geometry[cfg.modes[0]]["depth"],  # the first mode's, as before "geometry" existed
        "per_scene": per_scene,
    }  # fmt: skip
    write_json(cfg.output / "metrics.json", summary)
    for mode, res in summary["results"].items():
        for name, s in res.items():
            console.print(f"{mode:9s} {name:15s} PSNR {s['psnr']:.2f} dB  SSIM {s['ssim']:.3f}  "
                          f"{s['gaussians']:.0f} Gaussians  {s['seconds_per_scene']:.2f} s/scene", highlight=False)  # fmt: skip
    for mode, geo in geometry.items():
        if geo["depth"]:
            d = {k: _fmt(v, ".3f") for k, v in geo["depth"].items()}
            console.print(f"{mode} depth AbsRel {d['abs_rel']} delta<1.25 {d['delta1']} (constant "
                          f"{d['abs_rel_constant']})", highlight=False)  # fmt: skip
        if geo["pose"]:
            p = geo["pose"]
            auc = "/".join(_fmt(p[k], ".2f") for k in ("auc3", "auc5", "auc15"))
            console.print(f"{mode} cameras: rotation {_fmt(p['rotation_median'], '.1f')} deg, translation "
                          f"{_fmt(p['translation_median'], '.1f')} deg (median over {p['pairs']} pairs), "
                          f"AUC@3/5/15 {auc}", highlight=False)  # fmt: skip
    return summary


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _geometry_summary(depth: list[dict], rot: list[float], trans: list[float]) -> dict:
    """One mode's geometry over all scenes: the mean of the per-scene depth scores (scenes without a value are
    left out; None when no scene had GT depth) and the pose scores of all scenes' pairs pooled (None when the
    mode predicts no cameras)."""
    from da3_splat.geometry_metrics import finite_or_none, pose_scores

    keys = ("abs_rel", "delta1", "abs_rel_constant")
    mean_depth = {k: _mean([d[k] for d in depth if d.get(k) is not None]) for k in keys} if depth else None
    pose = {k: finite_or_none(v) for k, v in pose_scores(rot, trans).to_dict().items()} if rot else None
    return {"depth": mean_depth, "pose": pose}
