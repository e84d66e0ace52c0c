"""Aligning one chunk of a streaming run to the frames merged before it (:mod:`da3_splat.streaming`): the
similarity that takes the chunk's shared frames onto the merged prediction of the same frames.

Correspondences are the camera centres and confident pixels of those frames, unprojected in both predictions (same
image, same pixel grid, so the same pixel is the same surface point). The fit is a RANSAC over minimal 3-point
samples with a depth-relative inlier test, refined by a weighted Umeyama on the inliers (see :func:`fit_sim3`).
"""

from __future__ import annotations

import numpy as np
import torch

from da3_splat.geometry import camera_centers, umeyama

MIN_OVERLAP_POSE_FREE = 2  # one shared frame leaves the chunk's scale to a single depth map
MAX_POINTS = 4096  # pixel correspondences per fit: plenty for 7 parameters, cheap to score
CENTRE_SHARE = 0.25  # the camera centres' share of the fit's total weight (the points carry the rest)
INLIER_TOL = 0.05  # a correspondence is an inlier within this fraction of its depth (DA3's error grows with depth)
MIN_INLIERS = 20
MIN_INLIER_FRACTION = 0.3  # fewer inliers than this: the chunks do not see the same geometry
MAX_RESIDUAL = 0.05  # inlier RMSE over the scene extent above which a merge is refused
RANSAC_ITERS = 128  # P(no all-inlier sample) = (1 - 0.5^3)^128 < 1e-7 at half outliers

FIT_VIEWS = ("depth", "depth_conf", "extrinsics", "intrinsics")  # the per-view arrays a fit reads
Sim3 = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (R, t, s), float64: x_world = s R x_chunk + t


