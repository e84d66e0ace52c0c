"""Evaluation protocol: feed-forward novel-view synthesis on held-out scenes, scored one scene at a time
(``da3-splat eval`` and the training validation).

For every scene a fixed set of context and target views (an index file, or each scene's own eval_index.json:
every 8th frame a target, farthest-point context views) goes through DA3; the NVS head's Gaussians and the
head-free baseline (one Gaussian per pixel from the model's own depth; for a plane-sweep head also from the swept
depth, so the head is compared with what the non-learned sweep gives; each with the confidence as opacity and,
"-opaque", with every splat opaque) are rendered at the targets and scored
with PSNR / SSIM (and LPIPS when its weights are on disk). Posed: the context cameras condition DA3 and place
the Gaussians. Pose-free: predicted cameras, aligned to the GT context cameras before rendering the targets;
optionally (``TTOSettings``) each method is also scored as NoPoSplat / AnySplat are, after test-time target-pose
optimisation (``da3_splat.pose_refine``: each target's camera refined on its own image, Gaussians frozen).

Geometry is scored too (``da3_splat.geometry_metrics``), in each mode: the context views' depth where the scenes
have GT depth (AbsRel and delta<1.25 after one median scale per scene, beside the constant-depth baseline), and
in pose-free mode the predicted context cameras (median pairwise relative rotation and translation-direction
errors, AUC@3/5/15 over the pairs of all scenes pooled).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # torch is imported where it is used, so that `da3-splat --help` stays fast
    from torch import Tensor

    from da3_splat.pose_refine import PoseRefineSettings


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
    tto: list[dict] = field(default_factory=list)  # per scene, for a method scored after target-pose refinement

    def add(self, scores: dict) -> None:
        self.psnr.append(scores["psnr"])
        self.ssim.append(scores["ssim"])
        if "lpips" in scores:
            self.lpips.append(scores["lpips"])
        self.gaussians.append(scores["gaussians"])
        self.seconds.append(scores["seconds"])
        if "tto" in scores:
            self.tto.append(scores["tto"])

    def summary(self) -> dict:
        return {
            "psnr": mean_or_none(self.psnr),
            "ssim": mean_or_none(self.ssim),
            "lpips": mean_or_none(self.lpips),
            "gaussians": mean_or_none(self.gaussians),
            "seconds_per_scene": mean_or_none(self.seconds),
            "scenes": len(self.psnr),
            **({"tto": tto_summary(self.tto)} if self.tto else {}),
        }


def tto_summary(infos: list[dict]) -> dict:
    """Means over scenes (steps, seconds) and over all their targets (losses, how far the poses moved)."""
    pooled = lambda key: mean_or_none([v for info in infos for v in info[key]])  # noqa: E731
    return {
        "steps": mean_or_none([info["steps"] for info in infos]),
        "seconds": mean_or_none([info["seconds"] for info in infos]),
        "depth_unit": mean_or_none([info["depth_unit"] for info in infos]),
        **{k: pooled(k) for k in ("loss_before", "loss_after", "rotation_deg", "translation")},
    }


def evaluate_scene(model, batch, mode: str, baseline: bool, lpips_fn=None, tto: TTOSettings | None = None) -> dict:
    """Scores of the model's NVS head (when it has one) and of the head-free baseline on one scene batch (B = 1).

    Beside the methods, the scores hold ``depth`` (DepthScores as a dict, NaN as None) when the batch has GT
    depth and, pose-free, ``pose``: the context views' pairwise errors in degrees ({"rotation": [...],
    "translation": [...]}, for pooling over scenes with ``geometry_metrics.pose_scores``). Pose-free with
    ``tto`` (steps > 0), every method also gets a ``<method>+tto`` row: its targets rendered at poses refined
    with the Gaussians frozen (:mod:`da3_splat.pose_refine`), its ``tto`` entry saying what the refinement did."""
    import torch

    from da3_splat.pose_refine import refine_target_poses

    with torch.inference_mode():
        res, methods, pred_w2c = _evaluate_scene(model, batch, mode, baseline, lpips_fn)
    if tto is not None and tto.refine.steps > 0 and mode != "posed":
        for name, g, secs in methods:
            if name.endswith("-opaque"):  # a diagnostic of the opacity map: not worth minutes of refinement
                continue
            start = batch.target_w2c
            if tto.init == "nearest-context":
                start = nearest_context_start(batch.target_w2c, batch.context_w2c, pred_w2c)
            t0 = time.perf_counter()
            w2c, info = refine_target_poses(g[0], start[0], batch.target_K[0], batch.target_images[0], tto.refine)
            with torch.inference_mode():
                scores, rgb = _score(g, w2c[None], batch, lpips_fn)
            scores["seconds"] = secs + time.perf_counter() - t0  # the refinement and the render
            scores["tto"] = {"init": tto.init, **info.to_dict()}
            res["scores"][f"{name}+tto"], res["renders"][f"{name}+tto"] = scores, rgb
    return res


@dataclass(frozen=True)
class TTOSettings:
    """Pose-free test-time target-pose optimisation: the refinement, and where it starts: ``gt`` the GT target
    pose in the aligned frame (what the protocol renders without it), ``nearest-context`` the aligned predicted
    pose of the context view whose GT camera centre is nearest the target's."""

    refine: PoseRefineSettings
    init: Literal["gt", "nearest-context"] = "gt"


