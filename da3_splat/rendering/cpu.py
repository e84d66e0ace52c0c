"""Differentiable 3DGS renderer in plain torch, for CPU (it runs on any device; CUDA uses gsplat instead).

Projection (`projection.py`) and SH (`da3_splat.sh`) follow gsplat 1.4.0's numerics; compositing never forms
a pixels x Gaussians tensor. Each Gaussian's footprint (the pixels where its alpha can reach 1/255, within the 16-px
tiles gsplat gives it) is covered by SUB x SUB sub-tiles. The (sub-tile, Gaussian) entries, made front to back, are
stably sorted by sub-tile, so each sub-tile's entries form a contiguous run in depth order. Alpha is evaluated on an
entry's SUB x SUB pixels at once, and transmittance is a segmented exclusive product along the runs (exp of a
segmented cumulative sum of log(1 - alpha)). Runs are processed in front-to-back slabs, and a sub-tile whose pixels
have all stopped (below) takes no more slabs, so Gaussians hidden behind opaque surfaces cost nothing, as in the
kernel: 70-90% of the entries of pixel-aligned scenes. The backward pass is written by hand. Frames rendered
without autograd take `fast.py` instead: the same rules, arranged for speed rather than for a backward pass.

Semantics are gsplat's CUDA kernels': pixel centres at (x + 0.5, y + 0.5); sigma = 1/2 (a dx^2 + c dy^2) + b dx dy
with conic (a, b, c); alpha = min(o exp(-sigma), 0.999); pairs with sigma < 0 or alpha < 1/255 are skipped; a
Gaussian reaches only the 16x16 tiles its radius box overlaps (isect_tiles); culled Gaussians (radius 0) add
nothing; depth ties keep Gaussian order (stable sorts); a pixel stops before the Gaussian that would bring its
transmittance to 1e-4 or below.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from da3_splat.rendering import fast
from da3_splat.rendering.projection import perspective_projection, quat_scale_to_covariance, world_to_camera
from da3_splat.sh import eval_sh

ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
LOG_T_MIN = math.log(1e-4)  # the kernel stops a pixel before the Gaussian that would take its T to 1e-4 or below
TILE_SIZE = 16
SUB = 4  # compositing sub-tile (px): small, since a pixel-sized splat would waste most of a bigger one
ENTRY_BUDGET = 1 << 14  # entries per step: temporaries of a few MB are reused from malloc's heap, not faulted in
RUN_BUDGET = 1 << 12  # sub-tiles composited together
SLAB = 32  # entries per sub-tile in the first front-to-back step; later steps grow by half the depth reached
FORWARD_ONLY = True  # without autograd, render with `fast.py` (same image, several times faster); False: never


def project(
    means,
    quats,
    scales,
    viewmats,
    Ks,
    width,
    height,
    eps2d=0.3,
    near_plane=0.01,
    far_plane=1e10,
    calc_compensations=False,
):
    """gsplat's fused pinhole projection (`fully_fused_projection`), with CUDA's culling and a finite gradient for
    culled ones.

    Returns radii [C, N] int32 (0 = culled), means2d [C, N, 2], depths [C, N], conics [C, N, 3], compensations.
    """
    covars = quat_scale_to_covariance(quats, scales)
    means_c, covars_c = world_to_camera(means, covars, viewmats)
    depths = means_c[..., 2]
    in_range = (depths >= near_plane) & (depths <= far_plane)
    # A Gaussian at depth 0 would put inf into the projection and NaN into every gradient through 0 * inf;
    # culled Gaussians contribute nothing, so project a harmless stand-in for them instead.
    means_c = torch.where(in_range[..., None], means_c, means_c.new_tensor([0.0, 0.0, 1.0]))
    means2d, cov2d = perspective_projection(means_c, covars_c, Ks, width, height)
    det_orig = cov2d[..., 0, 0] * cov2d[..., 1, 1] - cov2d[..., 0, 1] * cov2d[..., 1, 0]
    cov2d = cov2d + eps2d * torch.eye(2, dtype=cov2d.dtype, device=cov2d.device)
    det_blur = cov2d[..., 0, 0] * cov2d[..., 1, 1] - cov2d[..., 0, 1] * cov2d[..., 1, 0]
    compensations = (det_orig / det_blur).clamp(min=0.0).sqrt() if calc_compensations else None
    det = det_blur.clamp(min=1e-10)
    conics = torch.stack([cov2d[..., 1, 1], -(cov2d[..., 0, 1] + cov2d[..., 1, 0]) / 2, cov2d[..., 0, 0]], -1)
    conics = conics / det[..., None]
    with torch.no_grad():  # radius = ceil(3 sqrt(largest eigenvalue)), as gsplat (not differentiable)
        b = (cov2d[..., 0, 0] + cov2d[..., 1, 1]) / 2
        radius = torch.ceil(3.0 * torch.sqrt(b + torch.sqrt((b * b - det).clamp(min=0.01))))
        x, y = means2d.detach().unbind(-1)
        keep = in_range & (det_blur > 0) & (x + radius > 0) & (x - radius < width) & (y + radius > 0)
        keep &= y - radius < height
        radii = torch.where(keep, radius, 0).int()
    return radii, means2d, depths, conics, compensations


def sh_colors(means: Tensor, sh: Tensor, viewmats: Tensor, sh_degree: int) -> Tensor:
    """Per-camera colours [C, N, 3] = clamp_min(SH(mean - camera centre) + 0.5, 0), as gsplat's rasterization."""
    campos = torch.inverse(viewmats)[:, :3, 3]
    dirs = means[None] - campos[:, None]
    return (eval_sh(sh_degree, dirs, sh) + 0.5).clamp_min(0.0)


