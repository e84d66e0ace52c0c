"""Loop closure for streaming runs (:mod:`da3_splat.streaming`): when the trajectory comes back to a place it saw
chunks earlier, the chain of chunk alignments has drifted by then; a pass over frames from both visits measures
that drift, and a Sim(3) pose graph over the chunks spreads it along the chain.

- **Candidates** (:func:`loop_candidates`): frame pairs at least two chunks apart whose thumbnails
  (:func:`frame_descriptors`, zero-mean unit-norm 12x16 colour images, so the dot product is their normalised
  cross-correlation) look alike after the view has left in between, best first, one per neighbourhood.
- **Verification** (:func:`measure_loop`): DA3 runs once on ``half`` frames around each end (one chunk's worth, so
  memory stays bounded) and that pass is fitted to the merged frames of each visit separately, with the same
  robust overlap fit as the chain (:func:`da3_splat.streaming_align.align_chunk`). Both fits must pass its inlier
  and residual tests; a candidate that fails is recorded and not used.
- **Pose graph** (:func:`optimise_chunk_graph`): one similarity correction per chunk (chunk 1 fixed), identity
  edges between consecutive chunks (the chain made them agree) and one edge per verified loop; least squares on
  rotation, translation (over the scene depth) and log-scale, by Levenberg-Marquardt. Each correction acts about
  its chunk's camera centroid, so a small rotation does not become a large translation far from the origin.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch.func import jvp

from da3_splat.geometry import so3_exp, so3_log
from da3_splat.streaming_align import FIT_VIEWS, align_chunk

DESCRIPTOR_SIZE = (16, 12)  # (width, height) of the thumbnails compared to find revisits
MIN_SIMILARITY = 0.93  # normalised cross-correlation of two thumbnails for a loop candidate
LEFT_SIMILARITY = 0.75  # a frame this unlike p shows the camera left p's view (so a later match is a return)
LOOP_BLOCK = 256  # rows of the similarity matrix scored at once
# Residual units of the pose graph: 1 degree of rotation weighs as 1% of the scene depth in translation and as 1%
# in scale, so no term dominates by its units alone.
ROT_UNIT, TRANS_UNIT, SCALE_UNIT = np.radians(1.0), 0.01, 0.01


def frame_descriptors(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) images -> (N, D) float64 thumbnails, zero mean and unit norm each (a flat image gives zeros)."""
    thumbs = np.stack([cv2.resize(im, DESCRIPTOR_SIZE, interpolation=cv2.INTER_AREA) for im in images])
    d = thumbs.reshape(len(images), -1).astype(np.float64)
    d -= d.mean(1, keepdims=True)
    norm = np.linalg.norm(d, axis=1, keepdims=True)
    return np.divide(d, norm, out=np.zeros_like(d), where=norm > 1e-9)


def loop_candidates(
    desc: np.ndarray, owner: np.ndarray, max_candidates: int, min_similarity: float = MIN_SIMILARITY
) -> list[tuple[int, int, float]]:
    """Revisits (p, q, similarity), best first: frames p < q whose thumbnails correlate at ``min_similarity`` or
    more, in chunks at least two apart (``owner[f]``: the chunk frame f belongs to), after the view has left p in
    between (a frame between them correlates under ``LEFT_SIMILARITY`` with p; else q is the same stretch seen a
    little later, not a return). One pair per neighbourhood: a pair whose chunks are both within one chunk of a
    better pair's is dropped (it would measure the same loop again). Rows are scored in blocks, so memory stays
    linear in the number of frames."""
    n = len(desc)
    desc32 = desc.astype(np.float32)
    found_p, found_q, found_s = [], [], []
    for lo in range(0, n, LOOP_BLOCK):
        rows = np.arange(lo, min(n, lo + LOOP_BLOCK))
        sim = desc32[rows] @ desc32.T  # (block, n)
        later = np.arange(n)[None, :] > rows[:, None]
        away = later & (sim < LEFT_SIMILARITY)
        left_at = np.where(away.any(1), away.argmax(1), n)  # first later frame that no longer looks like p
        ok = (np.arange(n)[None, :] > left_at[:, None]) & (sim >= min_similarity)
        ok &= owner[None, :] - owner[rows][:, None] >= 2
        r, q = np.nonzero(ok)
        found_p.append(rows[r])
        found_q.append(q)
        found_s.append(sim[r, q])
    p, q, s = (np.concatenate(x) if x else np.empty(0) for x in (found_p, found_q, found_s))
    chosen: list[tuple[int, int, float]] = []
    for k in np.argsort(-s, kind="stable"):
        a, b = int(p[k]), int(q[k])
        ca, cb = owner[a], owner[b]
        if any(abs(ca - owner[c]) <= 1 and abs(cb - owner[d]) <= 1 for c, d, _ in chosen):
            continue
        chosen.append((a, b, float(s[k])))
        if len(chosen) == max_candidates:
            break
    return chosen


