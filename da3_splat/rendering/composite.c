/* Forward-only alpha compositing of projected Gaussians on the CPU: the C twin of `fast_composite.py`.
 *
 * The rules are gsplat's kernel, as `cpu.py` states them: pixel centres at (x + 0.5, y + 0.5); sigma =
 * a dx^2 / 2 + c dy^2 / 2 + b dx dy with dx = mean - pixel centre; alpha = min(o exp(-sigma), 0.999), skipped when
 * sigma < 0 or alpha < 1/255; a Gaussian reaches only the 16-px tiles its radius box overlaps, and within them
 * only the pixel box where alpha can reach 1/255 (the box of `cpu._footprints`); front to back in the given
 * order; a pixel stops before the Gaussian that would take its transmittance to 1e-4 or below.
 *
 * Layout: Gaussians are binned into 16-px tiles by a counting sort over the depth order (so each tile's list is
 * front to back), then each tile is composited by one thread, Gaussian by Gaussian over its pixel box, in
 * per-tile buffers. Built at first use by `native.py` (plain C99 + pthreads, no Python or torch headers); this
 * file includes itself once per floating-point type (REAL: float, double).
 */
#ifndef REAL

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <tgmath.h>

#define TILE 16
#define TILE_PIXELS (TILE * TILE)

typedef struct {
    int32_t x0, y0, x1, y1; /* pixel box [x0, x1) x [y0, y1), within the image */
} Box;

/* Float rows are composited as one 16-lane vector (GCC/Clang vector extensions, built for the CPU at hand): masked
   lanes are computed and then discarded. */
typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
typedef float v16f_u __attribute__((vector_size(64), aligned(4))); /* for loads and stores at any float address */
static const v16f LANE_CENTRES = {0.5f, 1.5f, 2.5f, 3.5f, 4.5f, 5.5f, 6.5f, 7.5f,
                                  8.5f, 9.5f, 10.5f, 11.5f, 12.5f, 13.5f, 14.5f, 15.5f};
static const v16i LANES = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};

static inline v16f select_v16(v16i mask, v16f a, v16f b) { return (v16f)(((v16i)a & mask) | ((v16i)b & ~mask)); }

/* exp(-s) for s >= 0, lane-wise: Cody-Waite reduction to r in about [-ln2/2, ln2/2] and Cephes' expf polynomial
   (within 2 ulp of libm's expf), clamped at exp(-87), far below any alpha that counts. */
static inline v16f exp_neg_v16(v16f s) {
    const v16f x = select_v16(-s < -87.0f, s * 0.0f - 87.0f, -s);
    const v16i n = __builtin_convertvector(x * 1.44269504088896341f - 0.5f, v16i); /* x <= 0: rounds to nearest */
    const v16f fn = __builtin_convertvector(n, v16f);
    const v16f r = (x - fn * 0.693359375f) - fn * -2.12194440e-4f;
    v16f y = r * 0.0f + 1.9875691500e-4f;
    y = y * r + 1.3981999507e-3f;
    y = y * r + 8.3334519073e-3f;
    y = y * r + 4.1665795894e-2f;
    y = y * r + 1.6666665459e-1f;
    y = y * r + 5.0000001201e-1f;
    y = y * (r * r) + r + 1.0f;
    return y * (v16f)((n + 127) << 23); /* times 2^n, n in [-126, 0] */
}

#define REAL float
#define NAME(x) x##_f32
#define VECTOR_ROWS 1
#include "composite.c" /* this file again, for the next REAL */
#undef REAL
#undef NAME
#undef VECTOR_ROWS

#define REAL double
#define NAME(x) x##_f64
#define VECTOR_ROWS 0
#include "composite.c" /* this file again, for the next REAL */
#undef REAL
#undef NAME
#undef VECTOR_ROWS

#else /* the body, once per REAL */

typedef struct {
    /* per Gaussian, in depth order: mean x, y, conic a, b, c, opacity; features (D each); pixel box */
    const REAL *params, *feats;
    const Box *boxes;
    /* per tile: its first entry (n_tiles + 1 offsets) and the entries (depth ranks) */
    const int64_t *first;
    const int32_t *entries;
    int64_t n_tiles;
    int tiles_x, tiles_y, width, height, D;
    REAL *out, *alpha;
    int64_t next_tile; /* shared counter: the next tile a thread takes */
} NAME(Job);

