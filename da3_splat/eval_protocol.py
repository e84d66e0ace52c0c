"""Evaluation protocol: feed-forward novel-view synthesis on held-out scenes, scored one scene at a time
(``da3-splat eval`` and the training validation).

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
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used, so that `da3-splat --help` stays fast
    pass


def mean_or_none(values: list) -> float | None:
    return sum(values) / len(values) if values else None


GEOMETRY_KEYS = ("depth", "pose")  # entries of a scene's scores that are not an NVS method


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
        return {
            "psnr": mean_or_none(self.psnr),
            "ssim": mean_or_none(self.ssim),
            "lpips": mean_or_none(self.lpips),
            "gaussians": mean_or_none(self.gaussians),
            "seconds_per_scene": mean_or_none(self.seconds),
            "scenes": len(self.psnr),
        }


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
    from da3_splat.gaussians import Gaussians
    from da3_splat.geometry import apply_sim3_to_w2c
    from da3_splat.geometry_metrics import depth_scores, finite_or_none, relative_pose_errors
    from da3_splat.image_metrics import psnr, ssim
    from da3_splat.nvs import first_camera_alignment, predict, render_views

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
            g = Gaussians.stack(
                [
                    headfree_gaussians(
                        depth[b], batch.context_images[b].permute(0, 2, 3, 1), w2c[b], K[b], out["depth_conf"][b]
                    )
                    for b in range(depth.shape[0])
                ]
            )
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


def geometry_summary(depth: list[dict], rot: list[float], trans: list[float]) -> dict:
    """One mode's geometry over all scenes: the mean of the per-scene depth scores (scenes without a value are
    left out; None when no scene had GT depth) and the pose scores of all scenes' pairs pooled (None when the
    mode predicts no cameras)."""
    from da3_splat.geometry_metrics import finite_or_none, pose_scores

    keys = ("abs_rel", "delta1", "abs_rel_constant")
    mean_depth = {k: mean_or_none([d[k] for d in depth if d.get(k) is not None]) for k in keys} if depth else None
    pose = {k: finite_or_none(v) for k, v in pose_scores(rot, trans).to_dict().items()} if rot else None
    return {"depth": mean_depth, "pose": pose}