def _unproject(depth: np.ndarray, K: np.ndarray, w2c: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """World points of pixels (rows, cols) of one view, pixel centres at +0.5 (as ``depth_to_world_points`` with
    offset=0.5), in float64."""
    pix = np.stack([cols + 0.5, rows + 0.5, np.ones(len(rows))], -1)
    cam = (pix @ np.linalg.inv(K.astype(np.float64)).T) * depth[rows, cols].astype(np.float64)[:, None]
    R, t = w2c[:3, :3].astype(np.float64), w2c[:3, 3].astype(np.float64)
    return (cam - t) @ R  # R^T (x - t), as rows


def _finite_camera(w2c: np.ndarray, K: np.ndarray) -> bool:
    return bool(np.isfinite(w2c).all() and np.isfinite(K).all() and abs(np.linalg.det(K)) > 0)


def correspondences(world: dict, chunk: dict, rng: np.random.Generator, max_points: int = MAX_POINTS):
    """Matching 3D points of the same frames in two predictions (dicts of per-view depth, depth_conf,
    extrinsics, intrinsics). Per frame: pixels valid in both whose lower confidence is at least that frame's
    median, subsampled; then the camera centres. -> (src (chunk), dst (world), tau, weight, is_point), numpy,
    or a string saying why there are none."""
    frames = [
        i
        for i in range(len(world["depth"]))
        if _finite_camera(world["extrinsics"][i], world["intrinsics"][i])
        and _finite_camera(chunk["extrinsics"][i], chunk["intrinsics"][i])
    ]
    if len(frames) < MIN_OVERLAP_POSE_FREE:
        return f"only {len(frames)} of {len(world['depth'])} overlap frames have finite cameras in both"
    src, dst, tau, centre_tau, used = [], [], [], [], []
    per_frame = max(1, max_points // len(frames))
    for i in frames:
        dw, dc = world["depth"][i], chunk["depth"][i]
        cw, cc = world["depth_conf"][i], chunk["depth_conf"][i]
        with np.errstate(invalid="ignore"):
            valid = np.isfinite(dw) & np.isfinite(dc) & (dw > 0) & (dc > 0) & np.isfinite(cw) & np.isfinite(cc)
        if not valid.any():
            continue
        score = np.minimum(cw, cc)
        rows, cols = np.nonzero(valid & (score >= np.median(score[valid])))
        if len(rows) > per_frame:
            pick = np.sort(rng.choice(len(rows), per_frame, replace=False))
            rows, cols = rows[pick], cols[pick]
        src.append(_unproject(dc, chunk["intrinsics"][i], chunk["extrinsics"][i], rows, cols))
        dst.append(_unproject(dw, world["intrinsics"][i], world["extrinsics"][i], rows, cols))
        tau.append(INLIER_TOL * dw[rows, cols].astype(np.float64))
        centre_tau.append(INLIER_TOL * float(np.median(dw[valid])))
        used.append(i)
    n_points = sum(len(s) for s in src)
    if n_points < MIN_INLIERS:
        return f"only {n_points} confident pixels with finite depth in both"

    def centres(views: dict) -> np.ndarray:
        w2c = torch.from_numpy(np.asarray(views["extrinsics"])[used].astype(np.float64))
        return camera_centers(w2c).numpy()

    w_centre = CENTRE_SHARE / (1 - CENTRE_SHARE) * n_points / len(used)  # all centres: CENTRE_SHARE of the total
    weight = np.concatenate([np.ones(n_points), np.full(len(used), w_centre)])
    is_point = np.arange(len(weight)) < n_points
    return (
        np.concatenate([*src, centres(chunk)]),
        np.concatenate([*dst, centres(world)]),
        np.concatenate([*tau, centre_tau]),
        weight,
        is_point,
    )


def fit_sim3(src, dst, tau, weight, rng: np.random.Generator, iters: int = RANSAC_ITERS) -> tuple[Sim3, np.ndarray]:
    """Similarity with dst ~ s R src + t, robust to outliers -> ((R, t, s) float64 tensors, inlier mask).

    RANSAC over minimal 3-correspondence samples (fixed generator, so runs repeat), scoring the total weight of
    the correspondences within ``tau`` (each its own tolerance), then weighted Umeyama on the inliers until
    they stop changing. Why not ``geometry.umeyama_ransac``: its hypotheses are fitted on random halves, which
    hold about the same share of outliers as the whole set (a bad overlap frame contributes a quarter of the
    points), and its threshold needs all pairwise distances (O(N^2) for thousands of points)."""
    S, D = torch.from_numpy(src), torch.from_numpy(dst)

    def inliers(R, t, s) -> np.ndarray:  # numpy: small per-call work, no thread-pool start-up per hypothesis
        return np.linalg.norm(float(s) * src @ R.numpy().T + t.numpy() - dst, axis=-1) <= tau

    hypotheses = []
    for _ in range(iters):
        pick = torch.from_numpy(rng.choice(len(S), 3, replace=False))
        R, t, s = umeyama(S[pick], D[pick])
        if torch.isfinite(s) and s > 0 and torch.isfinite(R).all():
            hypotheses.append((R, t, s))
    if not hypotheses:
        return _nan_sim3(), np.zeros(len(S), bool)
    scored = [(h, inliers(*h)) for h in hypotheses]
    best, best_in = max(scored, key=lambda hi: weight[hi[1]].sum())
    for _ in range(10):  # refit on the inliers until they stop changing
        if best_in.sum() < 3:
            break
        keep = torch.from_numpy(best_in)
        best = umeyama(S[keep], D[keep], weights=torch.from_numpy(weight)[keep])
        new = inliers(*best)
        if np.array_equal(new, best_in):
            break
        best_in = new
    return best, best_in


def _nan_sim3() -> Sim3:
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    return torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), nan


def align_chunk(world: dict, chunk: dict, rng: np.random.Generator, max_residual: float = MAX_RESIDUAL):
    """The similarity taking ``chunk``'s frame to ``world``'s from their shared views -> (Sim3, stats), or a
    string saying why it cannot be trusted."""
    found = correspondences(world, chunk, rng)
    if isinstance(found, str):
        return found
    src, dst, tau, weight, is_point = found
    (R, t, s), inl = fit_sim3(src, dst, tau, weight, rng)
    n_points = int(is_point.sum())
    pts_in = inl & is_point
    if not (torch.isfinite(s) and s > 0):
        return f"the fit is degenerate (scale {float(s):.3g})"
    if pts_in.sum() < max(MIN_INLIERS, MIN_INLIER_FRACTION * n_points):
        return f"only {int(pts_in.sum())} of {n_points} shared points agree within {100 * INLIER_TOL:g}% of depth"
    moved = float(s) * src @ R.numpy().T + t.numpy()
    d = dst[is_point]
    extent = float(np.sqrt(((d - d.mean(0)) ** 2).sum(-1).mean()))
    rmse = float(np.sqrt(((moved[pts_in] - dst[pts_in]) ** 2).sum(-1).mean()))
    residual = rmse / max(extent, 1e-12)
    if not residual <= max_residual:
        return f"the shared points disagree by {100 * residual:.1f}% of the scene after alignment"
    return (R, t, s), {"scale": float(s), "inliers": int(pts_in.sum()), "points": n_points, "residual": residual}
