"""Images in, numpy predictions out: DA3's official pre-processing, pose normalisation, precision policy and
alignment of the predictions back to the caller's camera frame."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from da3_splat.errors import InputError
from da3_splat.gaussians import Gaussians
from da3_splat.geometry import (
    as_homogeneous,
    camera_centers,
    normalization_sim3,
    normalize_extrinsics,
    umeyama,
    umeyama_ransac,
)
from da3_splat.model.preprocess import preprocess

MIN_VIEWS_FOR_UMEYAMA = 3  # fewer camera centres cannot fix a similarity transform
MIN_VIEWS_FOR_RANSAC = 10  # from here on the fit ignores outlier cameras, as the official API does


@dataclass
class Prediction:
    """Per-view outputs for S views at the processed resolution (H, W)."""

    depth: np.ndarray  # (S, H, W) planar z-depth
    depth_conf: np.ndarray  # (S, H, W), >= 1 (higher is more confident)
    processed_images: np.ndarray  # (S, H, W, 3) uint8, the images the network saw
    extrinsics: np.ndarray | None = None  # (S, 3, 4) world-to-camera, OpenCV axes
    intrinsics: np.ndarray | None = None  # (S, 3, 3) pixels of the processed images
    ray: np.ndarray | None = None  # (S, 8H/14, 8W/14, 6) [direction, camera centre], when requested
    ray_conf: np.ndarray | None = None
    sky: np.ndarray | None = None  # (S, H, W) metric/mono models
    gaussians: Gaussians | None = None  # unbatched, on CPU
    is_metric: bool = False
    scale_factor: float | None = None  # nested: prediction units -> metres
    extra: dict = field(default_factory=dict)

    @property
    def num_views(self) -> int:
        return self.depth.shape[0]


def autocast_for(device: torch.device):
    """The backbone runs in bf16 (or fp16 without bf16 support) on CUDA; on CPU fp32, where fp16 autocast is
    about 2x slower. Heads and pose solvers force fp32 inside the model regardless."""
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast(device.type, enabled=False)


def _sim3_to_input(pred_w2c: torch.Tensor, w2c_in: torch.Tensor):
    """Similarity (R, t, s) from the predicted world frame to the caller's: Umeyama on the camera centres when
    there are enough views, else the exact inverse of the pose normalisation the model was conditioned on.

    As DA3's API, the fit runs from the caller's centres to the predicted ones and is then inverted (a
    least-squares scale is not symmetric in its two point sets, so the direction changes the depth scale)."""
    views = pred_w2c.shape[1]
    if views >= MIN_VIEWS_FOR_UMEYAMA:
        fit = umeyama_ransac if views >= MIN_VIEWS_FOR_RANSAC else umeyama
        R, t, s = fit(camera_centers(w2c_in[0].double()), camera_centers(pred_w2c[0].double()))
        if torch.isfinite(s) and s > 0:
            return R.T.float(), (-(R.T @ t) / s).float(), (1 / s).float()
    return normalization_sim3(w2c_in)


@torch.inference_mode()
def infer(
    model,
    images,
    extrinsics=None,
    intrinsics=None,
    process_res: int | None = None,
    process_res_method: str = "upper_bound_resize",
    ref_view_strategy: str | None = None,
    use_ray_pose: bool = False,
    infer_gs: bool = False,
    return_rays: bool = False,
    device: str | torch.device | None = None,
    gs_given_cameras: bool = False,
) -> Prediction:
    """Run DA3 on a list of images (paths, HxWx3 uint8 arrays or PIL images).

    extrinsics (S, 3|4, 4) world-to-camera OpenCV and intrinsics (S, 3, 3) in pixels of the original images
    condition the model on known cameras; the returned depth and cameras are then in the caller's frame and
    units (extrinsics are the given ones). ``gs_given_cameras`` (with known cameras): place the GS head's
    Gaussians with the given cameras, as posed NVS training does, and map depth and Gaussians back with the
    exact inverse of the pose normalisation instead of aligning the predicted cameras. Models with
    ``config.posed_depth_calibration`` always do so, their depth rescaled to the given cameras.
    ``process_res`` (longest side after resizing) defaults to the model's ``config.process_res``.
    """
    if extrinsics is not None and intrinsics is None:
        raise InputError("known poses need intrinsics too (pass intrinsics together with extrinsics)")
    if extrinsics is not None and not model.has_cameras:
        raise InputError(f"{model.config.model_name} predicts no cameras and takes no poses")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    process_res = model.process_res_for(process_res)
    pre = preprocess(images, process_res, process_res_method, intrinsics=intrinsics, extrinsics=extrinsics)
    x = pre.images[None].to(device)
    w2c_in = K_in = w2c_norm = None
    if extrinsics is not None:
        w2c_in = as_homogeneous(torch.from_numpy(pre.extrinsics).float()[None]).to(device)
        K_in = torch.from_numpy(pre.intrinsics).float()[None].to(device)
        w2c_norm = normalize_extrinsics(w2c_in)
    given = (gs_given_cameras or bool(model.config.depth_calibration_steps)) and w2c_norm is not None
    with autocast_for(device):
        out = model(
            x,
            w2c_norm,
            K_in,
            ref_view_strategy=ref_view_strategy,
            use_ray_pose=use_ray_pose,
            infer_gs=infer_gs,
            return_rays=return_rays,
            gs_cameras=(w2c_norm, K_in) if given else None,
        )

    depth = out["depth"].float()
    extr, intr, g = out.get("extrinsics"), out.get("intrinsics"), out.get("gaussians")
    if w2c_in is not None:  # report everything in the caller's frame and units
        R, t, scale = normalization_sim3(w2c_in) if given else _sim3_to_input(extr, w2c_in)
        depth = depth * scale
        extr, intr = w2c_in[..., :3, :], K_in
        if g is not None:
            g = g.transformed(R, t, scale)

    def np_(t):
        return None if t is None else t[0].float().cpu().numpy()

    return Prediction(
        depth=np_(depth),
        depth_conf=np_(out["depth_conf"]) if "depth_conf" in out else np.ones_like(np_(depth)),
        processed_images=pre.images_uint8,
        extrinsics=np_(extr),
        intrinsics=np_(intr),
        ray=np_(out.get("ray")),
        ray_conf=np_(out.get("ray_conf")),
        sky=np_(out.get("sky")),
        gaussians=None
        if g is None
        else Gaussians(*(t[0].float().cpu() for t in (g.means, g.quats, g.scales, g.opacities, g.sh))),
        is_metric=model.config.is_nested,
        scale_factor=float(out["scale_factor"]) if "scale_factor" in out else None,
    )
