"""Periodic held-out validation during training: posed NVS and depth, and pose-free depth and cameras."""

from __future__ import annotations

import numpy as np

from da3_splat.data.dl3dv import scene_list
from da3_splat.train.config import TrainConfig


def validation_set(cfg: TrainConfig):
    """The first ``val_scenes`` held-out scenes with their fixed evaluation views (each scene's
    eval_index.json, 4 context views), or None when the config names none."""
    if not cfg.data.val or cfg.data.val_scenes <= 0:
        return None
    from da3_splat.data.dataset import NVSDataset

    scenes = scene_list(cfg.data.val)[: cfg.data.val_scenes]
    size = (cfg.data.height, cfg.data.width)
    lo, hi = cfg.data.context_views
    return NVSDataset.for_evaluation(scenes, size=size, num_context=min(max(4, lo), hi), downscale=cfg.data.downscale)


def validate(model, data, device) -> dict:
    """Held-out scores: posed PSNR/SSIM of the NVS head when the model has one and depth AbsRel; pose-free (when
    the model predicts cameras) depth AbsRel and the median pairwise rotation / translation-direction errors."""
    from da3_splat.data.dataset import collate
    from da3_splat.eval_protocol import evaluate_scene
    from da3_splat.geometry_metrics import pose_scores
    from da3_splat.nvs import SceneBatch

    model.eval()
    sums: dict[str, list[float]] = {}
    rot, trans = [], []
    modes = ("posed", "pose-free") if model.has_cameras else ("posed",)
    for i in range(len(data)):
        batch = SceneBatch.from_dataset(collate([data[i]]), device)
        for mode in modes:
            scores = evaluate_scene(model, batch, mode, baseline=False)["scores"]
            suffix = "" if mode == "posed" else "_pose_free"
            for key, value in (
                (f"val/psnr{suffix}", scores.get("nvs-head", {}).get("psnr")),
                (f"val/ssim{suffix}", scores.get("nvs-head", {}).get("ssim")),
                (f"val/depth_abs_rel{suffix}", scores.get("depth", {}).get("abs_rel")),
            ):
                if value is not None:
                    sums.setdefault(key, []).append(value)
            if "pose" in scores:
                rot += scores["pose"]["rotation"]
                trans += scores["pose"]["translation"]
    result = {k: float(np.mean(v)) for k, v in sums.items()}
    if rot:
        pose = pose_scores(rot, trans)
        result.update(
            {
                "val/rotation_median": pose.rotation_median,
                "val/translation_median": pose.translation_median,
                "val/pose_auc15": pose.auc15,
            }
        )
    return result
