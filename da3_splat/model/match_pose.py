"""Cameras from the network's own cross-view patch matches and its depth (an alternative to the camera decoder).

Trained from scratch on a CPU budget, the tiny model's camera decoder collapses to "no motion"
(benchmarks/results/camera_collapse.md), while its patch features learn to match across views (the matching term,
:mod:`da3_splat.train.matching`) and its depth learns. This solver uses those two learned outputs the way
DUSt3R/MASt3R-style pipelines recover poses: mutual nearest-neighbour patch matches between two views, refined
below a patch by a soft-argmax, lifted to 3D with each view's predicted depth, a RANSAC similarity (Umeyama) fit,
and the translation direction re-solved from the epipolar constraint of the inlier matches (depth-free). Every
candidate pair is fitted and each view placed from the reference along the best-supported pairs (a maximum
spanning tree on inlier counts); up to ``ALL_PAIRS_UP_TO`` views, where every pair is fitted, a pose graph over
all of them then spreads the errors that the tree would leave on the pairs outside it (:func:`refine_pose_graph`).
Nothing here is learned; it only reads the network's outputs.

Limits: a view that no pair reaches keeps the reference's pose (``inliers`` 0); beyond ``ALL_PAIRS_UP_TO`` views
errors add up along the chain of neighbours; and the rotations are only as good as the depth (on GT depth the same
matches give far smaller errors: benchmarks/results/match_pose.md, benchmarks/results/pose_graph.md).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from da3_splat.geometry import so3_exp, so3_log, umeyama

TEMPERATURE = 0.1  # the matching loss's softmax temperature: the refinement reads the same distribution
HYPOTHESES = 256  # RANSAC minimal samples (3 matches each) per pair of views
INLIER_TOLERANCE = 0.1  # a match is an inlier when its 3D residual is under this fraction of its depth
ALL_PAIRS_UP_TO = 32  # views; beyond, only neighbours in input order and the reference are matched
NEIGHBOURS = 2  # beyond ALL_PAIRS_UP_TO, each view is matched with this many on either side
MIN_INLIERS = 8  # a pair whose best fit agrees with fewer matches is not used (too little evidence)
GRAPH_ROBUST = 0.1  # Cauchy scale of the pose graph's residuals: radians, and translations over the view's depth
GRAPH_ITERATIONS = 200  # L-BFGS iterations at most
# The graph runs where every pair is a candidate: over the chain-shaped set of longer inputs it has little
# redundancy, and on 300-frame single passes it raised the trajectory error (benchmarks/results/pose_graph.md).
GRAPH_UP_TO = ALL_PAIRS_UP_TO


def patch_grid(patches: int, height: int, width: int) -> tuple[int, int]:
    """(rows, columns) of the patch grid of an image of height x width that holds ``patches`` patches."""
    h = round((patches * height / width) ** 0.5)
    w = patches // h
    if h * w != patches:
        raise ValueError(f"{patches} patches do not form a grid of the image's aspect {height}x{width}")
    return h, w


def _grid_points(depth: Tensor, K: Tensor, rows: Tensor, cols: Tensor, h: int, w: int) -> Tensor:
    """Camera-frame 3D points at fractional patch-grid positions: depth averaged per patch and interpolated
    bilinearly, pixel position at the patch centre. depth (H, W), K (3, 3), rows/cols (N,) -> (N, 3)."""
    H, W = depth.shape
    pooled = F.adaptive_avg_pool2d(depth[None, None].double(), (h, w))
    grid = torch.stack([(cols + 0.5) / w * 2 - 1, (rows + 0.5) / h * 2 - 1], dim=-1).double()
    z = F.grid_sample(pooled, grid[None, None], mode="bilinear", padding_mode="border", align_corners=False)
    z = z.reshape(-1)
    u, v = (cols.double() + 0.5) * (W / w), (rows.double() + 0.5) * (H / h)
    Kd = K.double()
    x = (u - Kd[0, 2]) / Kd[0, 0]
    y = (v - Kd[1, 2]) / Kd[1, 1]
    return torch.stack([x * z, y * z, z], dim=-1)


def mutual_matches(ref: Tensor, other: Tensor, h: int, w: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Mutual nearest neighbours between two views' patch features (P, C) by cosine similarity.

    Returns (ref patch indices (M,), fractional (row, col) in ``other``'s h x w grid (M,) each, and a weight (M,):
    the softmax probability of the match). The position in ``other`` is the softmax-weighted mean over the 3 x 3
    patches around the best one (sub-patch accuracy)."""
    a, b = F.normalize(ref.double(), dim=-1), F.normalize(other.double(), dim=-1)
    sim = a @ b.T  # (P, P)
    best = sim.argmax(dim=1)
    back = sim.argmax(dim=0)
    keep = back[best] == torch.arange(sim.shape[0], device=sim.device)
    src = keep.nonzero().squeeze(1)
    dst = best[src]
    prob = torch.softmax(sim[src] / TEMPERATURE, dim=1).gather(1, dst[:, None]).squeeze(1)
    # soft-argmax over the 3 x 3 neighbourhood of the best patch (padded with -inf outside the grid)
    grid = F.pad(sim[src].reshape(-1, 1, h, w), (1, 1, 1, 1), value=float("-inf"))
    r0, c0 = dst // w, dst % w
    offsets = torch.arange(-1, 2, device=sim.device)
    rr = (r0[:, None, None] + 1 + offsets[None, :, None]).expand(-1, 3, 3)
    cc = (c0[:, None, None] + 1 + offsets[None, None, :]).expand(-1, 3, 3)
    local = grid[torch.arange(len(src), device=sim.device)[:, None, None], 0, rr, cc].reshape(-1, 9)
    p = torch.softmax(local / TEMPERATURE, dim=1).reshape(-1, 3, 3)
    rows = r0.double() + (p.sum(2) * offsets.double()).sum(1)
    cols = c0.double() + (p.sum(1) * offsets.double()).sum(1)
    return src, rows, cols, prob


