"""Reducing pixel-aligned Gaussians (one per pixel: millions for a few dozen views) to a manageable set.

All functions take unbatched Gaussians (``g[b]`` of a batched set) and return new ones; per-Gaussian inputs
(confidence, masks) are flat in the same (view, row, col) order as the Gaussians. Typical chain: border mask
(``m = border_mask(S, H, W)``; ``g[m]`` and ``conf.flatten()[m]`` alike), then ``reduce_to_budget``
(confidence percentile, opacity prune, voxel merge).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from da3_splat.gaussians import Gaussians

# Relative floor on merged-covariance eigenvalues: only guards rounding (a sum of PD matrices is PD).
_EIG_FLOOR = 1e-12


def _unbatched(g: Gaussians, fn: str) -> None:
    if g.is_batched:
        raise ValueError(f"{fn} takes unbatched Gaussians (got batch shape {tuple(g.batch_shape)}); pass g[b]")


def confidence_mask(conf: Tensor, percentile: float) -> Tensor:
    """Flat bool mask of the values at or above the ``percentile``-th percentile (NaN never kept).

    The threshold is the value at rank floor(p/100 * n) of the n non-NaN values sorted ascending, so with
    distinct values exactly n - floor(p/100 * n) are kept (the top (100 - p) %)."""
    if not 0.0 <= percentile < 100.0:
        raise ValueError(f"percentile must be in [0, 100), got {percentile}")
    conf = conf.reshape(-1)
    valid = ~torch.isnan(conf)
    vals = conf[valid]
    if vals.numel() == 0:
        return valid
    k = min(math.floor(percentile / 100.0 * vals.numel()), vals.numel() - 1)
    threshold = torch.kthvalue(vals, k + 1).values  # the (k+1)-th smallest: rank k, 0-based
    return valid & (conf >= threshold)


def filter_by_confidence(g: Gaussians, conf: Tensor, percentile: float) -> Gaussians:
    """Keep the Gaussians whose confidence is at or above the given percentile (see ``confidence_mask``)."""
    _unbatched(g, "filter_by_confidence")
    if conf.numel() != g.num_gaussians:
        raise ValueError(f"{conf.numel()} confidence values for {g.num_gaussians} Gaussians")
    return g[confidence_mask(conf, percentile).to(g.means.device)]


def border_mask(S: int, H: int, W: int, frac: float = 8 / 256, device=None) -> Tensor:
    """(S*H*W,) bool, False on the int(frac*H) rows and int(frac*W) columns at each border of every view, as
    DA3's exporter trims them (its slicing drops everything when a trim is 0; here a 0 trim keeps all)."""
    th, tw = int(frac * H), int(frac * W)
    mask = torch.zeros(S, H, W, dtype=torch.bool, device=device)
    mask[:, th : H - th, tw : W - tw] = True
    return mask.reshape(-1)


def prune_by_opacity(g: Gaussians, min_opacity: float) -> Gaussians:
    """Keep the Gaussians with opacity >= ``min_opacity``."""
    _unbatched(g, "prune_by_opacity")
    return g[g.opacities >= min_opacity]


# --------------------------------------------------------------------------------------------------
# Voxel merging


def _voxel_keys(q: Tensor, voxel_size: float) -> Tensor:
    """One int64 key per point of ``q`` (positions minus their min corner), equal within a voxel."""
    ijk = torch.floor(q / voxel_size).long()
    dims = ijk.amax(0) + 1
    if math.prod(dims.tolist()) < 2**62:
        return (ijk[:, 0] * dims[1] + ijk[:, 1]) * dims[2] + ijk[:, 2]
    return torch.unique(ijk, dim=0, return_inverse=True)[1]  # grid too fine for a linear key


def _count_voxels(q: Tensor, voxel_size: float) -> int:
    keys = torch.sort(_voxel_keys(q, voxel_size)).values
    return int((keys[1:] != keys[:-1]).sum()) + 1