/* One Gaussian q (mean x, y, conic a, b, c, opacity) with features f on one tile row: the pixels of columns
   [x0, x1) whose bit is set in `open` (tile-local columns; px0: the tile's first pixel column). Transmittance t_row:
   > 0 while compositing, -T once stopped (T kept for the alpha written at the end), 0 for padding pixels. acc:
   the row's first feature, planes TILE_PIXELS apart. Returns the row's open bits after it. */
#if VECTOR_ROWS
static inline uint32_t NAME(composite_row)(const REAL *q, const REAL *f, int D, REAL dy, int px0, int x0, int x1,
                                           uint32_t open, REAL *t_row, REAL *acc) {
    const v16f dx = q[0] - ((REAL)px0 + LANE_CENTRES); /* (x + px0) + 0.5, exactly */
    const v16f sigma = 0.5f * (q[2] * dx * dx + q[4] * dy * dy) + q[3] * dx * dy;
    const v16f a = q[5] * exp_neg_v16(sigma), alpha = select_v16(a > 0.999f, a * 0.0f + 0.999f, a);
    const v16f t = *(const v16f_u *)t_row, next_t = t * (1 - alpha);
    /* sigma < 0 or alpha < 1/255: skipped; a stopped pixel (t <= 0) takes nothing more */
    const v16i valid = (LANES >= x0) & (LANES < x1) & (sigma >= 0) & (alpha >= 1.0f / 255.0f) & (t > 0);
    const v16i keep = valid & (next_t > 1e-4f), stop = valid & ~(next_t > 1e-4f);
    const v16f vis = select_v16(keep, alpha * t, t * 0.0f);
    *(v16f_u *)t_row = select_v16(stop, -t, select_v16(keep, next_t, t));
    for (int d = 0; d < D; d++) *(v16f_u *)(acc + d * TILE_PIXELS) += f[d] * vis;
    uint32_t stopped = 0;
    for (int x = 0; x < TILE; x++) stopped |= (uint32_t)(stop[x] & 1) << x;
    return open & ~stopped;
}
#else
static inline uint32_t NAME(composite_row)(const REAL *q, const REAL *f, int D, REAL dy, int px0, int x0, int x1,
                                           uint32_t open, REAL *t_row, REAL *acc) {
    const REAL alpha_min = (REAL)1 / (REAL)255, alpha_max = (REAL)0.999, t_min = (REAL)1e-4;
    for (uint32_t bits = open & (((1u << (x1 - x0)) - 1) << x0); bits; bits &= bits - 1) {
        const int x = __builtin_ctz(bits);
        const REAL dx = q[0] - ((REAL)(x + px0) + (REAL)0.5);
        const REAL sigma = (REAL)0.5 * (q[2] * dx * dx + q[4] * dy * dy) + q[3] * dx * dy;
        if (sigma < 0) continue;
        REAL alpha = q[5] * exp(-sigma);
        if (alpha > alpha_max) alpha = alpha_max;
        if (alpha < alpha_min) continue;
        const REAL t = t_row[x], next_t = t * (1 - alpha);
        if (next_t <= t_min) { /* stop before this Gaussian */
            t_row[x] = -t;
            open &= ~(1u << x);
            continue;
        }
        for (int d = 0; d < D; d++) acc[d * TILE_PIXELS + x] += f[d] * (alpha * t);
        t_row[x] = next_t;
    }
    return open;
}
#endif