def similarity_ransac(src: Tensor, dst: Tensor, weight: Tensor, generator: torch.Generator) -> tuple[Tensor, ...]:
    """Robust ``dst ~ s R src + t`` from 3D matches (N, 3) each: the minimal fit with the largest inlier weight,
    refitted on its inliers. Returns (R, t, s, inlier mask)."""
    n = src.shape[0]
    picks = torch.stack([torch.randperm(n, generator=generator)[:3] for _ in range(HYPOTHESES)]).to(src.device)
    R, t, s = umeyama(src[picks], dst[picks])  # every minimal sample at once
    moved = s[:, None, None] * src[None] @ R.transpose(1, 2) + t[:, None]
    residual = (moved - dst[None]).norm(dim=-1) / dst[None, :, 2].abs().clamp(min=1e-9)
    ok = (s > 0)[:, None] & (residual < INLIER_TOLERANCE)
    best = (ok * weight[None]).sum(1).argmax()
    inliers = ok[best]
    if int(inliers.sum()) < 3:
        return R[best], t[best], s[best], inliers
    Rf, _, _ = umeyama(src[inliers], dst[inliers], weight[inliers])
    # The scale as the ratio of the two point sets' spreads: symmetric in them. Umeyama's least-squares scale
    # shrinks towards 0 with the noise of src (here the reference view's depth, as noisy as the other's).
    w = weight[inliers] / weight[inliers].sum()
    mu_s, mu_d = w @ src[inliers], w @ dst[inliers]
    spread = lambda x, mu: (w * (x - mu).square().sum(-1)).sum()  # noqa: E731
    sf = (spread(dst[inliers], mu_d) / spread(src[inliers], mu_s).clamp(min=1e-12)).sqrt()
    return Rf, mu_d - sf * Rf @ mu_s, sf, inliers


class MatchCameras(NamedTuple):
    extrinsics: Tensor  # (B, S, 3, 4) world-to-camera OpenCV, the reference camera's frame and depth units
    depth_scale: Tensor  # (B, S): a view's depth divided by this is in the reference's units (1 where unsolved)
    inliers: Tensor  # (B, S) long: matches that agree with the fit (0 for the reference and unsolved views)


def _epipolar_translation(R: Tensor, ref_points: Tensor, other_points: Tensor, t: Tensor) -> Tensor:
    """The translation direction that best satisfies the epipolar constraint of the matches given the rotation
    (depth-free: only where the points appear), with the length and sign of the similarity fit's ``t``."""
    a = ref_points / ref_points[:, 2:3]
    b = other_points / other_points[:, 2:3]
    rows = torch.linalg.cross(a @ R.T, b)  # t . (R a x b) = 0 for every match
    direction = torch.linalg.svd(rows).Vh[-1]
    if float(direction @ t) < 0:
        direction = -direction
    return direction * t.norm()


