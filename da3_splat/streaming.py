"""Streaming inference for long captures: DA3 on fixed-size chunks of neighbouring frames, merged into one world
frame, so peak memory depends on the chunk size and not on the number of frames.

Chunks follow the input order and consecutive chunks share at least ``overlap`` frames (the last chunk is moved
back so that every chunk has exactly ``chunk_size`` frames). Each chunk runs ``model.infer``, so the official
pre-processing and precision policy apply.

- Pose-free: chunk k is mapped into chunk 0's frame by the similarity that takes its overlap frames onto the
  merged prediction of the same frames. Correspondences are the camera centres and confident pixels of those
  frames, unprojected in both predictions (same image, same pixel grid, so the same pixel is the same surface
  point). The fit is a RANSAC over minimal 3-point samples with a depth-relative inlier test, refined by a
  weighted Umeyama on the inliers (see :func:`fit_sim3`).
- Known poses: every chunk is inferred with its own frames' cameras and comes back in the caller's frame, so no
  alignment is needed; the overlap only measures how well the chunks' depths agree.

Overlap frames keep the earlier chunk's prediction: it is already in the world frame and it is what the later
chunk was fitted to, so the kept frames carry no fit error of their own. No loop closure: drift accumulates along
the chain of fits (``benchmarks/streaming.py`` measures it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from da3_splat.errors import InputError
from da3_splat.gaussians import Gaussians
from da3_splat.geometry import apply_sim3_to_w2c, as_homogeneous, camera_centers, umeyama
from da3_splat.model.inference import Prediction

MIN_OVERLAP_POSE_FREE = 2  # one shared frame leaves the chunk's scale to a single depth map
MAX_POINTS = 4096  # pixel correspondences per fit: plenty for 7 parameters, cheap to score
CENTRE_SHARE = 0.25  # the camera centres' share of the fit's total weight (the points carry the rest)
INLIER_TOL = 0.05  # a correspondence is an inlier within this fraction of its depth (DA3's error grows with depth)
MIN_INLIERS = 20
MIN_INLIER_FRACTION = 0.3  # fewer inliers than this: the chunks do not see the same geometry
MAX_RESIDUAL = 0.05  # inlier RMSE over the scene extent above which a merge is refused
RANSAC_ITERS = 128  # P(no all-inlier sample) = (1 - 0.5^3)^128 < 1e-7 at half outliers
PER_VIEW = ("depth", "depth_conf", "processed_images", "extrinsics", "intrinsics", "ray", "ray_conf", "sky")

Sim3 = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (R, t, s), float64: x_world = s R x_chunk + t


def default_overlap(chunk_size: int) -> int:
    """A quarter of the chunk, at least 2 frames, always fewer than the chunk."""
    return min(max(2, chunk_size // 4), chunk_size - 1)


def check_chunking(
    chunk_size: int, overlap: int | None, known_poses: bool, names: tuple[str, str] = ("chunk_size", "overlap")
) -> int:
    """Validate the chunking (one-line InputErrors named after ``names``); -> the overlap (default resolved)."""
    size_name, overlap_name = names
    least = 2 if known_poses else MIN_OVERLAP_POSE_FREE + 1
    if chunk_size < least:
        why = "" if known_poses else f" without known poses ({MIN_OVERLAP_POSE_FREE} shared frames + 1 new)"
        raise InputError(f"{size_name} must be at least {least}{why}, got {chunk_size}")
    overlap = default_overlap(chunk_size) if overlap is None else overlap
    if overlap >= chunk_size:
        raise InputError(f"{overlap_name} ({overlap}) must be smaller than {size_name} ({chunk_size})")
    if overlap < (0 if known_poses else MIN_OVERLAP_POSE_FREE):
        least = 0 if known_poses else MIN_OVERLAP_POSE_FREE
        why = "" if known_poses else " without known poses (the chunks are aligned on the shared frames)"
        raise InputError(f"{overlap_name} must be at least {least}{why}, got {overlap}")
    return overlap


def chunk_ranges(n: int, chunk_size: int, overlap: int) -> list[tuple[int, int]]:
    """[start, stop) of each chunk; the last one is moved back to a full chunk (more overlap, same memory)."""
    if n <= chunk_size:
        return [(0, n)]
    ranges, step = [], chunk_size - overlap
    start = 0
    while start + chunk_size < n:
        ranges.append((start, start + chunk_size))
        start += step
    ranges.append((n - chunk_size, n))
    return ranges


def describe_chunk(info: dict) -> str:
    """One line per merged chunk, for the commands' consoles."""
    line = (
        f"chunk {info['chunk']}/{info['chunks']}: frames {info['start'] + 1}-{info['stop']} ({info['seconds']:.1f} s)"
    )
    if info.get("residual") is not None:
        line += f", scale {info['scale']:.3g}, {info['inliers']}/{info['points']} inlier points"
        line += f", residual {100 * info['residual']:.2f}% of the scene"
    if info.get("depth_disagreement") is not None:
        line += f", overlap depth disagreement {100 * info['depth_disagreement']:.2f}% (median)"
    return line


