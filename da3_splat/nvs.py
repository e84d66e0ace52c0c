"""One feed-forward novel-view-synthesis pass, shared by training and evaluation.

Context views go through DA3; its NVS (GS) head turns them into Gaussians; the Gaussians are rendered at the
target cameras. Everything happens in the normalised frame of the context cameras (first camera at the
identity, median camera distance 1), the frame DA3 is conditioned in.

- posed: DA3 is conditioned on the context cameras and the Gaussians are placed with them.
- pose-free: DA3 predicts the cameras, the Gaussians are placed with the predicted ones, and then moved onto the
  ground-truth frame by the similarity that maps the first predicted camera onto the first GT camera, with the
  scale from the camera baselines (a fixed, detached alignment, so the loss does not pull the cameras).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from da3_splat.gaussians import Gaussians
from da3_splat.geometry import camera_centers, normalize_scene, rigid_inverse
from da3_splat.model.output import DA3Output
from da3_splat.model.preprocess import normalize_float
from da3_splat.rendering import render


@dataclass
class SceneBatch:
    """A batch of B samples in the normalised frame; images (B, S|T, 3, H, W) in [0, 1]."""

    context_images: Tensor
    context_w2c: Tensor  # (B, S, 4, 4)
    context_K: Tensor  # (B, S, 3, 3)
    target_images: Tensor
    target_w2c: Tensor  # (B, T, 4, 4)
    target_K: Tensor
    scale: Tensor  # (B,) metres per normalised unit
    context_depth: Tensor | None = None  # (B, S, H, W), normalised units
    target_depth: Tensor | None = None

    @staticmethod
    def from_dataset(sample: dict, device: torch.device | str = "cpu") -> SceneBatch:
        """From a collated ``NVSDataset`` batch (tensors with a leading batch dim)."""
        get = lambda k: sample[k].to(device) if k in sample and sample[k] is not None else None  # noqa: E731
        ctx, (tgt,), scale = normalize_scene(get("context_w2c").float(), get("target_w2c").float())
        cd, td = get("context_depth"), get("target_depth")
        s = scale[:, None, None, None]
        return SceneBatch(
            context_images=get("context_images").float(),
            context_w2c=ctx,
            context_K=get("context_K").float(),
            target_images=get("target_images").float(),
            target_w2c=tgt,
            target_K=get("target_K").float(),
            scale=scale,
            context_depth=None if cd is None else cd.float() / s,
            target_depth=None if td is None else td.float() / s,
        )


def first_camera_alignment(pred_w2c: Tensor, gt_w2c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Similarity x_gt = s R x_pred + t per batch element, (B,3,3), (B,3), (B,): the first predicted camera lands
    on the first GT camera, the scale is the ratio of median baselines to the first camera (1 for one view)."""
    pred_w2c, gt_w2c = pred_w2c.detach().float(), gt_w2c.detach().float()
    Rs, ts, ss = [], [], []
    for p, g in zip(pred_w2c, gt_w2c):
        cp, cg = camera_centers(p), camera_centers(g)
        bp, bg = (cp[1:] - cp[:1]).norm(dim=-1), (cg[1:] - cg[:1]).norm(dim=-1)
        s = (bg.median() / bp.median().clamp(min=1e-6)) if len(bp) else torch.ones((), device=p.device)
        s = torch.nan_to_num(s, nan=1.0).clamp(1e-3, 1e3)
        # world_gt = c2w_gt0 @ w2c_pred0 applied to world_pred, with the camera-frame part scaled by s.
        c2w_g0 = rigid_inverse(g[0])
        R = c2w_g0[:3, :3] @ p[0, :3, :3]
        t = c2w_g0[:3, :3] @ (s * p[0, :3, 3]) + c2w_g0[:3, 3]
        Rs.append(R)
        ts.append(t)
        ss.append(s)
    return torch.stack(Rs), torch.stack(ts), torch.stack(ss)


