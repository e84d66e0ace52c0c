"""The NVS side of DA3, kept out of the network modules: posed depth calibration and the GS head's Gaussians
(with the plane sweep of da3-splat's NVS heads). ``DA3.forward(infer_gs=..., gs_cameras=...)`` dispatches here
after the backbone and heads, so that one forward call (what a DDP wrapper sees) still covers the whole pass."""

from __future__ import annotations

import torch
from torch import Tensor

from da3_splat.gaussians import Gaussians
from da3_splat.model.output import DA3Output


def _fp32(device_type: str):
    """The GS head and calibration run in fp32, even inside an autocast region (as the other heads do)."""
    return torch.autocast(device_type=device_type, enabled=False)


def calibrate_depth(config, out: DA3Output, x: Tensor, w2c: Tensor, K: Tensor) -> None:
    """Scale depth (and the predicted cameras' translations and ray origins with it) to the given cameras, per
    sample, by the steps of ``config.posed_depth_calibration``; in place, the factor in ``out.depth_scale``."""
    from da3_splat.geometry import baseline_scale
    from da3_splat.model.preprocess import denormalize
    from da3_splat.photometric import photometric_depth_scale

    with _fp32(x.device.type):
        scale = torch.ones(x.shape[0], device=x.device)
        for step in config.depth_calibration_steps:
            if step == "cameras":
                factor = torch.stack([baseline_scale(out.extrinsics[b].detach(), w2c[b]) for b in range(x.shape[0])])
            else:
                images = denormalize(x.float()).clamp(0, 1)
                depth = out.depth.detach().float() * scale[:, None, None, None]
                factor = torch.stack(
                    [photometric_depth_scale(depth[b], images[b], w2c[b], K[b]) for b in range(x.shape[0])]
                )
            scale = scale * factor.to(scale)
        scale = scale.to(out.depth)
        out.depth = out.depth * scale[:, None, None, None]
        if out.extrinsics is not None:
            ext = out.extrinsics.clone()
            ext[..., :3, 3] = ext[..., :3, 3] * scale[:, None, None]
            out.extrinsics = ext
        if out.ray is not None:
            out.ray = torch.cat([out.ray[..., :3], out.ray[..., 3:] * scale[:, None, None, None, None]], -1)
        out.depth_scale = scale


def predict_gaussians(
    model, out: DA3Output, x: Tensor, gt_extrinsics: Tensor | None = None, cameras: tuple[Tensor, Tensor] | None = None
) -> Gaussians:
    """The GS head's Gaussians for the pass ``out`` (run with ``keep_features``) of ``model`` on ``x``.

    By default the depth lives in the model's predicted camera frame, so the predicted cameras place the
    Gaussians even when GT cameras conditioned the pass (``gt_extrinsics`` then only fixes the scale, as in
    the official model). ``cameras`` (w2c, K): place them with these instead (known poses: the depth is
    predicted in the given cameras' frame). A plane-sweep head first sweeps around the depth and starts from
    the swept depth (``out.swept_depth``)."""
    from da3_splat.model.gs_adapter import raw_to_gaussians
    from da3_splat.model.preprocess import denormalize

    config = model.config
    H, W = x.shape[-2:]
    with _fp32(x.device.type):
        w2c, K = cameras if cameras is not None else (out.extrinsics, out.intrinsics)
        head_in, depth, rgb = x.float(), out.depth, denormalize(x.float())
        if config.gs_head.plane_sweep:
            from da3_splat.photometric import plane_sweep, plane_sweep_features

            sweeps = [
                plane_sweep(depth[b].detach().float(), rgb[b].clamp(0, 1), w2c[b], K[b]) for b in range(x.shape[0])
            ]
            log_factor = torch.stack([s["log_factor"] for s in sweeps]).to(depth)
            head_in = torch.cat([head_in, torch.stack([plane_sweep_features(s) for s in sweeps])], dim=2)
            depth = out.swept_depth = depth * log_factor.exp()
        gs = model.gs_head(out.features, H, W, images=head_in)
        colors = rgb.permute(0, 1, 3, 4, 2) if config.gs_head.rgb_shortcut else None
        return raw_to_gaussians(
            gs["raw"],
            gs["opacity"],
            depth,
            w2c,
            K,
            gt_extrinsics=None if cameras is not None else gt_extrinsics,
            sh_degree=config.gs_head.sh_degree,
            planar_depth=config.gs_head.planar_depth,
            scale_max=config.gs_head.scale_max,
            colors=colors,
            log_depth_offset=config.gs_head.log_depth_offset,
        )


def place_with_given_cameras(
    model, out: DA3Output, x: Tensor, w2c: Tensor, K: Tensor, gaussians: bool = True, calibrate: bool = True
) -> None:
    """Known poses: calibrate the depth to the cameras ``(w2c, K)`` (``config.posed_depth_calibration``, when
    ``calibrate``), then place the GS head's Gaussians with them (when ``gaussians`` and the model has the head;
    it reads ``out.features``). In place, on ``out``."""
    if calibrate and model.config.depth_calibration_steps:
        calibrate_depth(model.config, out, x, w2c, K)
    if gaussians and model.config.gs_head is not None:
        out.gaussians = predict_gaussians(model, out, x, cameras=(w2c, K))