def _group(keys: Tensor) -> tuple[Tensor, Tensor]:
    """Group id per element (0..m-1, in key order) and the size of each group. Sort-based: on CPU it is
    faster and steadier than ``torch.unique(return_inverse=True)``."""
    sorted_keys, order = torch.sort(keys)
    start = torch.ones_like(sorted_keys, dtype=torch.bool)
    start[1:] = sorted_keys[1:] != sorted_keys[:-1]
    ids_sorted = torch.cumsum(start, 0) - 1
    inv = torch.empty_like(ids_sorted).scatter_(0, order, ids_sorted)
    counts = torch.bincount(ids_sorted)
    return inv, counts


def _search_voxel_size(means: Tensor, target: int, tol: float = 0.02, max_iter: int = 30) -> float:
    """A voxel size whose occupied-voxel count is <= target, and >= (1 - tol) * target where one is found.

    The count falls roughly as size^-a (a ~ 2 for surfaces, 3 for volumes) but jumps with grid alignment,
    so: step out until the target is bracketed, then interpolate in log-log inside the bracket (kept within
    its inner 90 % so it always shrinks) aiming at the middle of the accepted band, and return the best size
    seen that meets the budget. Each probe is one sort of N keys."""
    q = means - means.amin(0)
    extent = float(q.max().clamp(min=1e-12))
    size, best, best_n = extent / target**0.5, 2.0 * extent, 1  # a voxel of twice the extent holds all
    lo = hi = None  # (size, count) with count > target / <= target
    aim = target * (1 - tol / 2)
    for _ in range(max_iter):
        n = _count_voxels(q, size)
        if n > target:
            lo = (size, n)
        else:
            hi = (size, n)
            if n > best_n:
                best, best_n = size, n
            if n >= (1 - tol) * target:
                break
        if lo is None or hi is None:  # not bracketed yet: step assuming a ~ 2, at least 2.5x
            step = (n / aim) ** 0.5
            size *= max(step, 2.5) if hi is None else min(step, 1 / 2.5)
            if size < 1e-6 * extent:  # (near-)coincident points: no finer grid separates them
                break
            continue
        if hi[0] / lo[0] < 1 + 1e-3:  # counts jump with grid alignment; finer sizes will not help
            break
        a = math.log(lo[1] / hi[1]) / math.log(hi[0] / lo[0])
        t = math.log(lo[1] / aim) / max(a, 1e-6) / math.log(hi[0] / lo[0])  # fraction of the log interval
        size = lo[0] * (hi[0] / lo[0]) ** min(max(t, 0.05), 0.95)
    return best


def _merge_groups(g: Gaussians, inv: Tensor, m: int) -> Gaussians:
    """Merge Gaussians with equal group id ``inv`` (0..m-1): opacity-weighted moments, covered opacity."""
    from da3_splat.geometry import matrix_to_quat_wxyz

    w = g.opacities.double()
    total = torch.zeros(m, dtype=w.dtype, device=w.device).index_add_(0, inv, w)
    w = torch.where(total[inv] > 0, w, torch.ones_like(w))  # an all-transparent group: plain average
    total = torch.zeros_like(total).index_add_(0, inv, w)

    def wmean(x: Tensor, dtype: torch.dtype) -> Tensor:
        flat = (w.to(dtype).view(-1, *[1] * (x.dim() - 1)) * x.to(dtype)).reshape(x.shape[0], -1)
        out = torch.zeros(m, flat.shape[1], dtype=dtype, device=w.device).index_add_(0, inv, flat)
        return (out / total.to(dtype)[:, None]).reshape(m, *x.shape[1:])

    # Geometry in float64 (12 numbers per Gaussian; eigh wants it), SH in its own dtype (up to 48 numbers).
    mu = wmean(g.means, torch.float64)
    d = g.means.double() - mu[inv]
    cov = wmean(g.covariances().double() + d[:, :, None] * d[:, None, :], torch.float64)
    evals, evecs = torch.linalg.eigh(0.5 * (cov + cov.mT))
    evals = evals.clamp(min=_EIG_FLOOR * evals[:, -1:].clamp(min=1e-300))
    sign = torch.linalg.det(evecs).sign()[:, None, None]
    evecs = torch.cat([evecs[..., :1] * sign, evecs[..., 1:]], dim=-1)  # proper rotation (det +1)

    # Opacity: how much of the merged footprint the members cover, 1 - exp(-sum_i a_i A_i / A) with A the area of
    # the two largest axes (members overlapping at random, as translucent layers do), and never less than the
    # most opaque member. Not 1 - prod(1 - a_i): pixel-aligned Gaussians in a voxel mostly sit side by side on a
    # surface, and the product would drive any voxel with tens of members to opacity 1, turning faint floaters into
    # opaque blobs; coverage stays near the largest member's opacity for those. Not max alone either: NVS heads
    # that stack translucent layers from several views (opacity ~0.2 each) would merge into a see-through surface.
    alpha = torch.full((m,), -1.0, dtype=g.opacities.dtype, device=w.device)
    alpha = alpha.scatter_reduce(0, inv, g.opacities, reduce="amax")
    s = g.scales.double().sort(dim=-1).values
    covered = torch.zeros(m, dtype=torch.float64, device=w.device).index_add_(
        0, inv, g.opacities.double() * s[:, 1] * s[:, 2]
    )
    merged_area = (evals[:, 1] * evals[:, 2]).sqrt().clamp(min=1e-300)
    coverage = 1 - torch.exp(-covered / merged_area)
    alpha = torch.maximum(alpha, coverage.to(alpha.dtype))
    return Gaussians(
        means=mu.to(g.means.dtype),
        quats=matrix_to_quat_wxyz(evecs).to(g.quats.dtype),
        scales=evals.sqrt().to(g.scales.dtype),
        opacities=alpha,
        sh=wmean(g.sh, g.sh.dtype),
    )