def candidate_pairs(S: int, reference: int) -> list[tuple[int, int]]:
    """View pairs to match: all of them up to ``ALL_PAIRS_UP_TO`` views; beyond, each view with its neighbours in
    input order (within ``NEIGHBOURS``) and with the reference, so the cost grows linearly along a capture."""
    if S <= ALL_PAIRS_UP_TO:
        return [(i, j) for i in range(S) for j in range(i + 1, S)]
    near = {(i, j) for i in range(S) for j in range(i + 1, min(S, i + NEIGHBOURS + 1))}
    return sorted(near | {(min(reference, j), max(reference, j)) for j in range(S) if j != reference})


def _solve_pair(features: Tensor, depth: Tensor, K: Tensor, a: int, b: int, h: int, w: int, generator):
    """Similarity ``X_b ~ s R X_a + t`` between the camera frames of views a and b (each in its own depth units),
    or None below ``MIN_INLIERS``. -> (R, t, s, inlier count)."""
    src, rows, cols, prob = mutual_matches(features[a], features[b], h, w)
    if len(src) < MIN_INLIERS:
        return None
    p_a = _grid_points(depth[a], K[a], src // w, src % w, h, w)
    p_b = _grid_points(depth[b], K[b], rows, cols, h, w)
    R, t, s, inliers = similarity_ransac(p_a, p_b, prob, generator)
    count = int(inliers.sum())
    if count < MIN_INLIERS or not bool(s > 0):
        return None
    return R, _epipolar_translation(R, p_a[inliers], p_b[inliers], t), s, count


def _inverse(R: Tensor, t: Tensor, s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return R.T, -(R.T @ t) / s, 1 / s


def place_child(R_p: Tensor, t_p: Tensor, scale_p: Tensor, R: Tensor, t: Tensor, s: Tensor) -> tuple[Tensor, ...]:
    """A child view's world-to-camera (R, t, in the reference's units) and depth scale, from its parent's
    (``scale_p``: the parent's depth units per reference unit) and the pair's fit ``X_child ~ s R X_parent + t``
    (each in its own units)."""
    scale = s * scale_p
    return R @ R_p, R @ t_p + t / scale, scale


@torch.no_grad()  # a closed-form fit on the network's outputs: nothing to back-propagate
def cameras_from_matches(
    features: Tensor, depth: Tensor, intrinsics: Tensor, reference: Tensor, *, seed: int = 0, refine: bool = True
) -> MatchCameras:
    """features (B, S, P, C) patch features of one backbone layer (input view order), depth (B, S, H, W) the
    predicted depth, intrinsics (B, S, 3, 3) in pixels of H x W, reference (B,) the view that is the world frame.

    Every candidate pair of views (:func:`candidate_pairs`) is fitted; each view is then placed along the
    spanning tree from the reference that keeps the best-supported pairs (most inlier matches), so a view that
    shares little with the reference is placed through the views between them. A view no pair reaches keeps the
    reference's pose and depth scale. With ``refine`` (and at most ``GRAPH_UP_TO`` views), the poses are then
    adjusted to all the pairs (:func:`refine_pose_graph`). Seeded RANSAC (``seed``): the same inputs give the same
    cameras."""
    B, S, P, _ = features.shape
    h, w = patch_grid(P, *depth.shape[-2:])
    generator = torch.Generator().manual_seed(seed)
    extrinsics = torch.eye(3, 4, dtype=torch.float64, device=depth.device).repeat(B, S, 1, 1)
    scale = torch.ones(B, S, dtype=torch.float64, device=depth.device)
    counts = torch.zeros(B, S, dtype=torch.long)
    for b in range(B):
        r = int(reference[b])
        edges = {}  # (from, to) -> (R, t, s, count): X_to ~ s R X_from + t
        for i, j in candidate_pairs(S, r):
            fit = _solve_pair(features[b], depth[b], intrinsics[b], i, j, h, w, generator)
            if fit is not None:
                edges[(i, j)] = fit
                edges[(j, i)] = (*_inverse(*fit[:3]), fit[3])
        placed = {r}
        while True:  # Prim: grow the tree from the reference along the best-supported pair
            best = max(
                ((e, f) for e, f in edges.items() if e[0] in placed and e[1] not in placed),
                key=lambda ef: ef[1][3],
                default=None,
            )
            if best is None:
                break
            (parent, child), (R, t, s, count) = best
            parent_pose = extrinsics[b, parent, :, :3], extrinsics[b, parent, :, 3], scale[b, parent]
            R_c, t_c, scale[b, child] = place_child(*parent_pose, R, t, s)
            extrinsics[b, child, :, :3], extrinsics[b, child, :, 3] = R_c, t_c
            counts[b, child] = count
            placed.add(child)
        if refine and len(placed) > 2 and S <= GRAPH_UP_TO:
            R_b, t_b, scale[b] = refine_pose_graph(
                extrinsics[b, :, :, :3], extrinsics[b, :, :, 3], scale[b], edges, depth[b], r, placed
            )
            extrinsics[b] = torch.cat([R_b, t_b[..., None]], -1)
    return MatchCameras(extrinsics.to(depth.dtype), scale.to(depth.dtype), counts)


def refine_pose_graph(
    R: Tensor, t: Tensor, scale: Tensor, edges: dict, depth: Tensor, reference: int, placed: set[int]
) -> tuple[Tensor, Tensor, Tensor]:
    """Every placed view's world-to-camera (R (S, 3, 3), t (S, 3), reference units) and depth scale (S,) adjusted
    to agree with all the pair fits at once, not only the spanning tree's: a pose graph over the similarities
    ``edges[(i, j)] = (R, t, s, inlier count)`` (``X_j ~ s R X_i + t``, each view in its own depth units).

    Each pair's residual is the rotation between its fit and the one the views' poses imply (radians), the
    translation difference over the median depth of the pair's second view, and the log ratio of the scales;
    it is weighted by the pair's inlier count, under a Cauchy loss of scale ``GRAPH_ROBUST`` so that a wrong fit
    is outvoted rather than averaged in. The reference view stays fixed (the gauge); views outside ``placed``
    are left as they are. Minimised by L-BFGS from the tree's poses (7 variables a view)."""
    pairs = [(i, j, fit) for (i, j), fit in edges.items() if i < j and i in placed and j in placed]
    if not pairs:
        return R, t, scale
    # The solver runs under no_grad or inference_mode (both callers'); the fit needs autograd, and inference
    # tensors cannot be saved for it, so every input is cloned inside.
    with torch.inference_mode(False), torch.enable_grad():
        return _minimise_pose_graph(R, t, scale, pairs, depth, reference, placed)


def _minimise_pose_graph(R, t, scale, pairs, depth, reference, placed) -> tuple[Tensor, Tensor, Tensor]:
    dev = R.device
    a = torch.tensor([i for i, _, _ in pairs], device=dev)
    b = torch.tensor([j for _, j, _ in pairs], device=dev)
    R_fit = torch.stack([f[0].clone() for _, _, f in pairs]).double()
    t_fit = torch.stack([f[1].clone() for _, _, f in pairs]).double()
    s_fit = torch.stack([torch.as_tensor(f[2]).clone() for _, _, f in pairs]).double()
    weight = torch.tensor([float(f[3]) for _, _, f in pairs], dtype=torch.float64, device=dev)
    length = depth.clone().flatten(1).double().median(dim=1).values.clamp(min=1e-9)
    free = torch.tensor([v in placed and v != reference for v in range(len(R))], device=dev)[:, None]
    R0, t0, log_s0 = R.clone().double(), t.clone().double(), scale.clone().double().log()
    turn = torch.zeros_like(t0, requires_grad=True)
    shift = torch.zeros_like(t0, requires_grad=True)
    log_s = torch.zeros_like(log_s0, requires_grad=True)

    def poses() -> tuple[Tensor, Tensor, Tensor]:
        return so3_exp(turn * free) @ R0, t0 + shift * free, (log_s0 + log_s * free[:, 0]).exp()

    def energy() -> Tensor:
        Rv, tv, sv = poses()
        R_ab = Rv[b] @ Rv[a].transpose(1, 2)  # the pair's rotation and translation that the poses imply
        t_ab = sv[b, None] * (tv[b] - (R_ab @ tv[a, :, None]).squeeze(-1))
        r2 = (
            so3_log(R_fit.transpose(1, 2) @ R_ab).square().sum(-1)
            + ((t_ab - t_fit) / length[b, None]).square().sum(-1)
            + (sv[b] / sv[a] / s_fit).log().square()
        )
        return (weight * GRAPH_ROBUST**2 * torch.log1p(r2 / GRAPH_ROBUST**2)).sum()

    optimiser = torch.optim.LBFGS(
        [turn, shift, log_s], max_iter=GRAPH_ITERATIONS, line_search_fn="strong_wolfe", tolerance_change=1e-12
    )

    def closure() -> Tensor:
        optimiser.zero_grad()
        e = energy()
        e.backward()
        return e

    optimiser.step(closure)
    with torch.no_grad():
        return tuple(x.to(R.dtype) for x in poses())
