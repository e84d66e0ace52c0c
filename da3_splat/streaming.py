"""Streaming inference for long captures: DA3 on fixed-size chunks of neighbouring frames, merged into one world
frame, so peak memory depends on the chunk size and not on the number of frames.

Chunks follow the input order and consecutive chunks share at least ``overlap`` frames (the last chunk is moved
back so that every chunk has exactly ``chunk_size`` frames). Each chunk runs ``model.infer``, so the official
pre-processing and precision policy apply.

- Pose-free: chunk k is mapped into chunk 0's frame by the similarity that takes its overlap frames onto the
  merged prediction of the same frames (:mod:`da3_splat.streaming_align`: camera centres and confident pixels,
  RANSAC then weighted Umeyama).
- Known poses: every chunk is inferred with its own frames' cameras and comes back in the caller's frame, so no
  alignment is needed; the overlap only measures how well the chunks' depths agree.

When a chunk's overlap cannot fix a similarity (the trajectory leaves the overlap's view, too few shared points
agree), the chunk is run once more together with ``ANCHORS`` frames spread over everything merged so far and fitted
on those instead (the anchors are the same images in both passes, so they correspond whatever the chunk sees);
only if that fails too does the run stop, with one line naming the chunk. ``extra["streaming"]`` records each
fallback.

Overlap frames keep the earlier chunk's prediction: it is already in the world frame and it is what the later
chunk was fitted to, so the kept frames carry no fit error of their own. Drift accumulates along the chain of fits
(``benchmarks/streaming.py`` measures it); with ``loop_closure``, places the trajectory visits again are found,
measured by one more pass each and the drift spread over the chunks by a pose graph
(:mod:`da3_splat.streaming_loops`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from da3_splat.errors import InputError
from da3_splat.gaussians import Gaussians
from da3_splat.geometry import apply_sim3_to_w2c, as_homogeneous, camera_centers
from da3_splat.model.inference import Prediction
from da3_splat.streaming_align import FIT_VIEWS, MAX_POINTS, MAX_RESIDUAL, MIN_OVERLAP_POSE_FREE, Sim3, align_chunk
from da3_splat.streaming_loops import (
    MIN_SIMILARITY,
    chunk_centroids,
    frame_descriptors,
    loop_candidates,
    loop_error,
    measure_loop,
    optimise_chunk_graph,
    sim3_parts,
)

ANCHORS = 4  # merged frames re-run with a chunk whose overlap cannot be trusted
PER_VIEW = ("depth", "depth_conf", "processed_images", "extrinsics", "intrinsics", "ray", "ray_conf", "sky")


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
    """One line per merged chunk (or per loop tried, with loop closure), for the commands' consoles."""
    if "loop" in info:
        p, q = info["frames"]
        line = f"loop {info['loop']}: frames {p + 1} and {q + 1} (similarity {info['similarity']:.2f})"
        if info.get("rejected"):
            return f"{line}: not used, {info['rejected']}"
        d = info["drift"]
        return (f"{line}: drift {d['rotation_deg']:.2f} deg, {100 * d['translation']:.1f}% of the depth in "
                f"translation, scale x{d['scale']:.3f}")  # fmt: skip
    line = (
        f"chunk {info['chunk']}/{info['chunks']}: frames {info['start'] + 1}-{info['stop']} ({info['seconds']:.1f} s)"
    )
    if info.get("residual") is not None:
        line += f", scale {info['scale']:.3g}, {info['inliers']}/{info['points']} inlier points"
        line += f", residual {100 * info['residual']:.2f}% of the scene"
    if info.get("fallback"):
        line += f"; overlap not trusted ({info['overlap_failure']}), aligned through {info['fallback']}"
    if info.get("depth_disagreement") is not None:
        line += f", overlap depth disagreement {100 * info['depth_disagreement']:.2f}% (median)"
    return line


# --------------------------------------------------------------------------------------------------
# Merging


