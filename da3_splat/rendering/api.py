"""One entry point for rendering Gaussians: gsplat's CUDA rasteriser on CUDA tensors, the torch renderer otherwise."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from da3_splat.gaussians import Gaussians
from da3_splat.rendering import cpu

MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")


@dataclass
class RenderOutput:
    colors: Tensor | None  # (C, H, W, 3), background composited; None in "D" / "ED" modes
    depth: Tensor | None  # (C, H, W, 1): accumulated ("D" modes) or expected ("ED" modes) z-depth; None in "RGB"
    alpha: Tensor  # (C, H, W, 1) accumulated opacity
    info: dict = field(default_factory=dict)  # what gsplat's DefaultStrategy reads (width, height, n_cameras,
    # radii [C, N], gaussian_ids=None, means2d [C, N, 2] for .retain_grad()), plus depths, conics, opacities


def render(
    gaussians: Gaussians,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    sh_degree: int | None = None,
    background: Tensor | None = None,
    mode: str = "RGB+D",
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    rasterize_mode: str = "classic",
    absgrad: bool = False,
    return_info: bool = False,
) -> RenderOutput:
    """Render unbatched Gaussians (N) into C cameras; differentiable in every Gaussian parameter.

    viewmats: (C, 4, 4) world-to-camera, OpenCV axes; Ks: (C, 3, 3) pixel intrinsics; background: (3,) or (C, 3).
    sh_degree: SH degree to evaluate (None = all the coefficients `gaussians.sh` holds).
    mode: "RGB", "D", "ED", "RGB+D" or "RGB+ED", as gsplat 1.4.0: "D" is the alpha-weighted sum of z-depths,
    "ED" that sum divided by alpha. The backend is chosen by `gaussians.means.device`: CUDA -> gsplat
    (packed=False), anything else -> `da3_splat.rendering.cpu`. `info` is filled when `return_info`; with `absgrad`
    the backward pass also sets `info["means2d"].absgrad`, as gsplat.
    """
    viewmats, Ks = _check(gaussians, viewmats, Ks, width, height, sh_degree, mode, rasterize_mode)
    g = gaussians
    C, device = len(viewmats), g.means.device
    sh_degree = g.sh_degree if sh_degree is None else sh_degree
    bg = None
    if background is not None:
        bg = torch.as_tensor(background, dtype=g.means.dtype, device=device).expand(C, 3)
    args = dict(
        near_plane=near_plane,
        far_plane=far_plane,
        eps2d=eps2d,
        sh_degree=sh_degree,
        backgrounds=bg,
        render_mode=mode,
        absgrad=absgrad,
        rasterize_mode=rasterize_mode,
    )
    # gsplat's kernels are not exercised with N = 0; the torch renderer handles it on any device.
    if device.type == "cuda" and g.num_gaussians > 0:
        from gsplat import rasterization

        img, alpha, meta = rasterization(
            g.means, g.quats, g.scales, g.opacities, g.sh, viewmats, Ks, width, height, packed=False, **args
        )
    else:
        img, alpha, meta = cpu.rasterization(
            g.means, g.quats, g.scales, g.opacities, g.sh, viewmats, Ks, width, height, **args
        )
    keys = ("width", "height", "n_cameras", "radii", "gaussian_ids", "means2d", "depths", "conics", "opacities")
    info = {k: meta[k] for k in keys} if return_info else {}
    has_rgb, has_depth = mode.startswith("RGB"), mode != "RGB"
    return RenderOutput(
        colors=img[..., :3] if has_rgb else None,
        depth=img[..., -1:] if has_depth else None,
        alpha=alpha,
        info=info,
    )


def _check(g: Gaussians, viewmats, Ks, width, height, sh_degree, mode, rasterize_mode):
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if rasterize_mode not in ("classic", "antialiased"):
        raise ValueError(f"rasterize_mode must be 'classic' or 'antialiased', got {rasterize_mode!r}")
    if g.means.dim() != 2:
        raise ValueError(f"render takes unbatched Gaussians (N, 3); got means of shape {tuple(g.means.shape)}")
    N = g.means.shape[0]
    shapes = dict(means=(N, 3), quats=(N, 4), scales=(N, 3), opacities=(N,))
    for name, shape in shapes.items():
        got = tuple(getattr(g, name).shape)
        if got != shape:
            raise ValueError(f"gaussians.{name} must have shape {shape} (unbatched), got {got}")
    if g.sh.dim() != 3 or g.sh.shape[0] != N or g.sh.shape[2] != 3:
        raise ValueError(f"gaussians.sh must have shape ({N}, K, 3), got {tuple(g.sh.shape)}")
    if sh_degree is not None and not 0 <= sh_degree <= g.sh_degree:
        raise ValueError(f"sh_degree {sh_degree} needs (sh_degree + 1)^2 <= K = {g.sh.shape[1]} coefficients")
    viewmats, Ks = viewmats.to(g.means), Ks.to(g.means)
    C = viewmats.shape[0]
    if viewmats.shape != (C, 4, 4) or Ks.shape != (C, 3, 3):
        raise ValueError(f"viewmats must be (C, 4, 4) and Ks (C, 3, 3), got {tuple(viewmats.shape)}, {tuple(Ks.shape)}")
    if width <= 0 or height <= 0:
        raise ValueError(f"width and height must be positive, got {width}x{height}")
    # One reduction per field and a single host sync; only on failure look closer to name the field.
    tensors = dict(
        means=g.means, quats=g.quats, scales=g.scales, opacities=g.opacities, sh=g.sh, viewmats=viewmats, Ks=Ks
    )
    sums = torch.stack([t.detach().sum() for t in tensors.values()])
    if not bool(torch.isfinite(sums).all()):
        for name, t in tensors.items():
            if torch.isnan(t).any():
                raise ValueError(f"{name} contains NaN")
            if torch.isinf(t).any():
                raise ValueError(f"{name} contains Inf")
    return viewmats, Ks
