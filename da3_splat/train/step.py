"""One training step's loss: the NVS pass on a batch, the photometric and depth terms of the Gaussians, and the
DA3 geometry losses, as the run's mode asks."""

from __future__ import annotations

import dataclasses

import torch

from da3_splat.train.config import TrainConfig


def compute_loss(
    model, batch, cfg: TrainConfig, posed: bool, lpips_fn=None, reference: int | None = None
) -> tuple[torch.Tensor, dict, torch.Tensor | None]:
    """Loss of one (per-process) batch -> (loss, scalar parts, the target renders or None). ``reference``: with
    ``cfg.reference_view == "random"``, the context view that is the pose-free prediction's world frame."""
    from da3_splat.nvs import gaussian_depth_in_context, predict, reference_first, render_views, rescaled
    from da3_splat.train import losses

    geometry = cfg.train in ("geometry", "geometry+nvs", "all") or cfg.train == "nvs+heads" and cfg.loss.geometry > 0
    geometry = geometry and batch.context_depth is not None and cfg.loss.geometry > 0
    nvs = cfg.train != "geometry"
    # Frozen geometry: the model's own rule (None); geometry that learns: the configured one.
    strategy = None if cfg.train in ("nvs", "nvs+heads") else cfg.reference_view
    if not posed and strategy == "random":
        batch, strategy = reference_first(batch, reference or 0), "first"
    if geometry and posed and not nvs:
        # Condition on the cameras in the frame the geometry losses score in (first camera, unit mean point distance),
        # so the depth the model is asked for has the scale of the cameras it is given, whatever the baseline.
        batch = rescaled(batch, losses.normalize_scene(batch.context_w2c, batch.context_depth, batch.context_K).scale)
    matching = geometry and cfg.loss.matching > 0
    out = predict(
        model, batch, posed=posed, geometry=geometry, nvs=nvs, ref_view_strategy=strategy, keep_features=matching
    )
    total = torch.zeros((), device=batch.context_images.device)
    parts: dict[str, float] = {}
    render = None
    if nvs:
        H, W = batch.target_images.shape[-2:]
        rgb, _ = render_views(out.gaussians, batch.target_w2c, batch.target_K, H, W)
        render = rgb
        photo, p = losses.photometric_loss(rgb.flatten(0, 1), batch.target_images.flatten(0, 1), cfg.loss.ssim)
        total = total + photo
        parts.update({f"nvs/{k}": float(v) for k, v in p.items()})
        if lpips_fn is not None and cfg.loss.lpips > 0:
            lp = lpips_fn(rgb.flatten(0, 1), batch.target_images.flatten(0, 1)).mean()
            total = total + cfg.loss.lpips * lp
            parts["nvs/lpips"] = float(lp.detach())
        # The Gaussians' depth in their own views against the frozen geometry's depth and/or the GT depth.
        refs = [("depth", cfg.loss.depth, out.depth.detach()), ("gt_depth", cfg.loss.gt_depth, batch.context_depth)]
        refs = [(name, weight, ref) for name, weight, ref in refs if weight > 0 and ref is not None]
        if refs:
            S, H, W = batch.context_images.shape[1], *batch.context_images.shape[-2:]
            z = gaussian_depth_in_context(out.gaussians, batch.context_w2c, (S, H, W))
        for name, weight, ref in refs:
            d = losses.depth_consistency_loss(z, ref)
            total = total + weight * d
            parts[f"nvs/{name}"] = float(d.detach())
    if geometry:
        # GT in the model's reference camera and at unit mean point distance, so no sample's loss depends on how far
        # apart its cameras happen to be.
        gt = {"depth": batch.context_depth, "extrinsics": batch.context_w2c, "intrinsics": batch.context_K}
        # Posed with Gaussians: the GT stays in the frame of the cameras the Gaussians are placed with.
        weights = losses.GeometryLossWeights(**dataclasses.asdict(cfg.loss.terms))
        g, p = losses.geometry_losses(out, gt, weights, normalize=not (posed and nvs))
        total = total + cfg.loss.geometry * g
        parts.update({f"geometry/{k}": float(v) for k, v in p.items()})
    if matching:
        from da3_splat.train.matching import matching_loss

        m, accuracy = matching_loss(out.features[0], batch.context_depth, batch.context_w2c, batch.context_K)
        total = total + cfg.loss.matching * m
        parts.update({"matching/loss": float(m.detach()), "matching/accuracy": float(accuracy)})
    parts["loss"] = float(total.detach())
    return total, parts, render
