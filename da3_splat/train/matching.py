"""Cross-view matching loss on backbone patch features (a training-time auxiliary; the network is unchanged).

DA3's global attention gives patches of different views no relative position: a view learns where it sits
relative to another only by matching their content. Trained from scratch, the tiny model does not discover that
matching in a CPU budget, and its cameras collapse to "no motion". This term teaches it directly: from ground-truth
depth and cameras, the patch of view j that each patch centre of view i lands on (when it is visible there) is the
right answer of a softmax over view j's patches, scored by the cosine similarity of their features (InfoNCE, as in
MASt3R's matching head, here on the backbone's own features).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from da3_splat.geometry import as_homogeneous, depth_to_world_points
from da3_splat.model.match_pose import patch_grid

VISIBLE_TOLERANCE = 0.05  # relative depth difference under which a projected point counts as seen by the other view


def patch_correspondences(depth: Tensor, w2c: Tensor, K: Tensor, h: int, w: int, src: int, dst: int) -> Tensor:
    """For each patch centre of view ``src``, the index of the patch of view ``dst`` it projects into, or -1 where
    it leaves the image, lands behind the camera or is hidden there (GT depth disagrees by > 5%).

    depth (S, H, W) GT planar depth (0 or non-finite: unknown), w2c (S, 3|4, 4), K (S, 3, 3) in pixels of H x W.
    Returns (h * w,) long, row-major patches of an h x w grid."""
    H, W = depth.shape[-2:]
    w2c = as_homogeneous(w2c.double())
    K, depth = K.double(), torch.nan_to_num(depth.double(), nan=0.0, posinf=0.0, neginf=0.0)
    rows = ((torch.arange(h, device=depth.device) + 0.5) * (H / h)).long().clamp(max=H - 1)
    cols = ((torch.arange(w, device=depth.device) + 0.5) * (W / w)).long().clamp(max=W - 1)
    d = depth[src][rows[:, None], cols[None, :]]  # (h, w): depth at the patch-centre pixels
    K_src = K[src].clone()
    K_src[0] *= w / W
    K_src[1] *= h / H  # intrinsics of the h x w grid, whose pixel centres are the patch centres
    world = depth_to_world_points(d, K_src, w2c[src], offset=0.5).reshape(-1, 3)
    cam = world @ w2c[dst, :3, :3].T + w2c[dst, :3, 3]
    z = cam[:, 2]
    uv = (cam[:, :2] / z.clamp(min=1e-9)[:, None]) @ K[dst, :2, :2].T + K[dst, :2, 2]
    inside = (z > 1e-6) & (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H) & (d.reshape(-1) > 0)
    u = uv[:, 0].clamp(0, W - 1).long()
    v = uv[:, 1].clamp(0, H - 1).long()
    seen = depth[dst][v, u]
    visible = inside & (seen > 0) & ((seen - z).abs() <= VISIBLE_TOLERANCE * z)
    index = (v * h // H) * w + (u * w // W)
    return torch.where(visible, index, torch.full_like(index, -1))


def matching_loss(
    features: Tensor, depth: Tensor, w2c: Tensor, K: Tensor, temperature: float = 0.1
) -> tuple[Tensor, Tensor]:
    """Mean InfoNCE over every ordered pair of views of every sample -> (loss, top-1 accuracy, both scalars).

    features (B, S, h*w, C) patch features; depth (B, S, H, W), w2c (B, S, 3|4, 4), K (B, S, 3, 3) the GT (any
    common scale: only where points land matters). Patches without a visible correspondence are left out; with
    none at all the loss is a finite 0 with a graph."""
    B, S, P, _ = features.shape
    h, w = patch_grid(P, *depth.shape[-2:])
    unit = F.normalize(features.float(), dim=-1)
    losses, hits, count = [], [], 0
    with torch.no_grad():
        targets = {
            (b, i, j): patch_correspondences(depth[b], w2c[b], K[b], h, w, i, j)
            for b in range(B)
            for i in range(S)
            for j in range(S)
            if i != j
        }
    for (b, i, j), target in targets.items():
        keep = target >= 0
        if not keep.any():
            continue
        logits = unit[b, i][keep] @ unit[b, j].T / temperature
        losses.append(F.cross_entropy(logits, target[keep], reduction="sum"))
        hits.append((logits.argmax(-1) == target[keep]).sum())
        count += int(keep.sum())
    if not count:
        zero = features.sum() * 0.0
        return zero, zero.detach()
    return torch.stack(losses).sum() / count, (torch.stack(hits).sum() / count).detach().float()