def _moved(depth: np.ndarray, extrinsics: np.ndarray, ray: np.ndarray | None, sim: Sim3):
    """Per-view arrays after their world moves by x' = s R x + t: depth scaled, cameras and rays moved."""
    R, t, s = sim
    w2c = apply_sim3_to_w2c(as_homogeneous(torch.from_numpy(extrinsics).double()), R, t, s)
    if ray is not None:  # [direction, centre]; depth carries the scale, so directions only rotate
        Rn, tn = R.numpy(), t.numpy()
        d, c = ray[..., :3] @ Rn.T, float(s) * ray[..., 3:] @ Rn.T + tn
        ray = np.concatenate([d, c], -1).astype(ray.dtype)
    return depth * np.float32(s), w2c[:, :3].numpy().astype(extrinsics.dtype), ray


def _transformed(pred: Prediction, sim: Sim3) -> Prediction:
    """``pred`` after its world moves by x' = s R x + t: depth scaled, cameras and rays moved, intrinsics kept."""
    pred.depth, pred.extrinsics, pred.ray = _moved(pred.depth, pred.extrinsics, pred.ray, sim)
    if pred.gaussians is not None:
        R, t, s = sim
        pred.gaussians = pred.gaussians.transformed(R.float(), t.float(), float(s))
    return pred


def _views(arrays: dict, lo: int, hi: int) -> dict:
    return {k: arrays[k][lo:hi] for k in FIT_VIEWS}


def _without_first(pred: Prediction, k: int) -> Prediction:
    """``pred`` without its first k views (the anchors of a fallback pass)."""
    for name in PER_VIEW:
        v = getattr(pred, name)
        if v is not None:
            setattr(pred, name, v[k:])
    if pred.gaussians is not None:
        per_view = pred.gaussians.num_gaussians // (pred.num_views + k)
        pred.gaussians = pred.gaussians.select(slice(k * per_view, None)).clone()
    return pred


def _fallback_to_anchors(model, images, out: dict, a: int, b: int, done: int, rng, max_residual, infer_kw):
    """Chunk [a, b) re-run after ``ANCHORS`` merged frames spread over [0, done) and fitted on them ->
    (prediction of [a, b) in the world frame, stats), or a string saying why that failed too."""
    anchors = sorted(set(np.linspace(0, max(a, 1) - 1, ANCHORS).round().astype(int).tolist()))
    pred = model.infer([images[i] for i in anchors] + list(images[a:b]), **infer_kw)
    world = {k: out[k][anchors] for k in FIT_VIEWS}
    fit = align_chunk(world, _views(vars(pred), 0, len(anchors)), rng, max_residual)
    if isinstance(fit, str):
        return fit
    sim, stats = fit
    return _transformed(_without_first(pred, len(anchors)), sim), {**stats, "fallback": f"anchors {anchors}"}