# --------------------------------------------------------------------------------------------------
# Footprints: which pixels each Gaussian can reach, as (sub-tile, Gaussian) entries in front-to-back order


@torch.no_grad()
def _footprints(means2d, conics, opacities, radii, depths, width, height):
    """Visible Gaussians front to back: flat ids (c * N + n) and pixel boxes [lo, hi) as (x, y)."""
    gid = ((radii > 0) & (opacities >= ALPHA_MIN)).flatten().nonzero()[:, 0]
    gid = gid[torch.sort(depths.flatten()[gid], stable=True)[1]]  # ties keep Gaussian order, as gsplat's sort
    m, r, q = means2d.reshape(-1, 2)[gid], radii.flatten()[gid].to(means2d.dtype), conics.reshape(-1, 3)[gid]
    # alpha >= 1/255 needs sigma <= log(255 o), and sigma >= dx^2 / (2 cov_xx): usually tighter than 3 sigma.
    log_t = torch.log(255.0 * opacities.flatten()[gid]).clamp(min=0.0)
    inv_det = (q[:, 0] * q[:, 2] - q[:, 1] ** 2).clamp(min=1e-20)
    ext = (2.0 * log_t[:, None] * q[:, [2, 0]] / inv_det[:, None]).sqrt() * 1.001 + 1e-3  # from cov_xx, cov_yy
    lo, hi = torch.ceil(m - ext - 0.5), torch.floor(m + ext - 0.5) + 1
    # ... intersected with the 16-px tiles gsplat's isect_tiles gives the Gaussian (radius box, rounded out).
    tiles = means2d.new_tensor([math.ceil(width / TILE_SIZE), math.ceil(height / TILE_SIZE)])
    t_lo = torch.floor(m / TILE_SIZE - r[:, None] / TILE_SIZE).clamp(min=0.0)
    t_hi = torch.minimum(torch.ceil(m / TILE_SIZE + r[:, None] / TILE_SIZE).clamp(min=0.0), tiles)
    size = means2d.new_tensor([width, height])
    lo = torch.minimum(torch.maximum(lo, t_lo * TILE_SIZE).clamp(min=0), size).long()
    hi = torch.maximum(torch.minimum(torch.minimum(hi, t_hi * TILE_SIZE), size).long(), lo)
    return gid, lo, hi