# --------------------------------------------------------------------------------------------------
# The fit


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


# --------------------------------------------------------------------------------------------------
# Merging


def _transformed(pred: Prediction, sim: Sim3) -> Prediction:
    """``pred`` after its world moves by x' = s R x + t: depth scaled, cameras and rays moved, intrinsics kept."""
    R, t, s = sim
    pred.depth = pred.depth * np.float32(s)
    w2c = apply_sim3_to_w2c(as_homogeneous(torch.from_numpy(pred.extrinsics).double()), R, t, s)
    pred.extrinsics = w2c[:, :3].float().numpy()
    if pred.ray is not None:  # [direction, centre]; depth carries the scale, so directions only rotate
        Rn, tn = R.numpy(), t.numpy()
        d, c = pred.ray[..., :3] @ Rn.T, float(s) * pred.ray[..., 3:] @ Rn.T + tn
        pred.ray = np.concatenate([d, c], -1).astype(pred.ray.dtype)
    if pred.gaussians is not None:
        pred.gaussians = pred.gaussians.transformed(R.float(), t.float(), float(s))
    return pred


def _views(arrays: dict, lo: int, hi: int) -> dict:
    return {k: arrays[k][lo:hi] for k in ("depth", "depth_conf", "extrinsics", "intrinsics")}