/* One tile: its Gaussians front to back, row by row; acc holds the features, planar (D, TILE_PIXELS). */
static void NAME(composite_tile)(const NAME(Job) * job, int64_t tile, REAL *T, REAL *acc) {
    const int per_cam = job->tiles_x * job->tiles_y, D = job->D, W = job->width, H = job->height;
    const int64_t cam = tile / per_cam;
    const int tx = (int)(tile % per_cam) % job->tiles_x, ty = (int)(tile % per_cam) / job->tiles_x;
    const int px0 = tx * TILE, py0 = ty * TILE;
    const int px1 = px0 + TILE < W ? px0 + TILE : W, py1 = py0 + TILE < H ? py0 + TILE : H;
    /* open[row]: a bit per pixel column still compositing, so a Gaussian behind stopped pixels costs a mask test
       per row */
    uint32_t open[TILE] = {0};
    int open_rows = py1 - py0;
    for (int y = 0; y < TILE; y++)
        for (int x = 0; x < TILE; x++) T[y * TILE + x] = (y < py1 - py0 && x < px1 - px0) ? 1 : 0;
    for (int y = 0; y < open_rows; y++) open[y] = (1u << (px1 - px0)) - 1;
    memset(acc, 0, sizeof(REAL) * TILE_PIXELS * D);
    for (int64_t e = job->first[tile]; e < job->first[tile + 1] && open_rows > 0; e++) {
        const int32_t k = job->entries[e];
        const REAL *q = job->params + 6 * (int64_t)k, *f = job->feats + (int64_t)D * k;
        const Box b = job->boxes[k];
        const int x0 = (b.x0 > px0 ? b.x0 : px0) - px0, x1 = (b.x1 < px1 ? b.x1 : px1) - px0;
        const int y0 = (b.y0 > py0 ? b.y0 : py0) - py0, y1 = (b.y1 < py1 ? b.y1 : py1) - py0;
        const uint32_t cols = ((1u << (x1 - x0)) - 1) << x0;
        for (int y = y0; y < y1; y++) {
            if (!(open[y] & cols)) continue;
            const REAL dy = q[1] - ((REAL)(y + py0) + (REAL)0.5);
            open[y] = NAME(composite_row)(q, f, D, dy, px0, x0, x1, open[y], T + y * TILE, acc + y * TILE);
            open_rows -= open[y] == 0;
        }
    }
    for (int y = py0; y < py1; y++) {
        for (int x = px0; x < px1; x++) {
            const int p = (y - py0) * TILE + (x - px0);
            const int64_t pix = (cam * H + y) * W + x;
            for (int d = 0; d < D; d++) job->out[pix * D + d] = acc[d * TILE_PIXELS + p];
            job->alpha[pix] = 1 - fabs(T[p]);
        }
    }
}

static void *NAME(worker)(void *arg) {
    NAME(Job) *job = (NAME(Job) *)arg;
    REAL *T = malloc(sizeof(REAL) * TILE_PIXELS * (1 + (size_t)job->D));
    if (!T) return (void *)1;
    for (;;) {
        const int64_t tile = __atomic_fetch_add(&job->next_tile, 1, __ATOMIC_RELAXED);
        if (tile >= job->n_tiles) break;
        NAME(composite_tile)(job, tile, T, T + TILE_PIXELS);
    }
    free(T);
    return NULL;
}

/* ids: flat ids (camera * N + n) of the G Gaussians to draw; order: positions in ids, front to back; means2d
 * (C, N, 2), conics (C, N, 3), opacities (C, N), radii (C, N) int32; feats (D, G) in ids order. Writes out
 * (C, H, W, D) and alpha (C, H, W). Returns 0, or 1 when memory ran out. */