def _window(centre: int, half: int, n: int) -> list[int]:
    lo = min(max(0, centre - half // 2), max(0, n - half))
    return list(range(lo, min(n, lo + half)))


def sim3_matrix(R: torch.Tensor, t: torch.Tensor, s) -> np.ndarray:
    """x -> s R x + t as a 4x4 float64 matrix."""
    M = np.eye(4)
    M[:3, :3] = float(s) * R.double().numpy()
    M[:3, 3] = t.double().numpy()
    return M


def sim3_parts(M: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """4x4 similarity -> (R, t, s) float64 tensors."""
    s = float(np.cbrt(np.linalg.det(M[:3, :3])))
    return torch.from_numpy(M[:3, :3] / s), torch.from_numpy(M[:3, 3].copy()), torch.tensor(s, dtype=torch.float64)


def measure_loop(model, images, world: dict, p: int, q: int, half: int, rng, max_residual: float, infer_kw: dict):
    """The drift between visits p and q: DA3 on ``half`` frames around each, fitted to each visit's merged frames
    (``world``: per-frame depth, depth_conf, extrinsics, intrinsics of everything merged) -> (M, stats) with M the
    4x4 similarity taking q's world coordinates to p's (identity when nothing drifted), or a string saying why
    the loop cannot be trusted."""
    n = len(images)
    around_p, around_q = _window(p, half, n), _window(q, half, n)
    pred = model.infer([images[i] for i in around_p + around_q], **infer_kw)
    if pred.extrinsics is None:
        return "the model returned no cameras"
    views = vars(pred)
    fits = []
    for frames, lo, hi in ((around_p, 0, len(around_p)), (around_q, len(around_p), len(around_p) + len(around_q))):
        mine = {k: views[k][lo:hi] for k in FIT_VIEWS}
        theirs = {k: world[k][frames] for k in mine}
        fit = align_chunk(theirs, mine, rng, max_residual)
        if isinstance(fit, str):
            return f"frames {frames[0] + 1}-{frames[-1] + 1}: {fit}"
        fits.append(fit)
    (to_p, stats_p), (to_q, stats_q) = fits
    M = sim3_matrix(*to_p) @ np.linalg.inv(sim3_matrix(*to_q))
    return M, {"residual": max(stats_p["residual"], stats_q["residual"]),
               "inliers": min(stats_p["inliers"], stats_q["inliers"])}  # fmt: skip


def _similarities(params: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(K, 7) [rotation vector, translation, log-scale] acting about (K, 3) centres -> (K, 4, 4)."""
    R = so3_exp(params[:, :3])
    s = params[:, 6].exp()[:, None, None]
    t = centres + params[:, 3:6] - (s * R @ centres[..., None]).squeeze(-1)  # x -> c + s R (x - c) + tau
    top = torch.cat([s * R, t[..., None]], -1)
    bottom = torch.tensor([0.0, 0, 0, 1], dtype=params.dtype).expand(len(params), 1, 4)
    return torch.cat([top, bottom], 1)


def edge_residual(E: torch.Tensor, centre: torch.Tensor, length: float) -> torch.Tensor:
    """(..., 4, 4) similarities that should be the identity -> (..., 7) residuals in the graph's units: rotation
    angle times axis, translation about ``centre`` over ``length``, log-scale."""
    s = torch.linalg.det(E[..., :3, :3]).clamp(min=1e-30) ** (1 / 3)
    rotation = so3_log(E[..., :3, :3] / s[..., None, None])
    moved = (E[..., :3, :3] @ centre[..., None]).squeeze(-1) + E[..., :3, 3] - centre  # where E moves the centre
    return torch.cat([rotation / ROT_UNIT, moved / length / TRANS_UNIT, (s.log() / SCALE_UNIT)[..., None]], -1)


def optimise_chunk_graph(
    centres: np.ndarray, loops: list[tuple[int, int, np.ndarray, np.ndarray]], length: float, iters: int = 30
) -> np.ndarray:
    """Per-chunk corrections (K, 4, 4), chunk 0's the identity.

    centres: (K, 3) camera centroid of each chunk's frames (the point its correction acts about); loops: (i, j, M,
    c) with M the similarity taking chunk j's world coordinates to chunk i's and c a point near the loop (its
    residual is taken about c); length: the scene's depth scale. Minimises the squared :func:`edge_residual` of
    M^-1 C_i^-1 C_j over the loops plus that of C_k^-1 C_k+1 over consecutive chunks (the chain made them agree),
    by Levenberg-Marquardt with forward-mode Jacobians per edge: a handful of steps (first-order methods crawl
    here, as rotation and translation are coupled through the lever arm of every chunk)."""
    K = len(centres)
    if not loops or K < 2:
        return np.tile(np.eye(4), (K, 1, 1))
    c = torch.from_numpy(np.asarray(centres, np.float64))
    eye = np.eye(4)
    # every edge (a, b, M^-1, centre): consecutive chunks, then the loops
    a = torch.tensor([*range(K - 1), *(lp[0] for lp in loops)], dtype=torch.long)
    b = torch.tensor([*range(1, K), *(lp[1] for lp in loops)], dtype=torch.long)
    M_inv = torch.from_numpy(np.stack([eye] * (K - 1) + [np.linalg.inv(lp[2]) for lp in loops]))
    at = torch.cat([c[1:], torch.from_numpy(np.stack([lp[3] for lp in loops]).astype(np.float64))])

    def edges(XA: torch.Tensor, XB: torch.Tensor) -> torch.Tensor:  # (E, 7) residuals from each edge's two chunks
        E = M_inv @ torch.linalg.inv(_similarities(XA, c[a])) @ _similarities(XB, c[b])
        return edge_residual(E, at, length)

    def edge_jacobians(XA: torch.Tensor, XB: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(E, 7, 7) d residual / d chunk a's and chunk b's parameters: edge e depends on its own rows only, so one
        forward-mode product per parameter gives that column for every edge at once."""
        cols_a, cols_b = [], []
        for k in range(7):
            tangent = torch.zeros_like(XA)
            tangent[:, k] = 1.0
            cols_a.append(jvp(lambda x: edges(x, XB), (XA,), (tangent,))[1])
            cols_b.append(jvp(lambda x: edges(XA, x), (XB,), (tangent,))[1])
        return torch.stack(cols_a, -1), torch.stack(cols_b, -1)

    n = 7 * (K - 1)

    def residuals(X: torch.Tensor) -> torch.Tensor:  # X: (K, 7), chunk 0's row zero
        return edges(X[a], X[b])

    X = torch.zeros(K, 7, dtype=torch.float64)
    r = residuals(X)
    damping = 1e-3
    for _ in range(iters):
        # Normal equations assembled block by block (each edge touches two chunks): memory (7K)^2, not edges x 7K.
        Ja, Jb = edge_jacobians(X[a], X[b])
        H = torch.zeros(K, K, 7, 7, dtype=torch.float64)
        g = torch.zeros(K, 7, dtype=torch.float64)
        for (i, Ji), (j, Jj) in ((x, y) for x in ((a, Ja), (b, Jb)) for y in ((a, Ja), (b, Jb))):
            H.index_put_((i, j), Ji.transpose(1, 2) @ Jj, accumulate=True)
        for i, Ji in ((a, Ja), (b, Jb)):
            g.index_add_(0, i, (Ji.transpose(1, 2) @ r[..., None]).squeeze(-1))
        H = H[1:, 1:].permute(0, 2, 1, 3).reshape(n, n)  # chunk 0 is fixed
        H.diagonal().mul_(1 + damping).add_(1e-12)
        step = torch.linalg.solve(H, -g[1:].reshape(n))
        X_new = torch.cat([X[:1], X[1:] + step.view(K - 1, 7)])
        r_new = residuals(X_new)
        energy, energy_new = float(r.square().sum()), float(r_new.square().sum())
        if energy_new < energy:
            X, r, damping = X_new, r_new, max(damping / 3, 1e-9)
            if energy - energy_new <= 1e-12 * energy or float(step.abs().max()) < 1e-9:
                break
        else:
            damping *= 4
    return torch.cat([torch.eye(4, dtype=torch.float64)[None], _similarities(X[1:], c[1:])]).numpy()


def loop_error(M: np.ndarray, centre: np.ndarray, length: float) -> dict:
    """A loop's discrepancy in words: rotation (deg), translation (share of the scene depth) and scale."""
    r = edge_residual(torch.from_numpy(M)[None], torch.from_numpy(centre)[None], length)[0].numpy()
    return {
        "rotation_deg": float(np.linalg.norm(r[:3]) * np.degrees(ROT_UNIT)),
        "translation": float(np.linalg.norm(r[3:6]) * TRANS_UNIT),
        "scale": float(np.exp(r[6] * SCALE_UNIT)),
    }


def chunk_centroids(centres: np.ndarray, owner: np.ndarray, chunks: int) -> np.ndarray:
    """(K, 3) mean of each chunk's camera centres (``centres`` (N, 3) per frame; ``owner[f]``: the chunk that wrote
    frame f)."""
    return np.stack([centres[owner == k].mean(0) for k in range(chunks)])