def _depth_disagreement(world: np.ndarray, chunk: np.ndarray, rng: np.random.Generator):
    """(median |d_chunk - d_world| / d_world over the shared pixels, a sample of those ratios)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.abs(chunk - world) / world
        rel = rel[np.isfinite(rel) & (world > 0)]
    if rel.size == 0:
        return None, rel
    return float(np.median(rel)), rng.choice(rel, min(rel.size, MAX_POINTS), replace=False)


def infer_streaming(
    model: Any,
    images: Sequence,
    chunk_size: int,
    overlap: int | None = None,
    extrinsics=None,
    intrinsics=None,
    process_res: int | None = None,
    progress: Callable[[dict], None] | None = None,
    max_residual: float = MAX_RESIDUAL,
    seed: int = 0,
    **infer_kw,
) -> Prediction:
    """DA3 on ``images`` in chunks of ``chunk_size`` neighbouring frames sharing ``overlap`` frames (default
    :func:`default_overlap`), merged into one :class:`Prediction` of all views in chunk 0's frame (pose-free) or
    the caller's (known ``extrinsics`` and ``intrinsics`` for every frame, as ``infer`` takes them).

    ``progress(info)`` is called after each chunk with its entry of ``extra["streaming"]["chunks"]`` (chunk,
    chunks, start, stop, scale, inliers, points, residual, depth_disagreement, seconds). ``infer_kw`` go to
    ``model.infer`` (``infer_gs``: each chunk's Gaussians are moved like its cameras and the overlap views'
    duplicates dropped; ``return_rays``: pose-free, the rays are moved too; with known poses they are dropped,
    as each chunk's stay in its own normalised frame). A chunk whose overlap cannot fix a similarity raises a
    one-line InputError naming it. Chunk 1 fixes ``is_metric`` and ``scale_factor``.
    """
    known = extrinsics is not None
    if known and intrinsics is None:
        raise InputError("known poses need intrinsics too (pass intrinsics together with extrinsics)")
    overlap = check_chunking(chunk_size, overlap, known)
    if not known and not getattr(model, "has_cameras", True):
        raise InputError("streaming without known poses needs a model that predicts cameras to align the chunks")
    n, rng = len(images), np.random.default_rng(seed)
    ranges = chunk_ranges(n, chunk_size, overlap)
    out: dict[str, np.ndarray | None] = {}
    gaussians: list[Gaussians] = []
    infos: list[dict] = []
    samples: list[np.ndarray] = []
    first: dict = {}  # chunk 1's size, units and extras (not the chunk itself, which would stay in memory)
    done = 0  # frames [0, done) are merged
    for k, (a, b) in enumerate(ranges):
        t0 = time.perf_counter()
        label = f"streaming: chunk {k + 1}/{len(ranges)} (frames {a + 1}-{b})"
        poses = {} if not known else {"extrinsics": extrinsics[a:b], "intrinsics": intrinsics[a:b]}
        pred = model.infer(list(images[a:b]), process_res=process_res, **poses, **infer_kw)
        if not first:
            first = {"size": pred.depth.shape[1:], "is_metric": pred.is_metric, "scale_factor": pred.scale_factor,
                     "extra": pred.extra}  # fmt: skip
            for name in PER_VIEW:
                v = getattr(pred, name)
                out[name] = None if v is None else np.empty((n, *v.shape[1:]), v.dtype)
        elif pred.depth.shape[1:] != first["size"]:
            got, want = pred.depth.shape[1:], first["size"]
            raise InputError(
                f"{label} was processed at {got[1]}x{got[0]}, chunk 1 at {want[1]}x{want[0]}; "
                "streaming needs images of one size"
            )
        if not known and pred.extrinsics is None:
            raise InputError(f"{label}: the model returned no cameras, so the chunks cannot be aligned")
        shared = done - a  # frames [a, done) are in both
        info = {
            "chunk": k + 1,
            "chunks": len(ranges),
            "start": a,
            "stop": b,
            "scale": 1.0,
            "inliers": None,
            "points": None,
            "residual": None,
            "depth_disagreement": None,
        }
        if shared > 0 and not known:
            fit = align_chunk(_views(out, a, done), _views(vars(pred), 0, shared), rng, max_residual)
            if isinstance(fit, str):
                raise InputError(
                    f"{label} cannot be aligned to the frames before it: {fit}; "
                    "try a larger chunk overlap or chunk size"
                )
            sim, stats = fit
            info.update(stats)
            pred = _transformed(pred, sim)
        elif shared > 0:
            info["depth_disagreement"], sample = _depth_disagreement(out["depth"][a:done], pred.depth[:shared], rng)
            samples.append(sample)
        for name in PER_VIEW:
            if out[name] is not None:
                out[name][done:b] = getattr(pred, name)[shared:]
        if pred.gaussians is not None:
            per_view = pred.gaussians.num_gaussians // (b - a)
            if per_view * (b - a) != pred.gaussians.num_gaussians:
                raise ValueError(f"{label}: {pred.gaussians.num_gaussians} Gaussians for {b - a} views")
            kept = pred.gaussians.select(slice(shared * per_view, None))
            gaussians.append(kept.clone() if shared else kept)  # a view would keep the dropped duplicates alive
        done = b
        info["seconds"] = time.perf_counter() - t0
        infos.append(info)
        if progress is not None:
            progress(info)
        del pred
    if known and out.get("ray") is not None:
        out["ray"] = out["ray_conf"] = None  # each chunk's rays stay in its own normalised frame: not mergeable
    pooled = np.concatenate(samples) if samples else np.empty(0)
    summary = {
        "chunk_size": chunk_size,
        "overlap": overlap,
        "mode": "known poses" if known else "pose-free",
        "overlap_kept_from": "earlier chunk",
        "chunks": infos,
        "depth_disagreement": float(np.median(pooled)) if pooled.size else None,
    }
    return Prediction(
        **{name: out[name] for name in PER_VIEW},
        gaussians=Gaussians.cat(gaussians) if gaussians else None,
        is_metric=first["is_metric"],
        scale_factor=first["scale_factor"],
        extra={**first["extra"], "streaming": summary},
    )
