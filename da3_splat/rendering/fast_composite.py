"""Forward-only alpha compositing for the torch renderer: the rules of `cpu._Composite`, arranged for speed.

Rules (gsplat's kernel, as `cpu.py` states them): pixel centres at (x + 0.5, y + 0.5); alpha = min(o exp(-sigma),
0.999), skipped when sigma < 0 or alpha < 1/255; a Gaussian reaches only the 16-px tiles its radius box overlaps;
front to back in stable depth order; a pixel stops before the Gaussian that would take its transmittance to 1e-4.

Layout. The image is cut into S x S sub-tiles (S divides 16, so gsplat's tile rule keeps or drops whole sub-tiles).
Each Gaussian makes one entry per sub-tile of its footprint (`cpu._footprints`' box; where footprints are large,
each box row cut to the sub-tiles the alpha >= 1/255 ellipse reaches); entries are stably sorted by sub-tile, so
each sub-tile has a depth-ordered run. Rounds take the next B entries of every sub-tile still open, as a dense
(sub-tiles, pixels, B) block: alpha elementwise in log2 space (one exp2), transmittance a cumulative product along
B (no segmented scans, no index_add into few rows), colours a batched matrix product. A sub-tile leaves as soon as
all its pixels have stopped, so Gaussians behind opaque surfaces are never evaluated. Gaussians are handled in two
front-to-back passes, and the second leaves out those whose footprint lies wholly on stopped sub-tiles before
their entries are made and sorted. Same rules, other rounding: images agree with `cpu._Composite`'s to float
rounding, except where rounding puts a pair on the other side of the 1/255 cut-off or of the stop.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4  # a pixel stops before the Gaussian that would take its transmittance to T_MIN or below
TILE_SIZE = 16  # gsplat's tiles (the tile rule)
S = 4  # sub-tile side: divides TILE_SIZE; small, so a footprint covers few pixels it cannot reach
ROUNDS = (32, 16)  # entries per sub-tile in the first rounds, then the last for the rest: long first rounds
# (few steps while most sub-tiles are open), short last ones (few entries evaluated past a sub-tile's stop)
BATCH = 1 << 19  # pixel x entry elements per step: a few MB per temporary
PASSES = (0.5,)  # depth-order fractions where a new pass starts (leaving out Gaussians on stopped sub-tiles)
LOG2E = math.log2(math.e)  # alpha = 2^(log2 o - sigma log2 e): exp2 is ~3x faster than exp on CPU
COND_MAX = 1e4  # conics this ill-conditioned may round sigma below 0 (skipped pixels): checked pixel by pixel
CHUNK = 1 << 16  # Gaussians per step of the per-Gaussian work
CULL_ROWS = 3.0  # footprint rows per Gaussian (on average) from which rows are cut to their ellipse


@torch.no_grad()
def visible(radii: Tensor, opacities: Tensor, depths: Tensor) -> tuple[Tensor, Tensor]:
    """Flat ids (c * N + n, ascending) of the Gaussians that can be drawn, and the order that puts them front to
    back (ties in Gaussian order, as gsplat's stable sort)."""
    ids = ((radii > 0) & (opacities >= ALPHA_MIN)).flatten().nonzero()[:, 0]
    d = depths.flatten().index_select(0, ids)
    if len(d) and bool(d.min() > 0) and d.dtype in (torch.float32, torch.float64):
        # Positive floats order as their bit patterns, and integer sorts are several times faster.
        d = d.view(torch.int32 if d.dtype == torch.float32 else torch.int64)
    return ids, torch.sort(d, stable=True)[1]


@torch.no_grad()
def composite(
    means2d: Tensor,
    conics: Tensor,
    colors: Tensor,
    opacities: Tensor,
    radii: Tensor,
    depths: Tensor,
    width: int,
    height: int,
) -> tuple[Tensor, Tensor]:
    """Same arguments and result as `cpu._Composite.apply` (without `absgrad`): (C, H, W, D) and (C, H, W, 1)."""
    C, N, D = colors.shape
    ids, order = visible(radii, opacities, depths)
    feats = colors.reshape(C * N, D).index_select(0, ids).T
    return composite_visible(ids, order, means2d, conics, opacities, radii, feats, width, height)


@torch.no_grad()
def composite_visible(
    ids: Tensor,
    order: Tensor,
    means2d: Tensor,
    conics: Tensor,
    opacities: Tensor,
    radii: Tensor,
    feats: Tensor,
    width: int,
    height: int,
) -> tuple[Tensor, Tensor]:
    """Composite the Gaussians `ids` (flat, ascending; `ids[order]` front to back) with features `feats`
    (D, len(ids)). Per-Gaussian values are read in memory order; only a few are permuted to depth order."""
    (C, N), (D, G), dtype, dev = radii.shape, feats.shape, feats.dtype, feats.device
    tw, th = -(-width // S), -(-height // S)
    n_tiles = C * th * tw
    # Rows (2 or 3, C * N): elementwise work on contiguous rows is several times faster than on (G, 3) columns.
    gauss = (means2d.permute(2, 0, 1).reshape(2, -1), conics.permute(2, 0, 1).reshape(3, -1), opacities.flatten())
    s_lo, s_n = feats.new_empty(2, G), feats.new_empty(2, G)
    for i in chunks(G):
        m, q, o = (v.index_select(-1, ids[i]) for v in gauss)
        s_lo[:, i], s_n[:, i] = _footprints(m, q, o, radii.flatten().index_select(0, ids[i]).to(dtype), width, height)
    cam, (x0, y0), (nx, ny) = torch.div(ids, N, rounding_mode="floor"), s_lo.int(), s_n.int()
    base = (cam * th + y0) * tw + x0  # sub-tile of the footprint's top-left corner
    # Gaussian parameters in spatial order (by that sub-tile), so a step over neighbouring sub-tiles reads a
    # compact part of the tables; entries hold the position in them.
    spatial = torch.sort(base.int(), stable=True)[1]
    tables = _tables(gauss, feats, ids, spatial)
    rank = torch.empty(G, dtype=torch.int32, device=dev)
    rank[spatial] = torch.arange(G, dtype=torch.int32, device=dev)
    order = order[(nx * ny > 0).index_select(0, order)]  # Gaussians with empty footprints make no entries
    per_gauss = [base.int(), nx, ny, rank]
    if G and float(ny.float().mean()) >= CULL_ROWS:  # large footprints: rows cut to their ellipse
        shape = torch.cat([_ellipse(*(v.index_select(-1, ids[i]) for v in gauss), s_lo[1, i]) for i in chunks(G)], 1)
        per_gauss += [x0, shape]
    per_gauss = [v.index_select(-1, order) for v in per_gauss]  # in depth order
    # Summed-area-table corners of each footprint (camera-major rows of tw + 1), for culling later passes.
    corners = torch.stack([y0 + ny, y0, y0 + ny, y0]) + (cam * (th + 1)).int()
    corners = corners * (tw + 1) + torch.stack([x0 + nx, x0 + nx, x0, x0])
    state = _State(C, width, height, D, dtype, dev)
    edges = sorted({0, len(order), *(int(f * len(order)) for f in PASSES)})
    for g0, g1 in zip(edges[:-1], edges[1:]):
        if g0 == 0:
            key, item = _entries(*(v[..., g0:g1].contiguous() for v in per_gauss), tw=tw)
        else:  # leave out the Gaussians whose footprint has no open sub-tile
            keep = state.any_open(corners.index_select(1, order[g0:g1]))
            key, item = _entries(*(v[..., g0:g1][..., keep] for v in per_gauss), tw=tw)
        key = key.to(torch.int16 if n_tiles < 2**15 else torch.int32)  # narrower keys sort faster
        key, perm = torch.sort(key, stable=True)  # stable: each sub-tile's run stays front to back
        ranks = item.new_full((len(item) + 1,), G)  # the last: a padding entry (alpha 0) for slots past a run
        torch.index_select(item, 0, perm, out=ranks[:-1])
        length = torch.bincount(key, minlength=n_tiles).int()
        _rounds(state, ranks, length.cumsum(0, dtype=torch.int32) - length, length, *tables)
    img = state.out.view(C, th, tw, D + 1, S, S).permute(0, 1, 4, 2, 5, 3)
    img = img.reshape(C, th * S, tw * S, D + 1)[:, :height, :width]
    return img[..., :D], img[..., D:]


def chunks(n: int) -> list[slice]:
    """Slices of at most CHUNK over range(n): per-Gaussian temporaries stay a few MB (in cache, and below the size
    where malloc maps fresh zeroed pages for every call)."""
    return [slice(i, min(i + CHUNK, n)) for i in range(0, n, CHUNK)]


def _footprints(m: Tensor, q: Tensor, o: Tensor, r: Tensor, width: int, height: int) -> tuple[Tensor, Tensor]:
    """Each Gaussian's pixel box, as `cpu._footprints` makes it (alpha can reach 1/255 there, within the 16-px tiles
    gsplat gives it), in sub-tiles: first sub-tile (x, y) and count (x, y), as rows (2, G)."""
    log_t = torch.log(255.0 * o).clamp(min=0.0)
    inv_det = (q[0] * q[2] - q[1] ** 2).clamp(min=1e-20)
    ext = (2.0 * log_t * q[[2, 0]] / inv_det).sqrt() * 1.001 + 1e-3
    lo, hi = torch.ceil(m - ext - 0.5), torch.floor(m + ext - 0.5) + 1
    tiles = m.new_tensor([math.ceil(width / TILE_SIZE), math.ceil(height / TILE_SIZE)])[:, None]
    t_lo = torch.floor(m / TILE_SIZE - r / TILE_SIZE).clamp(min=0.0)
    t_hi = torch.minimum(torch.ceil(m / TILE_SIZE + r / TILE_SIZE).clamp(min=0.0), tiles)
    size = m.new_tensor([width, height])[:, None]
    lo = torch.minimum(torch.maximum(lo, t_lo * TILE_SIZE).clamp(min=0), size)
    hi = torch.maximum(torch.minimum(torch.minimum(hi, t_hi * TILE_SIZE), size), lo)
    s_lo = torch.floor(lo / S)
    return s_lo, torch.ceil(hi / S) - s_lo


def _tables(gauss: tuple[Tensor, ...], feats: Tensor, ids: Tensor, spatial: Tensor) -> tuple[Tensor, Tensor, bool]:
    """Per Gaussian, in spatial order, plus a last padding column that draws nothing: parameters (6, G + 1): mx, my,
    then -a/2, -b, -c/2 and log o in base 2 (times log2 e); features and 1 for alpha (D + 1, G + 1); and whether
    any conic is so ill-conditioned that rounding may take sigma below 0."""
    D, G = feats.shape
    params, colors = feats.new_empty(6, G + 1), feats.new_empty(D + 1, G + 1)
    params[:, G], colors[:, G] = params.new_tensor([0, 0, 0, 0, 0, -math.inf]), 0.0
    colors[D] = 1.0
    ill = False
    for i in chunks(G):
        (mx, my), (a, b, c), o = (v.index_select(-1, ids.index_select(0, spatial[i])) for v in gauss)
        for row, v in enumerate((mx, my, -0.5 * LOG2E * a, -LOG2E * b, -0.5 * LOG2E * c, torch.log2(o))):
            params[row, i] = v
        colors[:D, i] = feats.index_select(1, spatial[i])
        mid, rad = (a + c) / 2, torch.sqrt(((a - c) / 2) ** 2 + b * b)  # the conic's eigenvalues are mid -+ rad
        ill = ill or bool(((mid - rad) * COND_MAX <= mid + rad).any())
    return params, colors, ill


def _ellipse(m: Tensor, q: Tensor, o: Tensor, y0: Tensor) -> Tensor:
    """Per Gaussian (7, G): mean (x, y), and for its alpha >= 1/255 ellipse sigma <= L, i.e.
    a (dx + b/a dy)^2 + k dy^2 <= 2 L with k = (a c - b^2) / a: k, 2 L (with a margin), 1 / a and b / a; and its
    footprint's first sub-tile row y0. Conics that are not safely positive definite get 2 L = inf (whole rows)."""
    a, b, c = q
    k = (a * c - b * b) / a
    mid, rad = (a + c) / 2, torch.sqrt(((a - c) / 2) ** 2 + b * b)  # the conic's eigenvalues are mid -+ rad
    two_l = torch.log(255.0 * o).clamp(min=0.0).mul_(2.004).add_(2e-3)
    exact = (mid - rad) * COND_MAX > mid + rad
    two_l, inv_a, b_a = (
        torch.where(exact, two_l, math.inf),
        torch.where(exact, 1 / a, 1.0),
        torch.where(exact, b / a, 0.0),
    )
    return torch.stack([m[0], m[1], torch.where(exact, k, 0.0), two_l, inv_a, b_a, y0])


def _entries(
    base: Tensor,
    nx: Tensor,
    ny: Tensor,
    rank: Tensor,
    x0: Tensor | None = None,
    shape: Tensor | None = None,
    *,
    tw: int,
) -> tuple[Tensor, Tensor]:
    """One entry per (sub-tile, Gaussian), Gaussian by Gaussian (depth order) and row by row: sub-tile key and
    table rank. With footprint columns x0 and ellipses `shape`, each row keeps only the sub-tiles its ellipse
    reaches (about 1 in 7 of a 4 x 4 box's entries are corners it misses). Gaussians with empty footprints must
    be left out beforehand."""
    i32 = dict(dtype=torch.int32, device=base.device)
    row_first = ny.cumsum(0, dtype=torch.int32) - ny
    rows = int(row_first[-1] + ny[-1]) if len(ny) else 0
    row_g = _piecewise(row_first, torch.arange(len(ny), **i32), rows)
    r = _piecewise(row_first, -row_first, rows, step=1)  # row index within its Gaussian
    row_n = nx.index_select(0, row_g)
    start = base.index_select(0, row_g) + r * tw  # key of the row's first sub-tile
    if shape is not None:
        row_x0 = x0.index_select(0, row_g)
        lo, hi = _row_span(shape.index_select(1, row_g), row_x0, r, row_n)
        keep = (hi > lo).nonzero()[:, 0]
        start, row_g, row_n = (start + lo - row_x0)[keep], row_g[keep], (hi - lo)[keep]
    first = row_n.cumsum(0, dtype=torch.int32) - row_n
    n = int(first[-1] + row_n[-1]) if len(first) else 0
    # Entry e of a row has key start + (e - first).
    return _piecewise(first, start - first, n, step=1), _piecewise(first, rank.index_select(0, row_g), n)


def _row_span(shape: Tensor, x0: Tensor, r: Tensor, nx: Tensor) -> tuple[Tensor, Tensor]:
    """Sub-tile columns [lo, hi) (int32) of each footprint row r (of a footprint from column x0, nx wide) that its
    ellipse can reach: the ellipse's x extent over the row's pixel centres (the centre line moves by b/a per unit
    of y, the half-width is largest where dy is nearest 0)."""
    mx, my, k, two_l, inv_a, b_a, y0 = shape
    dy_max = my - (y0 + r) * S - 0.5  # dy = my - pixel centre y over the row's S pixel rows
    dy_min = dy_max - (S - 1)
    dy0 = dy_min.clamp(min=0.0) + dy_max.clamp(max=0.0)
    rad2 = (two_l - k * dy0 * dy0) * inv_a
    h = rad2.clamp(min=0.0).sqrt_().mul_(1.0001).add_(1e-3)
    c0, c1 = b_a * dy_min, b_a * dy_max
    lo = torch.floor((mx + torch.minimum(c0, c1) - h - 0.5) / S).clamp_(min=x0)
    hi = (torch.floor((mx + torch.maximum(c0, c1) + h - 0.5) / S) + 1).clamp_(max=x0 + nx)
    hi = torch.where(rad2 >= 0, hi, lo)  # the ellipse misses the row
    return lo.int(), hi.int()


def _piecewise(first: Tensor, value: Tensor, n: int, step: int = 0) -> Tensor:
    """(n,) int32 that is value[i] + step * (position - first[i]) from position first[i] (ascending, first[0] = 0)
    to the next first: a cumulative sum of increments, two passes over n where repeat_interleave takes several."""
    inc = torch.full((n,), step, dtype=torch.int32, device=value.device)
    if len(first):
        d = torch.diff(value, prepend=value.new_zeros(1))
        d[1:] += step
        inc.index_copy_(0, first.long(), d.int())
    return inc.cumsum_(0)


class _State:
    """Per sub-tile: transmittance of each pixel (0 once stopped, and for padding pixels beyond the image),
    accumulated features and alpha (sub-tiles, D + 1, S * S), and the centre of its first pixel."""

    def __init__(self, n_cams: int, width: int, height: int, D: int, dtype: torch.dtype, dev: torch.device):
        self.tw, self.th = -(-width // S), -(-height // S)
        k = torch.arange(n_cams * self.th * self.tw, device=dev)
        self.x0 = (k % self.tw * S).to(dtype) + 0.5
        self.y0 = (torch.div(k, self.tw, rounding_mode="floor") % self.th * S).to(dtype) + 0.5
        self.ar = torch.arange(S, device=dev, dtype=dtype)
        inside = (self.x0[:, None, None] + self.ar < width) & (self.y0[:, None, None] + self.ar[:, None] < height)
        self.T = inside.to(dtype).view(len(k), S * S)
        self.out = torch.zeros(len(k), D + 1, S * S, dtype=dtype, device=dev)
        self.log2_alpha_min = _log2_alpha_min(dtype)

    def any_open(self, corners: Tensor) -> Tensor:
        """Whether each footprint has an open sub-tile: box sums of a summed-area table of open sub-tiles, read at
        the footprints' corners (4, n) in that table (bottom-right, top-right, bottom-left, top-left)."""
        opened = (self.T > 0).any(1).view(-1, self.th, self.tw).to(torch.int32)
        sat = F.pad(opened.cumsum(1).cumsum(2), (1, 0, 1, 0)).flatten()
        v = sat[corners]
        return (v[0] - v[1] - v[2] + v[3]) > 0


def _rounds(
    state: _State, item: Tensor, start: Tensor, length: Tensor, params: Tensor, colors: Tensor, check_sigma: bool
) -> None:
    """Composite the runs (start, length per sub-tile; `item` holds table ranks, last = padding) into `state`."""
    P, D1, dev = S * S, len(colors), item.device
    pad = len(item) - 1
    act = ((length > 0) & (state.T > 0).any(1)).nonzero()[:, 0]
    # The sub-tiles in play (their transmittance, next entry, entries left, pixel centres, sums), compacted once
    # per round rather than gathered at every step.
    T, nxt, left = state.T.index_select(0, act), start.index_select(0, act), length.index_select(0, act)
    px = state.x0.index_select(0, act)[:, None] + state.ar
    py = state.y0.index_select(0, act)[:, None] + state.ar
    out = state.out.new_zeros(len(act), D1, P)
    k = 0
    while len(act):
        size = ROUNDS[min(k, len(ROUNDS) - 1)]
        slot, step = torch.arange(size, dtype=torch.int32, device=dev), max(1, BATCH // (P * size))
        for i in range(0, len(act), step):
            j = min(i + step, len(act))
            it = item.index_select(0, torch.where(slot < left[i:j, None], nxt[i:j, None] + slot, pad).view(-1))
            p = params.index_select(1, it).view(6, j - i, 1, size)
            alpha = _alpha(p, px[i:j], py[i:j], state.log2_alpha_min, check_sigma)
            om = torch.rsub(alpha, 1.0)
            weight = alpha.div_(om)  # alpha / (1 - alpha): times T after the entry, alpha T before it
            om[..., 0] *= T[i:j]
            t = torch.cumprod(om, -1)  # transmittance after each entry
            F.threshold_(t, T_MIN, 0.0)  # the early stop: 0 from the entry that would take it to T_MIN
            T[i:j] = t[..., -1]
            feats = colors.index_select(1, it).view(D1, j - i, size).transpose(0, 1)
            out[i:j].baddbmm_(feats, weight.mul_(t).transpose(1, 2))
        nxt += size
        left -= size
        k += 1
        keep = (left > 0) & (T > 0).any(1)
        if not bool(keep.all()):  # retire the sub-tiles with no entries left or all pixels stopped
            done, keep = (~keep).nonzero()[:, 0], keep.nonzero()[:, 0]
            state.out.index_add_(0, act.index_select(0, done), out.index_select(0, done))
            state.T.index_copy_(0, act.index_select(0, done), T.index_select(0, done))
            act, T, nxt, left, px, py, out = (v.index_select(0, keep) for v in (act, T, nxt, left, px, py, out))


def _alpha(p: Tensor, px: Tensor, py: Tensor, log2_min: float, check_sigma: bool) -> Tensor:
    """Alpha (n, S * S, B) of n sub-tiles' B entries; p: parameter rows (6, n, 1, B); px, py: pixel
    centres (n, S).

    In log2 space: log2 o - sigma log2 e = (log2 o - c' dy^2) + (-a' dx^2) + (-b' dx) dy, from per-row and
    per-column terms (a' = a log2 e / 2, ...), then one exp2.
    """
    dx = p[0] - px[:, :, None]  # (n, S, B), mean minus pixel centre, as the kernel
    dy = p[1] - py[:, :, None]
    col = p[2] * dx * dx
    row = (p[4] * dy).mul_(dy).add_(p[5])
    ls = row[:, :, None, :] + col[:, None, :, :]  # (n, S rows, S columns, B)
    ls.addcmul_((p[3] * dx)[:, None], dy[:, :, None])
    F.threshold_(ls, log2_min, -math.inf)  # alpha < 1/255: skipped (exp2(-inf) = 0)
    if check_sigma:  # rare: sigma itself (without log o), for the pixels that rounding takes below 0
        sigma = (-p[4] * dy * dy)[:, :, None, :] - col[:, None, :, :]
        sigma.addcmul_((-p[3] * dx)[:, None], dy[:, :, None])
        ls.masked_fill_(sigma < 0, -math.inf)
    return ls.exp2_().clamp_(max=ALPHA_MAX).view(len(p[0]), S * S, -1)


@functools.cache
def _log2_alpha_min(dtype: torch.dtype) -> float:
    """The threshold for `F.threshold` (which keeps x > threshold) on log2 alpha that keeps exactly the values whose
    exp2 is at least 1/255 in `dtype` (the largest value below the smallest such one)."""
    down, up = torch.tensor(-math.inf, dtype=dtype), torch.tensor(math.inf, dtype=dtype)
    x = torch.tensor(math.log2(ALPHA_MIN), dtype=dtype)
    for _ in range(32):
        x = torch.nextafter(x, down)
    candidates = [x]
    for _ in range(63):  # log2(1/255) -32 .. +31 ulps
        candidates.append(torch.nextafter(candidates[-1], up))
    x = torch.stack(candidates)
    first = x[torch.exp2(x) >= torch.tensor(ALPHA_MIN, dtype=dtype)][0]
    return float(torch.nextafter(first, down))
