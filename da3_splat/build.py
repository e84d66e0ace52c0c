"""Gaussians from a DA3 prediction: the GS head's when the checkpoint has one, else head-free from depth.

Head-free: one Gaussian per pixel, at the unprojected pixel centre, coloured by the pixel, isotropic with the
pixel's footprint at its depth, opacity from depth confidence (:func:`headfree_gaussians`).
:func:`gaussians_from_prediction` picks the source and reduces the result to a budget with ``da3_splat.reduce``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from da3_splat.errors import InputError
from da3_splat.export import DEFAULT_CONF_PERCENTILE
from da3_splat.gaussians import Gaussians
from da3_splat.geometry import as_homogeneous, depth_to_world_points
from da3_splat.reduce import border_mask, reduce_to_budget
from da3_splat.sh import RGB2SH, num_sh_bases

if TYPE_CHECKING:
    from da3_splat.model.inference import Prediction

# Pixel (i, j) of a DA3 depth map is the image point (j + 0.5, i + 0.5): DA3's intrinsics put the principal
# point at (W/2, H/2), the image centre in that convention, and gsplat / our renderer sample pixel centres there.
PIXEL_OFFSET = 0.5

# Splat standard deviation in units of the pixel footprint (depth / focal). Measured on exact synthetic depth
# (3 scenes of `da3_splat.data.synthetic`, 96x128, 9-frame paths; frames 0, 4, 8 as inputs), mean PSNR of
# [each input view from its own Gaussians | held-out frames 2, 6 from all the inputs' Gaussians]:
#   0.01: 36.3 | 20.7   0.2: 35.1 | 21.3   0.3: 33.6 | 21.8   0.45: 30.9 | 22.2   0.6: 28.7 | 22.2   1.0: 25.1 | 21.7
# The rasteriser's own 0.3 px^2 blur already closes the gaps at the input view, so larger splats only blur it;
# away from it, small splats leave holes between neighbours. 0.45 reaches the held-out plateau (0.45-0.6) at the
# smallest input-view cost (2D std ~0.74 px with the blur); a splat is for viewing from elsewhere.
HEADFREE_SCALE = 0.45

# Opacity of a fully trusted head-free splat; below 1 so the PLY's logit is finite. Same measurement at scale
# 0.45: 0.5: 24.6 | 21.0   0.8: 31.2 | 22.1   0.95: 30.9 | 22.2   0.99: 30.7 | 22.2 -- flat from 0.8 up (neighbours
# overlap, so accumulated alpha still reaches ~1), much lower lets the background bleed through.
HEADFREE_OPACITY = 0.95

# Confidence at this percentile (over all views) and above gives full opacity; see `confidence_to_opacity`.
OPACITY_REF_PERCENTILE = 50.0


def confidence_to_opacity(
    conf: Tensor, max_opacity: float = HEADFREE_OPACITY, ref_percentile: float = OPACITY_REF_PERCENTILE
) -> Tensor:
    """DA3 depth confidence (>= 1) -> opacity in [0, max_opacity], monotone non-decreasing:
    ``max_opacity * clamp((conf - 1) / (ref - 1), 0, 1)`` with ``ref`` the ``ref_percentile``-th percentile.

    Why relative: DA3's confidence (1 + exp(logit), trained as an inverse error scale) has no fixed range across
    scenes or checkpoints, so an absolute map such as 1 - 1/conf would leave whole scenes semi-transparent
    (conf 2 -> 0.5) and render their input views badly (opacity 0.5 costs ~6 dB above). Relative to the median,
    the confident half of the pixels is fully opaque (best for the input views), and a pixel whose excess
    confidence is k times below the median (error k times larger: depth edges, flying pixels) gets 1/k of it."""
    conf = conf.to(torch.float32) if not conf.is_floating_point() else conf
    excess = (conf - 1).clamp(min=0)
    finite = excess[torch.isfinite(excess)]
    if finite.numel() == 0:
        return torch.full_like(conf, max_opacity)
    k = int(ref_percentile / 100 * (finite.numel() - 1))  # lower value at the percentile (no size limit)
    ref = torch.kthvalue(finite.flatten(), k + 1).values
    if not ref > 0:  # every confidence at its floor of 1: nothing to tell apart
        return torch.full_like(conf, max_opacity)
    return max_opacity * torch.nan_to_num(excess / ref, nan=0.0).clamp(max=1.0)


def _colors(images: Tensor) -> Tensor:
    """uint8 (0..255) or float (0..1) images -> float colours in [0, 1]."""
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    return images.float().clamp(0, 1)


def headfree_gaussians(
    depth: Tensor,
    images: Tensor,
    w2c: Tensor,
    K: Tensor,
    conf: Tensor | None = None,
    scale_factor: float = HEADFREE_SCALE,
    sh_degree: int = 0,
    opacity: float = HEADFREE_OPACITY,
) -> Gaussians:
    """One Gaussian per pixel of planar ``depth`` (S, H, W), in (view, row, col) order.

    images (S, H, W, 3) uint8 or float in [0, 1]; w2c (S, 3|4, 4) OpenCV world-to-camera; K (S, 3, 3) in pixels
    of the depth maps; conf (S, H, W) DA3 confidence (>= 1) or None (every splat at ``opacity``).
    Mean: camera centre + depth * ray (camera z = 1) through the pixel centre. Colour: SH DC of the pixel, higher
    bands zero. Scale: isotropic ``scale_factor * depth / focal`` (focal = mean of fx, fy). Rotation: identity.
    Opacity: :func:`confidence_to_opacity`. Differentiable in ``depth``; dtype and device follow ``depth``.
    """
    if depth.dim() != 3:
        raise ValueError(f"depth must be (S, H, W), got {tuple(depth.shape)}")
    S, H, W = depth.shape
    if images.shape != (S, H, W, 3):
        raise ValueError(f"images must be {(S, H, W, 3)} like the depth, got {tuple(images.shape)}")
    dev, dt = depth.device, depth.dtype
    K = K.to(dev, dt)
    w2c = as_homogeneous(w2c.to(dev, dt))
    means = depth_to_world_points(depth, K, w2c, offset=PIXEL_OFFSET).reshape(-1, 3)
    focal = 0.5 * (K[:, 0, 0] + K[:, 1, 1])  # (S,)
    sigma = (scale_factor * depth / focal[:, None, None]).reshape(-1, 1).expand(-1, 3)
    n = S * H * W
    quats = torch.zeros(n, 4, device=dev, dtype=dt)
    quats[:, 0] = 1.0
    if conf is None:
        opac = torch.full((n,), opacity, device=dev, dtype=dt)
    else:
        opac = confidence_to_opacity(conf.to(dev, dt), max_opacity=opacity).reshape(-1)
    sh = torch.zeros(n, num_sh_bases(sh_degree), 3, device=dev, dtype=dt)
    sh[:, 0] = RGB2SH(_colors(images).to(dev, dt).reshape(-1, 3))
    return Gaussians(means=means, quats=quats, scales=sigma, opacities=opac, sh=sh)


_MAX_OPACITY = 1.0 - 2**-20


def _valid_depth_mask(depth: Tensor) -> Tensor:
    return (torch.isfinite(depth) & (depth > 0)).reshape(-1)


def gaussians_from_prediction(
    pred: Prediction,
    max_gaussians: int | None,
    conf_percentile: float | None = DEFAULT_CONF_PERCENTILE,
    prefer_head: bool = True,
    device: str | torch.device = "cpu",
    trim_border: bool = True,
) -> tuple[Gaussians, str]:
    """Unbatched Gaussians for ``pred`` and their source, ``"gs-head"`` or ``"head-free"``.

    The GS head's Gaussians are used when present and ``prefer_head``; otherwise head-free ones are built from
    depth (needs the predicted cameras). Both are pixel-aligned, so the same reduction applies: invalid depth
    and (``trim_border``) the image borders out, then ``reduce_to_budget`` (confidence percentile, opacity
    prune, voxel merge to ``max_gaussians``; None: no merge).
    """
    if max_gaussians is not None and max_gaussians < 1:
        raise InputError(f"the Gaussian budget must be at least 1, got {max_gaussians}")
    S, H, W = pred.depth.shape
    depth = torch.from_numpy(np.ascontiguousarray(pred.depth, dtype=np.float32)).to(device)
    conf = torch.from_numpy(np.ascontiguousarray(pred.depth_conf, dtype=np.float32)).to(device)
    if prefer_head and pred.gaussians is not None:
        g, source = pred.gaussians.to(device), "gs-head"
        if g.num_gaussians != S * H * W:
            raise ValueError(f"GS head gave {g.num_gaussians} Gaussians for {S}x{H}x{W} pixels")
        # A saturated sigmoid gives exactly 1 in float32, which has no finite logit for the PLY.
        g.opacities = g.opacities.clamp(max=_MAX_OPACITY)
    else:
        if pred.extrinsics is None or pred.intrinsics is None:
            raise InputError(
                "this model predicts no cameras, so its depth cannot be placed in 3D; use an any-view model"
            )
        images = torch.from_numpy(np.ascontiguousarray(pred.processed_images)).to(device)
        w2c = torch.from_numpy(np.asarray(pred.extrinsics, np.float32)).to(device)
        K = torch.from_numpy(np.asarray(pred.intrinsics, np.float32)).to(device)
        g, source = headfree_gaussians(torch.nan_to_num(depth, nan=0.0), images, w2c, K, conf), "head-free"
    keep = _valid_depth_mask(depth) & torch.isfinite(g.means).all(-1)
    if trim_border:
        keep &= border_mask(S, H, W, device=device)
    g, conf = g[keep], conf.reshape(-1)[keep]
    budget = g.num_gaussians if max_gaussians is None else max_gaussians
    if g.num_gaussians == 0:
        return g, source
    return reduce_to_budget(g, conf, max_gaussians=budget, conf_percentile=conf_percentile), source