int NAME(da3_composite)(int64_t C, int64_t N, int64_t G, int D, int width, int height, const int64_t *ids,
                        const int64_t *order, const REAL *means2d, const REAL *conics, const REAL *opacities,
                        const int32_t *radii, const REAL *feats, REAL *out, REAL *alpha, int threads) {
    const int tiles_x = (width + TILE - 1) / TILE, tiles_y = (height + TILE - 1) / TILE;
    const int64_t n_tiles = C * tiles_x * tiles_y;
    REAL *params = malloc(sizeof(REAL) * (6 * (size_t)G + 1));
    REAL *gfeats = malloc(sizeof(REAL) * ((size_t)D * G + 1));
    Box *boxes = malloc(sizeof(Box) * ((size_t)G + 1));
    int64_t *first = calloc((size_t)n_tiles + 1, sizeof(int64_t));
    int32_t *entries = NULL;
    int status = 1;
    if (!params || !gfeats || !boxes || !first) goto cleanup;
    const REAL size_x = (REAL)width, size_y = (REAL)height, ts = (REAL)TILE;
    for (int64_t k = 0; k < G; k++) {
        const int64_t j = order[k], g = ids[j], cam = g / N;
        const REAL mx = means2d[2 * g], my = means2d[2 * g + 1], o = opacities[g], r = (REAL)radii[g];
        const REAL a = conics[3 * g], b = conics[3 * g + 1], c = conics[3 * g + 2];
        REAL *q = params + 6 * k;
        q[0] = mx, q[1] = my, q[2] = a, q[3] = b, q[4] = c, q[5] = o;
        for (int d = 0; d < D; d++) gfeats[(int64_t)D * k + d] = feats[(int64_t)d * G + j];
        /* alpha >= 1/255 needs sigma <= log(255 o), and sigma >= dx^2 / (2 cov_xx): the box of cpu._footprints */
        REAL log_t = log((REAL)255 * o);
        if (log_t < 0) log_t = 0;
        REAL inv_det = a * c - b * b;
        if (inv_det < (REAL)1e-20) inv_det = (REAL)1e-20;
        const REAL ex = sqrt((REAL)2 * log_t * c / inv_det) * (REAL)1.001 + (REAL)1e-3;
        const REAL ey = sqrt((REAL)2 * log_t * a / inv_det) * (REAL)1.001 + (REAL)1e-3;
        REAL lo[2] = {ceil(mx - ex - (REAL)0.5), ceil(my - ey - (REAL)0.5)};
        REAL hi[2] = {floor(mx + ex - (REAL)0.5) + 1, floor(my + ey - (REAL)0.5) + 1};
        const REAL m[2] = {mx, my}, tiles[2] = {(REAL)tiles_x, (REAL)tiles_y}, size[2] = {size_x, size_y};
        int32_t ilo[2], ihi[2];
        for (int i = 0; i < 2; i++) { /* ... within the 16-px tiles of the radius box, and the image (a NaN
                                          extent compares false: the whole tile box) */
            REAL t_lo = floor(m[i] / ts - r / ts), t_hi = ceil(m[i] / ts + r / ts);
            if (t_lo < 0) t_lo = 0;
            if (t_hi < 0) t_hi = 0;
            if (t_hi > tiles[i]) t_hi = tiles[i];
            REAL l = lo[i] > t_lo * ts ? lo[i] : t_lo * ts;
            l = l < 0 ? 0 : (l > size[i] ? size[i] : l);
            REAL h = hi[i] < t_hi * ts ? hi[i] : t_hi * ts;
            h = h > size[i] ? size[i] : h;
            ilo[i] = (int32_t)l;
            ihi[i] = (int32_t)h > ilo[i] ? (int32_t)h : ilo[i];
        }
        boxes[k] = (Box){ilo[0], ilo[1], ihi[0], ihi[1]};
        if (ihi[0] > ilo[0] && ihi[1] > ilo[1]) {
            for (int ty = ilo[1] / TILE; ty < (ihi[1] + TILE - 1) / TILE; ty++)
                for (int tx = ilo[0] / TILE; tx < (ihi[0] + TILE - 1) / TILE; tx++)
                    first[(cam * tiles_y + ty) * tiles_x + tx + 1]++;
        }
    }
    for (int64_t t = 0; t < n_tiles; t++) first[t + 1] += first[t];
    entries = malloc(sizeof(int32_t) * ((size_t)first[n_tiles] + 1));
    int64_t *cursor = malloc(sizeof(int64_t) * ((size_t)n_tiles + 1));
    if (!entries || !cursor) {
        free(cursor);
        goto cleanup;
    }
    memcpy(cursor, first, sizeof(int64_t) * n_tiles);
    for (int64_t k = 0; k < G; k++) { /* in depth order: each tile's run stays front to back */
        const Box b = boxes[k];
        if (b.x1 <= b.x0 || b.y1 <= b.y0) continue;
        const int64_t cam = ids[order[k]] / N;
        for (int ty = b.y0 / TILE; ty < (b.y1 + TILE - 1) / TILE; ty++)
            for (int tx = b.x0 / TILE; tx < (b.x1 + TILE - 1) / TILE; tx++)
                entries[cursor[(cam * tiles_y + ty) * tiles_x + tx]++] = (int32_t)k;
    }
    free(cursor);
    NAME(Job) job = {params, gfeats, boxes, first, entries, n_tiles, tiles_x, tiles_y, width, height, D, out, alpha, 0};
    if (threads < 1) threads = 1;
    if (threads > 64) threads = 64;
    pthread_t pool[64];
    int started = 0;
    for (; started < threads - 1; started++)
        if (pthread_create(&pool[started], NULL, NAME(worker), &job) != 0) break;
    status = NAME(worker)(&job) != NULL;
    for (int i = 0; i < started; i++) {
        void *result = NULL;
        pthread_join(pool[i], &result);
        status |= result != NULL;
    }
cleanup:
    free(params);
    free(gfeats);
    free(boxes);
    free(first);
    free(entries);
    return status;
}

#endif