def voxel_merge(g: Gaussians, voxel_size: float | None = None, target_count: int | None = None) -> Gaussians:
    """Merge the Gaussians that fall in the same voxel of a regular grid anchored at the means' min corner
    (give exactly one of ``voxel_size`` and ``target_count``).

    Merged: opacity-weighted mean and SH; covariance = opacity-weighted second moment
    sum_i w_i (S_i + (mu_i - mu)(mu_i - mu)^T) / sum_i w_i, back to scale + quat by eigen-decomposition;
    opacity = the members' coverage of the merged footprint, at least their max (see ``_merge_groups``).
    Gaussians alone in their voxel are passed through untouched and come first in the result, then one Gaussian
    per shared voxel (in key order).
    With ``target_count`` the voxel size is searched so the result has <= target_count Gaussians, close to it.
    Returns ``g`` itself when nothing is merged.
    """
    _unbatched(g, "voxel_merge")
    if (voxel_size is None) == (target_count is None):
        raise ValueError("voxel_merge: give exactly one of voxel_size and target_count")
    if g.num_gaussians == 0:
        return g
    if not torch.isfinite(g.means).all():
        raise ValueError("means: contains NaN or infinite values")
    if target_count is not None:
        if target_count < 1:
            raise ValueError(f"target_count must be >= 1, got {target_count}")
        if g.num_gaussians <= target_count:
            return g
        voxel_size = _search_voxel_size(g.means, target_count)
    if not voxel_size > 0:
        raise ValueError(f"voxel_size must be > 0, got {voxel_size}")
    inv, counts = _group(_voxel_keys(g.means - g.means.amin(0), voxel_size))
    alone = counts[inv] == 1
    if alone.all():
        return g
    # Renumber the shared voxels 0..m-1 so the merge only touches those.
    shared = counts > 1
    shared_ids = (torch.cumsum(shared, 0) - 1)[inv[~alone]]
    merged = _merge_groups(g[~alone], shared_ids, int(shared.sum()))
    return Gaussians.cat([g[alone], merged])


def reduce_to_budget(
    g: Gaussians,
    conf: Tensor | None = None,
    *,
    max_gaussians: int,
    min_opacity: float = 0.005,
    conf_percentile: float | None = None,
) -> Gaussians:
    """Cheap, lossless-ish filters first, then the lossy merge only if still over budget: confidence
    percentile (when given; needs ``conf``), opacity prune, voxel merge to ``max_gaussians``."""
    _unbatched(g, "reduce_to_budget")
    if conf_percentile is not None:
        if conf is None:
            raise ValueError("conf_percentile needs per-Gaussian conf")
        g = filter_by_confidence(g, conf, conf_percentile)
    if min_opacity > 0:
        g = prune_by_opacity(g, min_opacity)
    if g.num_gaussians > max_gaussians:
        g = voxel_merge(g, target_count=max_gaussians)
    return g