def nearest_context_start(target_w2c: Tensor, context_gt_w2c: Tensor, context_pred_w2c: Tensor) -> Tensor:
    """(B, T, 4, 4): for each target, the predicted (aligned) pose of the context view nearest it in the GT."""
    import torch

    from da3_splat.geometry import camera_centers

    nearest = torch.cdist(camera_centers(target_w2c), camera_centers(context_gt_w2c)).argmin(-1)  # (B, T)
    return torch.stack([context_pred_w2c[b, nearest[b]] for b in range(len(nearest))])


def _score(g, w2c: Tensor, batch, lpips_fn) -> tuple[dict, Tensor]:
    """PSNR / SSIM (/ LPIPS) of Gaussians rendered at w2c (B, T, 4, 4) against the batch's targets."""
    from da3_splat.image_metrics import psnr, ssim
    from da3_splat.nvs import render_views

    t0 = time.perf_counter()
    H, W = batch.target_images.shape[-2:]
    rgb, _ = render_views(g, w2c, batch.target_K, H, W)
    rgb, tgt = rgb.flatten(0, 1).clamp(0, 1), batch.target_images.flatten(0, 1)
    scores = {"psnr": float(psnr(rgb, tgt).mean()), "ssim": float(ssim(rgb, tgt).mean())}
    if lpips_fn is not None:
        scores["lpips"] = float(lpips_fn(rgb, tgt).mean())
    scores["gaussians"] = int(g.num_gaussians)
    scores["seconds"] = time.perf_counter() - t0
    return scores, rgb


def _evaluate_scene(model, batch, mode: str, baseline: bool, lpips_fn) -> tuple[dict, list, Tensor | None]:
    """The scores, the methods as (name, Gaussians, seconds to make them) and, pose-free, the predicted context
    cameras in the GT frame."""
    import torch

    from da3_splat.build import headfree_gaussians
    from da3_splat.gaussians import Gaussians
    from da3_splat.geometry import apply_sim3_to_w2c
    from da3_splat.geometry_metrics import depth_scores, finite_or_none, relative_pose_errors
    from da3_splat.nvs import first_camera_alignment, predict

    posed = mode == "posed"
    result, renders = {}, {}
    t0 = time.perf_counter()
    out = predict(model, batch, posed=posed, nvs=model.has_gs_head)
    t_model = time.perf_counter() - t0
    methods = []
    if model.has_gs_head:
        methods.append(("nvs-head", out["gaussians"], t_model))
    t_align = time.perf_counter()
    w2c, K, pred_w2c = batch.context_w2c, batch.context_K, None
    if not posed and (baseline or "extrinsics" in out):  # the predicted context cameras in the GT frame
        R, t, s = first_camera_alignment(out["extrinsics"], batch.context_w2c)
        w2c = torch.stack([apply_sim3_to_w2c(out["extrinsics"][b], R[b], t[b], s[b]) for b in range(len(R))])
        K, pred_w2c = out["intrinsics"], w2c
    t_align = time.perf_counter() - t_align
    if baseline:
        # With a plane-sweep NVS head, also the head-free Gaussians at the swept depth: what the sweep alone gives.
        depths = [("head-free", out["depth"])]
        if "swept_depth" in out:
            depths.append(("head-free-swept", out["swept_depth"]))
        # Each also with every splat opaque ("-opaque"): the confidence-to-opacity map assumes a confidence that
        # ranks the depth's errors; a model whose confidence does not (the tiny synthetic one) gets holes from it.
        for name, depth in depths:
            depth = depth * (s[:, None, None, None] if not posed else 1.0)
            for suffix, conf in (("", out["depth_conf"]), ("-opaque", None)):
                t1 = time.perf_counter()
                g = Gaussians.stack(
                    [
                        headfree_gaussians(
                            depth[b],
                            batch.context_images[b].permute(0, 2, 3, 1),
                            w2c[b],
                            K[b],
                            None if conf is None else conf[b],
                        )
                        for b in range(depth.shape[0])
                    ]
                )
                methods.append((name + suffix, g, t_model + t_align + time.perf_counter() - t1))
    for name, g, secs in methods:
        scores, renders[name] = _score(g, batch.target_w2c, batch, lpips_fn)
        scores["seconds"] += secs
        result[name] = scores
    if batch.context_depth is not None:
        dscores = depth_scores(out["depth"], batch.context_depth).to_dict()
        result["depth"] = {k: finite_or_none(v) for k, v in dscores.items()}
    if not posed and "extrinsics" in out:
        rot, trans = relative_pose_errors(out["extrinsics"][0], batch.context_w2c[0])
        result["pose"] = {"rotation": rot.tolist(), "translation": trans.tolist()}
    return {"scores": result, "renders": renders}, methods, pred_w2c


def geometry_summary(depth: list[dict], rot: list[float], trans: list[float]) -> dict:
    """One mode's geometry over all scenes: the mean of the per-scene depth scores (scenes without a value are
    left out; None when no scene had GT depth) and the pose scores of all scenes' pairs pooled (None when the
    mode predicts no cameras)."""
    from da3_splat.geometry_metrics import finite_or_none, pose_scores

    keys = ("abs_rel", "delta1", "abs_rel_constant")
    mean_depth = {k: mean_or_none([d[k] for d in depth if d.get(k) is not None]) for k in keys} if depth else None
    pose = {k: finite_or_none(v) for k, v in pose_scores(rot, trans).to_dict().items()} if rot else None
    return {"depth": mean_depth, "pose": pose}