def reference_first(batch: SceneBatch, view: int) -> SceneBatch:
    """The batch with context view ``view`` moved to the front, the others in their order (as DA3 reorders views
    around its reference view): with ``ref_view_strategy="first"`` that view becomes the predicted world frame."""
    S = batch.context_images.shape[1]
    order = [view] + [i for i in range(S) if i != view]
    pick = lambda t: None if t is None else t[:, order]  # noqa: E731
    return replace(
        batch,
        context_images=pick(batch.context_images),
        context_w2c=pick(batch.context_w2c),
        context_K=pick(batch.context_K),
        context_depth=pick(batch.context_depth),
    )


def rescaled(batch: SceneBatch, factor: Tensor) -> SceneBatch:
    """The batch in units ``factor`` (B,) times smaller: translations and depths divided, first camera unchanged."""

    def w2c(t: Tensor) -> Tensor:
        return torch.cat([t[..., :3], t[..., 3:] / factor[:, None, None, None]], dim=-1)

    def depth(t: Tensor | None) -> Tensor | None:
        return None if t is None else t / factor[:, None, None, None]

    return replace(
        batch,
        context_w2c=w2c(batch.context_w2c),
        target_w2c=w2c(batch.target_w2c),
        scale=batch.scale * factor,
        context_depth=depth(batch.context_depth),
        target_depth=depth(batch.target_depth),
    )


def predict(
    model,
    batch: SceneBatch,
    posed: bool = True,
    geometry: bool = False,
    nvs: bool = True,
    ref_view_strategy: str | None = None,
    keep_features: bool = False,
) -> DA3Output:
    """Run DA3 on the context views. Returns the model's outputs plus, when ``nvs``, ``gaussians`` (batched, in
    the normalised GT frame). ``geometry`` also computes the ray branch (for the geometry losses).
    ``ref_view_strategy`` None: the model's own rule (``config.ref_view_strategy``). The model's posed
    depth calibration runs only for the Gaussians (``nvs``): without them the depth is the network's own, as the
    geometry losses and the depth metrics (median-aligned) want it."""
    x = normalize_float(batch.context_images)
    cams = (batch.context_w2c, batch.context_K) if posed else None
    out = model(
        x,
        cams[0] if posed else None,
        cams[1] if posed else None,
        ref_view_strategy=ref_view_strategy,
        infer_gs=nvs,
        return_rays=geometry,
        gs_cameras=cams if nvs else None,
        keep_features=keep_features,
    )
    if nvs and not posed:
        R, t, s = first_camera_alignment(out.extrinsics, batch.context_w2c)
        g = out.gaussians
        out.gaussians = Gaussians.stack([g[b].transformed(R[b], t[b], s[b]) for b in range(len(R))])
    return out


def render_views(
    gaussians: Gaussians, w2c: Tensor, K: Tensor, height: int, width: int, background: float = 0.0
) -> tuple[Tensor, Tensor]:
    """Render batched Gaussians at (B, T) cameras -> colours (B, T, 3, H, W), alpha (B, T, H, W)."""
    colors, alphas = [], []
    bg = torch.full((3,), background, device=w2c.device)
    for b in range(w2c.shape[0]):
        g = gaussians[b]
        out = render(g, w2c[b], K[b], width, height, sh_degree=g.sh_degree, background=bg, mode="RGB")
        colors.append(out.colors.permute(0, 3, 1, 2))
        alphas.append(out.alpha[..., 0])
    return torch.stack(colors), torch.stack(alphas)


def gaussian_depth_in_context(gaussians: Gaussians, context_w2c: Tensor, shape: tuple[int, int, int]) -> Tensor:
    """z of every pixel's Gaussian in the camera of the view it came from, (B, S, H, W) (order view, row, col)."""
    S, H, W = shape
    means = gaussians.means.unflatten(1, (S, H * W))  # (B, S, HW, 3)
    R, t = context_w2c[..., :3, :3], context_w2c[..., :3, 3]
    z = torch.einsum("bsj,bsnj->bsn", R[:, :, 2], means) + t[:, :, 2:3]
    return z.unflatten(-1, (H, W))