@torch.no_grad()
def _entries(gid, lo, hi, n_gauss, width, height):
    """One entry per (SUB x SUB sub-tile, Gaussian) overlap, sorted by sub-tile and, within it, front to back.

    Returns the global sub-tile index (camera-major) and the Gaussian's position in the depth order.
    """
    tw, th = -(-width // SUB), -(-height // SUB)
    t_lo, t_hi = lo // SUB, (hi + SUB - 1) // SUB
    n_tx = t_hi[:, 0] - t_lo[:, 0]
    count = n_tx * (t_hi[:, 1] - t_lo[:, 1])
    item = torch.repeat_interleave(torch.arange(len(gid), device=gid.device), count)
    off = torch.arange(len(item), device=gid.device) - (count.cumsum(0) - count)[item]
    tx = t_lo[item, 0] + off % n_tx[item]
    ty = t_lo[item, 1] + torch.div(off, n_tx[item], rounding_mode="floor")
    cam = torch.div(gid[item], n_gauss, rounding_mode="floor")
    key = (cam * th + ty) * tw + tx
    key = key.int() if len(cam) and int(key.max()) < 2**31 else key  # int32 sorts ~2x faster
    tile, order = torch.sort(key, stable=True)  # stable: keeps depth order per tile
    return tile, item[order]


def _chunks(tile, budget=ENTRY_BUDGET):
    """Entry ranges of whole sub-tiles with about `budget` entries each (bounds memory; a tile is never split)."""
    if len(tile) <= budget:
        return [(0, len(tile))] if len(tile) else []
    starts = _Segments(tile).starts
    cuts = torch.arange(budget, len(tile), budget, device=tile.device)
    cuts = starts[(torch.searchsorted(starts, cuts, right=True) - 1).clamp(min=0)]
    edges = sorted({0, len(tile), *cuts.tolist()})
    return list(itertools.pairwise(edges))


class _Segments:
    """Runs of equal sub-tile index in the sorted entries: each run is one sub-tile's front-to-back list.

    Sums over runs use segment_reduce: index_add_ into few distinct rows is ~100x slower on CPU.
    """

    def __init__(self, tile):
        first = torch.ones_like(tile, dtype=torch.bool)
        first[1:] = tile[1:] != tile[:-1]
        self.starts = first.nonzero()[:, 0]
        self.offsets = torch.cat([self.starts, self.starts.new_tensor([len(tile)])])
        self.ends = self.offsets[1:] - 1
        self.seg = first.long().cumsum(0) - 1  # run index of every entry

    def sum(self, x):
        return torch.segment_reduce(x, "sum", offsets=self.offsets, axis=0)

    def min(self, x):
        return torch.segment_reduce(x, "min", offsets=self.offsets, axis=0)

    def cumsum(self, x):
        """Inclusive cumulative sum along entries (dim 0) restarting at every run.

        One global cumsum in x's own dtype, with each run's first value offset by minus the previous run's total:
        the running sum returns to ~0 at every run, so float32 keeps its precision over millions of entries.
        """
        y = x.clone()
        y[self.starts[1:]] -= self.sum(x)[:-1]
        inc = y.cumsum(0)
        return inc.sub_((inc[self.starts] - x[self.starts])[self.seg])  # minus the running sum before the run


def _alphas(tile, p, lo, hi, width, height):
    """Alpha per entry and sub-tile pixel (row-major SUB x SUB), 0 where the kernel skips the pair.

    p: per-entry [mx, my, a, b, c, o]; lo, hi: per-entry pixel box.
    """
    dx, dy, px, py = _deltas(tile, p, width, height)
    a, b, c, log_o = p[:, 2:3], p[:, 3:4], p[:, 4:5], torch.log(p[:, 5:6])
    # sigma = column term + row term + cross term; a pixel outside the box gets an infinite term (alpha 0),
    # and log(o) joins the row term so that exp(-s) = o exp(-sigma) directly.
    col = torch.where((px >= lo[:, :1]) & (px < hi[:, :1]), 0.5 * a * dx * dx, torch.inf)
    row = torch.where((py >= lo[:, 1:]) & (py < hi[:, 1:]), 0.5 * c * dy * dy - log_o, torch.inf)
    s = (col[:, None, :] + row[:, :, None]).addcmul_((b * dx)[:, None, :], dy[:, :, None])
    keep = s >= -log_o[:, :, None]  # sigma >= 0
    alpha = s.neg_().exp_()  # in place: this runs on millions of values per frame
    keep &= alpha >= ALPHA_MIN
    return alpha.clamp_(max=ALPHA_MAX).masked_fill_(~keep, 0.0).flatten(1)


def _deltas(tile, p, width, height):
    """Mean minus pixel centre (as the kernel) for the SUB columns and rows of each entry's sub-tile, and the
    columns' and rows' pixel indices."""
    tw, th = -(-width // SUB), -(-height // SUB)
    ar = torch.arange(SUB, device=tile.device)
    px = (tile % tw * SUB)[:, None] + ar
    py = (torch.div(tile, tw, rounding_mode="floor") % th * SUB)[:, None] + ar
    return p[:, :1] - (px + 0.5), p[:, 1:2] - (py + 0.5), px, py


# --------------------------------------------------------------------------------------------------
# Compositing, with a hand-written backward (saves alpha and T of the entries still visible: 8 bytes per pixel)


@torch.no_grad()
def _front_to_back(tile, item, params, colors, lo, hi, n_cams, width, height, out):
    """Alpha-blend the entries into `out` (sub-tiles, SUB * SUB, D + 1) in slabs: the first SLAB entries of every
    sub-tile, then the next ones of the sub-tiles with a pixel still open, and so on.

    Yields, per group of sub-tiles, the entries that reach a pixel (indices into tile / item, in entry order),
    their alphas after the early stop and the transmittance before them (from the unmasked alphas, which is the
    kernel's up to the stop).
    """
    runs = _Segments(tile)
    length = runs.offsets.diff()
    in_image = _tile(out.new_ones(n_cams, height, width, 1))[..., 0] > 0  # (sub-tiles, SUB * SUB)
    for r0 in range(0, len(length), RUN_BUDGET):
        r1 = min(r0 + RUN_BUDGET, len(length))
        log_t = out.new_zeros(r1 - r0, SUB * SUB)  # log T before the next slab (padding pixels count as closed)
        open_ = in_image[tile[runs.starts[r0:r1]]]
        active, depth, parts = length[r0:r1] > 0, 0, []
        while active.any():
            act = active.nonzero()[:, 0]
            k = min(max(SLAB, depth // 2), max(1, ENTRY_BUDGET // len(act)))
            count = (length[r0 + act] - depth).clamp(max=k)  # entries depth .. depth + k of each active sub-tile
            j = torch.repeat_interleave(torch.arange(len(act), device=act.device), count)
            r = act[j]
            sel = runs.starts[r0 + r] + depth + torch.arange(len(j), device=j.device) - (count.cumsum(0) - count)[j]
            t_, it = tile[sel], item[sel]
            alpha = _alphas(t_, params[it], lo[it], hi[it], width, height)
            log_1ma = torch.log1p(-alpha)
            segs = _Segments(t_)
            incl = segs.cumsum(log_1ma).add_(log_t[r])
            t = (incl - log_1ma).exp_()
            alpha.masked_fill_(incl <= LOG_T_MIN, 0.0)  # the early stop; T only falls, so it is this and all later
            w = (alpha * t)[:, :, None]
            out[t_[segs.starts]] += segs.sum(torch.cat([w * colors[it][:, None, :], w], -1))
            r_end = r[segs.ends]
            log_t[r_end] = incl[segs.ends]
            open_[r_end] &= incl[segs.ends] > LOG_T_MIN
            depth += k
            active &= (length[r0:r1] > depth) & open_.any(1)
            live = alpha.any(1).nonzero()[:, 0]
            parts.append((sel[live], alpha[live], t[live]))
        sel, alpha, t = (torch.cat(x) for x in zip(*parts))
        order = torch.argsort(sel)  # back to entry order: each sub-tile's entries contiguous, front to back
        yield sel[order], alpha[order], t[order]


class _Composite(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, radii, depths, width, height, absgrad):
        C, N, D = colors.shape
        gid, lo, hi = _footprints(means2d, conics, opacities, radii, depths, width, height)
        tile, item = _entries(gid, lo, hi, N, width, height)
        params = torch.cat([means2d, conics, opacities[..., None]], -1).reshape(C * N, 6)[gid]
        colors_d = colors.reshape(C * N, D)[gid]
        out = colors.new_zeros(C * -(-height // SUB) * -(-width // SUB), SUB * SUB, D + 1)
        ctx.parts = list(_front_to_back(tile, item, params, colors_d, lo, hi, C, width, height, out))
        ctx.save_for_backward(params, colors_d, gid, tile, item)
        ctx.means2d = means2d if absgrad else None  # gsplat hands |grad| back as means2d.absgrad
        ctx.dims = (C, N, D, height, width)
        out = _untile(out, C, height, width)
        return out[..., :D], out[..., D:]

    @staticmethod
    @once_differentiable
    def backward(ctx, v_render, v_alpha):
        params, colors_d, gid, tile, item = ctx.saved_tensors
        C, N, D, H, W = ctx.dims
        v_tiles = _tile(torch.cat([v_render, v_alpha], -1))
        v_colors = colors_d.new_zeros(len(gid), D)
        v_params = params.new_zeros(len(gid), 8)  # mx, my, a, b, c, o, |v_mx|, |v_my|
        steps = ((sel[i:j], alpha[i:j], t[i:j]) for sel, alpha, t in ctx.parts for i, j in _chunks(tile[sel]))
        for sel, alpha, t in steps:
            it = item[sel]
            v_c, v_p = _step_grads(
                tile[sel], params[it], colors_d[it], alpha, t, v_tiles, W, H, ctx.means2d is not None
            )
            v_colors.index_add_(0, it, v_c)
            v_params.index_add_(0, it, v_p)
        # From depth order back to the [C, N] layout.
        v_full = params.new_zeros(C * N, 8).index_copy_(0, gid, v_params).view(C, N, 8)
        v_colors = colors_d.new_zeros(C * N, D).index_copy_(0, gid, v_colors).view(C, N, D)
        if ctx.means2d is not None:
            ctx.means2d.absgrad = v_full[..., 6:8]
        return v_full[..., :2], v_full[..., 2:5], v_colors, v_full[..., 5], None, None, None, None, None


def _step_grads(tile, p, c, alpha, t, v_tiles, width, height, absgrad):
    """Gradients of one group of whole runs: per entry, d loss / d colour (E, D) and d loss / d [mx, my, a, b, c, o]
    plus |d loss / d mean2d| summed over pixels (E, 8)."""
    D = c.shape[1]
    v = v_tiles[tile]
    v_out, v_a = v[..., :D], v[..., D]
    w = alpha * t
    # d out / d alpha_i = T_i c_i - (sum over later entries of w_k c_k) / (1 - alpha_i) per pixel, and
    # d alpha_out / d alpha_i = T_final / (1 - alpha_i).
    g = torch.einsum("epd,ed->ep", v_out, c)
    segs = _Segments(tile)
    inc = segs.cumsum(w * g)
    later = inc[segs.ends][segs.seg].sub_(inc)
    # T after the last Gaussian a pixel takes (1 if none); t itself keeps falling past the early stop.
    t_final = segs.min(torch.where(alpha > 0, t * (1 - alpha), 1.0))[segs.seg]
    v_alpha = later.sub_(v_a * t_final).div_(1 - alpha).neg_().add_(t * g)  # in place, as in _alphas
    # alpha = o exp(-sigma) unless skipped (0) or clamped (0.999): then no gradient, as the kernel
    v_alpha.masked_fill_((alpha == 0) | (alpha >= ALPHA_MAX), 0.0)
    v_sigma = v_alpha.mul_(alpha).neg_().view(-1, SUB, SUB)  # rows y, columns x
    # sigma's partials are products of powers of dx (per column) and dy (per row), so every sum needed is a
    # moment m[i, j] = sum of v_sigma dy^i dx^j: two small matrix products per entry.
    dx, dy = _deltas(tile, p, width, height)[:2]
    ones = torch.ones_like(dx)
    m = torch.stack([ones, dy, dy * dy], 1) @ v_sigma @ torch.stack([ones, dx, dx * dx], -1)
    s_1, s_x, s_xx, s_y, s_xy, s_yy = m[:, 0, 0], m[:, 0, 1], m[:, 0, 2], m[:, 1, 0], m[:, 1, 1], m[:, 2, 0]
    a, b, cc, o = p[:, 2], p[:, 3], p[:, 4], p[:, 5]
    v_m = torch.stack([a * s_x + b * s_y, b * s_x + cc * s_y], -1)
    v_abs = v_m.new_zeros(len(v_m), 2)
    if absgrad:  # |d loss / d mean2d| summed over pixels, as gsplat's absgrad
        gx = v_sigma * (a[:, None, None] * dx[:, None, :] + b[:, None, None] * dy[:, :, None])
        gy = v_sigma * (b[:, None, None] * dx[:, None, :] + cc[:, None, None] * dy[:, :, None])
        v_abs = torch.stack([gx.abs().sum((1, 2)), gy.abs().sum((1, 2))], -1)
    v_p = torch.cat([v_m, torch.stack([0.5 * s_xx, s_xy, 0.5 * s_yy, -s_1 / o], -1), v_abs], -1)
    return torch.einsum("ep,epd->ed", w, v_out), v_p


def _tile(img):
    """(C, H, W, X) -> (C * th * tw, SUB * SUB, X), zero-padded to whole sub-tiles."""
    C, H, W, X = img.shape
    s, th, tw = SUB, -(-H // SUB), -(-W // SUB)
    img = torch.nn.functional.pad(img, (0, 0, 0, tw * s - W, 0, th * s - H))
    return img.view(C, th, s, tw, s, X).permute(0, 1, 3, 2, 4, 5).reshape(C * th * tw, s * s, X)


def _untile(tiles, C, H, W):
    """Inverse of `_tile`: (C * th * tw, SUB * SUB, X) -> (C, H, W, X)."""
    s, th, tw, X = SUB, -(-H // SUB), -(-W // SUB), tiles.shape[-1]
    img = tiles.view(C, th, tw, s, s, X).permute(0, 1, 3, 2, 4, 5).reshape(C, th * s, tw * s, X)
    return img[:, :H, :W]


# --------------------------------------------------------------------------------------------------


def rasterization(
    means,
    quats,
    scales,
    opacities,
    sh,
    viewmats,
    Ks,
    width,
    height,
    near_plane=0.01,
    far_plane=1e10,
    eps2d=0.3,
    sh_degree=None,
    backgrounds=None,
    render_mode="RGB",
    absgrad=False,
    rasterize_mode="classic",
):
    """Same contract as `gsplat.rasterization(..., packed=False)` for SH colours; returns (colors, alphas, meta)."""
    C, N = len(viewmats), len(means)
    sh_degree = math.isqrt(sh.shape[-2]) - 1 if sh_degree is None else sh_degree
    antialiased = rasterize_mode == "antialiased"
    inputs = (means, quats, scales, opacities, sh, viewmats, Ks)
    if FORWARD_ONLY and not (torch.is_grad_enabled() and any(t.requires_grad for t in inputs)):
        # Nothing to differentiate: the forward-only path computes the same image, several times faster.
        args = (width, height, near_plane, far_plane, eps2d, sh_degree, render_mode, antialiased)
        render, alpha, radii, means2d, depths, conics, opacities = fast.rasterize(*inputs, *args)
    else:
        radii, means2d, depths, conics, comp = project(
            means, quats, scales, viewmats, Ks, width, height, eps2d, near_plane, far_plane, antialiased
        )
        opacities = opacities.expand(C, N) if comp is None else opacities * comp
        feats = []
        if render_mode in ("RGB", "RGB+D", "RGB+ED"):
            feats.append(sh_colors(means, sh, viewmats, sh_degree))
        if render_mode != "RGB":
            feats.append(depths[..., None])
        feats = torch.cat(feats, -1)
        render, alpha = _Composite.apply(means2d, conics, feats, opacities, radii, depths, width, height, absgrad)
    if backgrounds is not None and render_mode not in ("D", "ED"):  # depth gets no background, as gsplat
        bg = backgrounds.expand(C, 3)[:, None, None]
        rgb = render[..., :3] + (1.0 - alpha) * bg
        render = torch.cat([rgb, render[..., 3:]], -1)
    if render_mode in ("ED", "RGB+ED"):
        render = torch.cat([render[..., :-1], render[..., -1:] / alpha.clamp(min=1e-10)], -1)
    meta = dict(
        camera_ids=None,
        gaussian_ids=None,
        radii=radii,
        means2d=means2d,
        depths=depths,
        conics=conics,
        opacities=opacities,
        width=width,
        height=height,
        n_cameras=C,
        tile_size=TILE_SIZE,
    )
    return render, alpha, meta