def _depth_disagreement(world: np.ndarray, chunk: np.ndarray, rng: np.random.Generator):
    """(median |d_chunk - d_world| / d_world over the shared pixels, a sample of those ratios)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.abs(chunk - world) / world
        rel = rel[np.isfinite(rel) & (world > 0)]
    if rel.size == 0:
        return None, rel
    return float(np.median(rel)), rng.choice(rel, min(rel.size, MAX_POINTS), replace=False)


def _depth_length(depth: np.ndarray) -> float:
    """The scene's depth scale: median depth over up to 64 frames spread over the run."""
    sample = depth[:: max(1, len(depth) // 64)]
    with np.errstate(invalid="ignore"):
        ok = sample[np.isfinite(sample) & (sample > 0)]
    return float(np.median(ok)) if ok.size else 1.0


def _close_loops(model, images, out, owner, gaussians, chunk_size, rng, max_residual, min_similarity, infer_kw,
                 progress) -> dict:  # fmt: skip
    """Find, measure and close the loops of a merged pose-free run in place (cameras, depth, rays, Gaussians)."""
    n, chunks = len(images), int(owner[-1]) + 1
    desc = frame_descriptors(out["processed_images"])
    candidates = loop_candidates(desc, owner, chunks // 2 + 1, min_similarity)
    world = _views(out, 0, n)
    length = _depth_length(out["depth"])
    centres = camera_centers(torch.from_numpy(out["extrinsics"].astype(np.float64))).numpy()
    edges, infos, used = [], [], []  # used: the infos of the verified loops, in edge order
    for p, q, similarity in candidates:
        i, j = int(owner[p]), int(owner[q])
        info: dict = {"loop": len(infos) + 1, "frames": [p, q], "chunks": [i + 1, j + 1], "similarity": similarity}
        fit = measure_loop(model, images, world, p, q, chunk_size // 2, rng, max_residual, infer_kw)
        if isinstance(fit, str):
            info["rejected"] = fit
        else:
            M, stats = fit
            info.update(stats, drift=loop_error(M, centres[p], length))
            edges.append((i, j, M, centres[p]))
            used.append(info)
        infos.append(info)
        if progress is not None:
            progress(info)
    if edges:
        C = optimise_chunk_graph(chunk_centroids(centres, owner, chunks), edges, length)
        for info, (i, j, M, c) in zip(used, edges):
            info["drift_after"] = loop_error(np.linalg.inv(M) @ np.linalg.inv(C[i]) @ C[j], c, length)
        for k in range(chunks):
            lo, hi = np.flatnonzero(owner == k)[[0, -1]] + [0, 1]
            sim = sim3_parts(C[k])
            out["depth"][lo:hi], out["extrinsics"][lo:hi], moved_ray = _moved(
                out["depth"][lo:hi], out["extrinsics"][lo:hi], None if out["ray"] is None else out["ray"][lo:hi], sim
            )
            if moved_ray is not None:
                out["ray"][lo:hi] = moved_ray
            if gaussians:
                R, t, s = sim
                gaussians[k] = gaussians[k].transformed(R.float(), t.float(), float(s))
    return {"candidates": len(candidates), "applied": len(edges), "loops": infos}


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
    loop_closure: bool = False,
    loop_similarity: float = MIN_SIMILARITY,
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

    ``loop_closure`` (pose-free only; with known poses the caller's frame is already fixed): frame pairs whose
    thumbnails correlate at ``loop_similarity`` or more, at least two chunks apart, are measured by one more pass
    of one chunk's size each and the chunks corrected by a pose graph; ``progress`` gets one entry per loop tried
    and ``extra["streaming"]["loop_closure"]`` records them.
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
    owner = np.zeros(n, dtype=np.int64)  # the chunk whose prediction each frame keeps
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
            if isinstance(fit, str):  # run it again beside anchor frames from everything merged so far
                del pred
                again = _fallback_to_anchors(
                    model, images, out, a, b, done, rng, max_residual, dict(process_res=process_res, **infer_kw)
                )
                if isinstance(again, str):
                    raise InputError(
                        f"{label} cannot be aligned to the frames before it: {fit}; nor through {ANCHORS} anchor "
                        f"frames: {again}; try a larger chunk overlap or chunk size, or, for a model whose passes "
                        f"agree less, a looser merge gate (now {max_residual:g} of the scene)"
                    )
                pred, stats = again
                info.update(stats, overlap_failure=fit)
            else:
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
        owner[done:b] = k
        done = b
        info["seconds"] = time.perf_counter() - t0
        infos.append(info)
        if progress is not None:
            progress(info)
        del pred
    loops = None
    if loop_closure and not known and len(ranges) > 2:
        loops = _close_loops(
            model, images, out, owner, gaussians, chunk_size, rng, max_residual, loop_similarity,
            dict(process_res=process_res, **infer_kw), progress,
        )  # fmt: skip
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
        "loop_closure": loops,
    }
    return Prediction(
        **{name: out[name] for name in PER_VIEW},
        gaussians=Gaussians.cat(gaussians) if gaussians else None,
        is_metric=first["is_metric"],
        scale_factor=first["scale_factor"],
        extra={**first["extra"], "streaming": summary},
    )
