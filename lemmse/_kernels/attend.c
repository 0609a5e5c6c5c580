/*
 * Fused streaming softmax attention for the LE-MMSE on x86-64 CPUs (fp32), compiled with AVX-512 or
 * with AVX2 + FMA (the vector layer lemmse/_kernels/simd.h).
 *
 * For every query q (a row of Q) and every admissible key k (a training patch) the logit is
 *     l(q, k) = s_q * (q . k - ||k||^2 / 2)                     (natural-log units / log2 e)
 * where s_q = log2(e) / sigma_q^2 is folded into the query row by the caller (Q holds s_q q and
 * qscale holds s_q).  -||q||^2/(2 sigma^2) is constant per query and cancels in the softmax.
 * The kernel accumulates, per query, the running maximum m (base-2 units), the denominator
 * sum 2^(l - m) and the numerators sum 2^(l - m) v_k, streaming over key blocks of 16 with an
 * online (lazily rescaled) log-sum-exp.  Nothing of size queries x keys is ever stored.
 *
 * Layout (prepared by lemmse/engine.py):
 *   Q      [M][D]          query rows, pre-scaled
 *   qscale [M]             s_q
 *   Kt     [nb][D][16]     key blocks, 16 keys per block, transposed (key index fastest)
 *   kb     [nb][16]        -||k||^2 / 2 for each key (0 in padding lanes)
 *   Vt     [nb][Cv][16]    values (clean centre pixels) per key block
 *   groups: query rows [q0[g], q1[g]) attend to key blocks [b0[g], b1[g]); the last block of a
 *           group holds nlast[g] valid keys (1..16).
 * State (read and updated in place, so that the caller can stream chunks of keys):
 *   m   [M]                running maximum, -inf initially
 *   acc [M][Cv+1][16]      lane-wise sums in float64: denominator first, then the Cv numerators
 * The tiles sum in fp32 registers over one sweep of kchunk_blocks key blocks, from zero, and each
 * sweep is then merged into the float64 state (merge_rows): an fp32 sum over all the keys of a
 * large training set (10^5 to 10^6 terms per lane) would lose the small terms of its tail
 * (measured: 3e-4 off float64 for FashionMNIST N = 4 000, against 2e-5 at N = 300).
 *
 * With direct != 0 the logit is computed from explicit differences instead,
 *     l(q, k) = qscale_q * sum_d (q_d - k_d)^2,   qscale_q = -log2(e) / (2 sigma_q^2),
 * with Q holding the raw query rows: no cancellation, for small sigma (about 2x the work).
 *
 * Each query row is processed by exactly one thread, in key order: results do not depend on
 * the number of threads (deterministic).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <stdatomic.h>

#define SLACK 16.0f  /* rescale only when a logit exceeds the running max by this (base 2) */

#include "simd.h"

/* A key block holds 16 keys (the layout prepared by lemmse/engine.py) in KV vectors of VL lanes:
   one zmm on AVX-512, two ymm halves on AVX2. */
#define KV (16 / VL)

/* HALVES(stmt): stmt for each half h of a key block, written out (no loop: with one half, on
   AVX-512, the tile is the same code as a tile written for one vector) */
#if KV == 1
#define HALVES(...) { const int h = 0; __VA_ARGS__ }
#else
#define HALVES(...) { { const int h = 0; __VA_ARGS__ } { const int h = 1; __VA_ARGS__ } }
#endif

/* One tile: QT query rows x one key block of 16 keys at a time, CV value channels.  DIRECT is a
   compile-time flag: 0 for the GEMM expansion (Q pre-scaled, logits s_q (q.k - |k|^2/2)), 1 for
   explicit differences (logits qscale_q |q - k|^2).                                          */
#define DEFINE_TILE(NAME, QT, CV, DIRECT)                                                          \
static void NAME(const float *Q, const float *qscale, int64_t D,                                   \
                 const float *Kt, const float *kb, const float *Vt,                                \
                 int64_t b0, int64_t b1, int nlast, float *m, float *acc) {                        \
    const int64_t Cv = CV, S = (CV + 1) * 16;                                                      \
    vf st[QT][CV + 1][KV];                                                                         \
    float mm[QT];                                                                                  \
    for (int t = 0; t < QT; t++) {                                                                 \
        mm[t] = m[t];                                                                              \
        for (int64_t c = 0; c <= Cv; c++)                                                          \
            HALVES(st[t][c][h] = vloadu(acc + t * S + c * 16 + h * VL);)                           \
    }                                                                                              \
    for (int64_t b = b0; b < b1; b++) {                                                            \
        const float *K = Kt + b * D * 16;                                                          \
        vf l[QT][KV];                                                                              \
        for (int t = 0; t < QT; t++)                                                               \
            HALVES(l[t][h] = DIRECT ? vzero()                                                      \
                                    : vmul(vloadu(kb + b * 16 + h * VL), vset1(qscale[t]));)       \
        for (int64_t d = 0; d < D; d++) {                                                          \
            vf kv[KV];                                                                             \
            HALVES(kv[h] = vloadu(K + d * 16 + h * VL);)                                           \
            for (int t = 0; t < QT; t++) {                                                         \
                const vf qv = vset1(Q[t * D + d]);                                                 \
                HALVES(                                                                            \
                    if (DIRECT) {                                                                  \
                        const vf df = vsub(qv, kv[h]);                                             \
                        l[t][h] = vfmadd(df, df, l[t][h]);                                         \
                    } else {                                                                       \
                        l[t][h] = vfmadd(qv, kv[h], l[t][h]);                                      \
                    })                                                                             \
            }                                                                                      \
        }                                                                                          \
        if (DIRECT)                                                                                \
            for (int t = 0; t < QT; t++) HALVES(l[t][h] = vmul(l[t][h], vset1(qscale[t]));)        \
        vmask valid[KV];                                                                           \
        HALVES(valid[h] = (b == b1 - 1) ? vmask_first(lanes_of(nlast, h)) : VMASK_ALL;)            \
        const float *V = Vt + b * Cv * 16;                                                         \
        for (int t = 0; t < QT; t++) {                                                             \
            int big = 0;                                                                           \
            HALVES(big |= vmask_any(vmask_gt(valid[h], l[t][h], vset1(mm[t] + SLACK)));)           \
            if (big) {                                                                             \
                float bm = -INFINITY;                                                              \
                HALVES(const float hm = vmask_reduce_max(valid[h], l[t][h]);                       \
                       bm = hm > bm ? hm : bm;)                                                    \
                float nm = bm > mm[t] ? bm : mm[t];                                                \
                vf sc = vset1(exp2f(mm[t] - nm));                                                  \
                for (int64_t c = 0; c <= Cv; c++) HALVES(st[t][c][h] = vmul(st[t][c][h], sc);)     \
                mm[t] = nm;                                                                        \
            }                                                                                      \
            HALVES(                                                                                \
                vf e = exp2_ps(vsub(l[t][h], vset1(mm[t])));                                       \
                e = vmaskz(valid[h], e);                                                           \
                st[t][0][h] = vadd(st[t][0][h], e);                                                \
                for (int64_t c = 0; c < Cv; c++)                                                   \
                    st[t][c + 1][h] = vfmadd(e, vloadu(V + c * 16 + h * VL), st[t][c + 1][h]);)    \
        }                                                                                          \
    }                                                                                              \
    for (int t = 0; t < QT; t++) {                                                                 \
        m[t] = mm[t];                                                                              \
        for (int64_t c = 0; c <= Cv; c++)                                                          \
            HALVES(vstoreu(acc + t * S + c * 16 + h * VL, st[t][c][h]);)                           \
    }                                                                                              \
}

/* the valid lanes of half h of a block with n valid keys (0 .. VL) */
static inline int lanes_of(int n, int h) {
    const int k = n - h * VL;
    return k < 0 ? 0 : k > VL ? VL : k;
}

#define DEFINE_TILES_(QT, CV)                                                                      \
    DEFINE_TILE(tile_##QT##_##CV, QT, CV, 0)                                                       \
    DEFINE_TILE(dtile_##QT##_##CV, QT, CV, 1)
#define DEFINE_TILES(QT, CV) DEFINE_TILES_(QT, CV)  /* expands QT (H3, H4) before pasting */

/* Tile heights (query rows): AVX-512 has 32 vector registers, AVX2 16, so the AVX2 tiles are
   half as tall (a key block is also two vectors there). */
#if VL == 16
#define H3 4
#define H4 8
#define H5 12
#define WIDE_NB 2   /* key blocks per step of a wide tile */
#else
#define H3 3
#define H4 4
#define H5 6
#define WIDE_NB 1
#endif
static const int HEIGHTS[5] = {1, 2, H3, H4, H5};
#define NARROW_ROWS H4  /* rows of a work item: narrow tiles, wide tiles */
#define WIDE_ROWS H5

#define DEFINE_TILES_C(CV)                                                                         \
    DEFINE_TILES(1, CV) DEFINE_TILES(2, CV) DEFINE_TILES(H3, CV) DEFINE_TILES(H4, CV)
DEFINE_TILES_C(1) DEFINE_TILES_C(2) DEFINE_TILES_C(3) DEFINE_TILES_C(4)

/* ---------------------------------------------------------------------------- wide tiles
   For large D the dot products dominate (the exponentials and sums are ~2 % of the work at
   D = 363) and the tiles above, one key vector per broadcast, run well below the FMA peak.  A
   wide tile holds QT query rows x two key vectors of logits in 2 QT registers (AVX-512: two key
   blocks, 32 keys, QT <= 12: 24 accumulators, 2 key vectors, broadcasts and differences fit in
   the 32 zmm registers; AVX2: the two halves of one block, QT <= 6 in 16 ymm registers); each
   query element is broadcast once and used for two FMAs.  The query rows are packed d-major
   (Qp[d][QT]) by the caller so that the broadcasts read one sequential stream.  The running sums
   stay in memory (acc), touched once per row and key vector.                                  */

/* fold the VL logits l of one key vector (lanes h VL .. h VL + VL - 1 of a block) into the
   running state (mm, a [Cv+1][16]) of one row */
static inline __attribute__((always_inline)) void fold_block(vf l, vmask valid, float *mm,
                                                             float *a, const float *V,
                                                             const int Cv, const int h) {
    if (vmask_any(vmask_gt(valid, l, vset1(*mm + SLACK)))) {
        float bm = vmask_reduce_max(valid, l);
        float nm = bm > *mm ? bm : *mm;
        vf sc = vset1(exp2f(*mm - nm));
        for (int c = 0; c <= Cv; c++)  /* the whole row shares mm: every lane of the block */
            for (int g = 0; g < KV; g++)
                vstoreu(a + c * 16 + g * VL, vmul(vloadu(a + c * 16 + g * VL), sc));
        *mm = nm;
    }
    a += h * VL;
    V += h * VL;
    const vf e = vmaskz(valid, exp2_ps(vsub(l, vset1(*mm))));
    vstoreu(a, vadd(vloadu(a), e));
    for (int c = 0; c < Cv; c++)
        vstoreu(a + 16 + c * 16, vfmadd(e, vloadu(V + c * 16), vloadu(a + 16 + c * 16)));
}

/* NB key blocks (1 or WIDE_NB) starting at block b, against the QT packed query rows: NV = NB KV
   key vectors, vector j = block j / KV, half j % KV */
#define WIDE_STEP(QT, CV, DIRECT, NB)                                                              \
    do {                                                                                           \
        enum { NV = NB * KV };                                                                     \
        const float *Kj[NV];                                                                       \
        vf l[NV][QT];                                                                              \
        for (int j = 0; j < NV; j++) {                                                             \
            Kj[j] = Kt + (b + j / KV) * D * 16 + (j % KV) * VL;                                    \
            for (int t = 0; t < QT; t++)                                                           \
                l[j][t] = DIRECT ? vzero()                                                         \
                    : vmul(vloadu(kb + (b + j / KV) * 16 + (j % KV) * VL), vset1(qscale[t]));      \
        }                                                                                          \
        for (int64_t d = 0; d < D; d++) {                                                          \
            vf k[NV];                                                                              \
            for (int j = 0; j < NV; j++) k[j] = vloadu(Kj[j] + d * 16);                            \
            for (int t = 0; t < QT; t++) {                                                         \
                const vf qv = vset1(Qp[d * QT + t]);                                               \
                for (int j = 0; j < NV; j++) {                                                     \
                    if (DIRECT) {                                                                  \
                        const vf f = vsub(qv, k[j]);                                               \
                        l[j][t] = vfmadd(f, f, l[j][t]);                                           \
                    } else {                                                                       \
                        l[j][t] = vfmadd(qv, k[j], l[j][t]);                                       \
                    }                                                                              \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        vmask v[NV];                                                                               \
        for (int j = 0; j < NV; j++)                                                               \
            v[j] = (b + j / KV == b1 - 1) ? vmask_first(lanes_of(nlast, j % KV)) : VMASK_ALL;      \
        for (int t = 0; t < QT; t++) {                                                             \
            const vf sc = vset1(qscale[t]);                                                        \
            for (int j = 0; j < NV; j++)                                                           \
                fold_block(DIRECT ? vmul(l[j][t], sc) : l[j][t], v[j], m + t, acc + t * S,         \
                           Vt + (b + j / KV) * CV * 16, CV, j % KV);                               \
        }                                                                                          \
    } while (0)

#define DEFINE_WIDE_TILE(NAME, QT, CV, DIRECT)                                                     \
static void NAME(const float *Qp, const float *qscale, int64_t D,                                  \
                 const float *Kt, const float *kb, const float *Vt,                                \
                 int64_t b0, int64_t b1, int nlast, float *m, float *acc) {                        \
    const int64_t S = (CV + 1) * 16;                                                               \
    int64_t b = b0;                                                                                \
    if (WIDE_NB == 2)                                                                              \
        for (; b + 1 < b1; b += 2) WIDE_STEP(QT, CV, DIRECT, WIDE_NB);                             \
    for (; b < b1; b++) WIDE_STEP(QT, CV, DIRECT, 1);                                              \
}

#define DEFINE_WIDE_TILES_(QT, CV)                                                                 \
    DEFINE_WIDE_TILE(wtile_##QT##_##CV, QT, CV, 0)                                                 \
    DEFINE_WIDE_TILE(wdtile_##QT##_##CV, QT, CV, 1)
#define DEFINE_WIDE_TILES(QT, CV) DEFINE_WIDE_TILES_(QT, CV)
#define DEFINE_WIDE_TILES_C(CV)                                                                    \
    DEFINE_WIDE_TILES(1, CV) DEFINE_WIDE_TILES(2, CV) DEFINE_WIDE_TILES(H3, CV)                    \
    DEFINE_WIDE_TILES(H4, CV) DEFINE_WIDE_TILES(H5, CV)
DEFINE_WIDE_TILES_C(1) DEFINE_WIDE_TILES_C(2) DEFINE_WIDE_TILES_C(3) DEFINE_WIDE_TILES_C(4)

#define NAMES_(P, H, CV) P##_##H##_##CV
#define NAMES(P, H, CV) NAMES_(P, H, CV)
typedef void (*tile_fn)(const float *, const float *, int64_t, const float *, const float *,
                        const float *, int64_t, int64_t, int, float *, float *);
/* [mode][Cv - 1][index into HEIGHTS] (the narrow tiles stop at the fourth height) */
#define ROW(P, CV) {NAMES(P, 1, CV), NAMES(P, 2, CV), NAMES(P, H3, CV), NAMES(P, H4, CV), NULL}
#define WROW(P, CV) {NAMES(P, 1, CV), NAMES(P, 2, CV), NAMES(P, H3, CV), NAMES(P, H4, CV),         \
                     NAMES(P, H5, CV)}
static const tile_fn TILES[2][4][5] = {
    {ROW(tile, 1), ROW(tile, 2), ROW(tile, 3), ROW(tile, 4)},
    {ROW(dtile, 1), ROW(dtile, 2), ROW(dtile, 3), ROW(dtile, 4)}};
static const tile_fn WIDE_TILES[2][4][5] = {
    {WROW(wtile, 1), WROW(wtile, 2), WROW(wtile, 3), WROW(wtile, 4)},
    {WROW(wdtile, 1), WROW(wdtile, 2), WROW(wdtile, 3), WROW(wdtile, 4)}};

/* The wide tiles are used from this dimension on (measured, benchmarks/bench_engine.py) */
#ifndef WIDE_MIN_DIM
#define WIDE_MIN_DIM 48
#endif


/* the tallest tile height (index into HEIGHTS) of at most th rows that fits the rows left */
static inline int tile_index(int64_t th, int64_t left) {
    int h = 4;
    while (HEIGHTS[h] > th || HEIGHTS[h] > left) h--;
    return h;
}
static inline int64_t tile_height(int64_t th, int64_t left) { return HEIGHTS[tile_index(th, left)]; }

/* Fold the fp32 sums of one sweep (rows of a tile, relative to their maxima mt at the end of
   the sweep) into the float64 state (relative to m), and move m to mt (mt >= m: a sweep starts
   from m and only raises it). */
static void merge_rows(float *m, double *acc, const float *mt, const float *at, int64_t n,
                       int64_t S) {
    for (int64_t t = 0; t < n; t++) {
        const double sc = mt[t] == m[t] ? 1.0 : exp2((double)m[t] - (double)mt[t]);
        double *a = acc + t * S;
        const float *p = at + t * S;
        for (int64_t i = 0; i < S; i++) a[i] = a[i] * sc + (double)p[i];
        m[t] = mt[t];
    }
}

typedef struct {
    const float *Q, *qscale, *Kt, *kb, *Vt;
    int64_t D, S, ntiles, maxblocks, kchunk_blocks, th, item_tiles;
    const int64_t *q1, *b0, *b1, *nlast, *tile_g, *tile_r;
    const tile_fn *T;
    int wide;
    float *m;
    double *acc;
    atomic_llong next;  /* first tile of the next work item */
} work_t;

static void *worker(void *arg) {
    work_t *w = (work_t *)arg;
    const int64_t D = w->D, S = w->S, ntiles = w->ntiles, th = w->th;
    const int64_t *q1 = w->q1, *b0 = w->b0, *b1 = w->b1, *nlast = w->nlast;
    const int64_t *tile_g = w->tile_g, *tile_r = w->tile_r;
    const float *Q = w->Q, *qscale = w->qscale, *Kt = w->Kt, *kb = w->kb, *Vt = w->Vt;
    const tile_fn *T = w->T;
    float *m = w->m;
    double *acc = w->acc;
    float mt[16], at[16 * 5 * 16];  /* one sweep of one tile: maxima and fp32 sums (H5, Cv <= 4) */
    /* flush denormals to zero: far keys give weights 2^(l-m) below 2^-126, and denormal
       arithmetic is ~100x slower; their contribution is below fp32 resolution anyway */
    const unsigned int csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040);
    /* wide tiles read their query rows packed d-major: an item's rows, each tile at
       (it - lo) * th * D, each of its sub-tiles of n rows at (r - tile_r) * D as [D][n] */
    float *Qp = NULL;
    if (w->wide) {
        Qp = (float *)malloc(sizeof(float) * (size_t)(w->item_tiles * th * D));
        if (Qp == NULL) { _mm_setcsr(csr); return (void *)1; }
    }
    for (;;) {
        const int64_t lo = atomic_fetch_add(&w->next, w->item_tiles);
        if (lo >= ntiles) break;
        const int64_t hi = lo + w->item_tiles < ntiles ? lo + w->item_tiles : ntiles;
        if (Qp)
            for (int64_t it = lo; it < hi; it++) {
                int64_t r = tile_r[it], rend = r + th < q1[tile_g[it]] ? r + th : q1[tile_g[it]];
                while (r < rend) {
                    const int64_t n = tile_height(th, rend - r);
                    float *dst = Qp + (it - lo) * th * D + (r - tile_r[it]) * D;
                    for (int64_t t = 0; t < n; t++)
                        for (int64_t d = 0; d < D; d++) dst[d * n + t] = Q[(r + t) * D + d];
                    r += n;
                }
            }
        for (int64_t c0 = 0; c0 < w->maxblocks; c0 += w->kchunk_blocks) {
            for (int64_t it = lo; it < hi; it++) {
                int64_t g = tile_g[it];
                int64_t bs = b0[g] + c0, be = b0[g] + c0 + w->kchunk_blocks;
                if (be > b1[g]) be = b1[g];
                if (bs >= be) continue;
                int nl = (be == b1[g]) ? (int)nlast[g] : 16;
                int64_t r = tile_r[it], rend = r + th;
                if (rend > q1[g]) rend = q1[g];
                while (r < rend) {
                    const int h = tile_index(th, rend - r), n = HEIGHTS[h];
                    const float *Qr = Qp ? Qp + (it - lo) * th * D + (r - tile_r[it]) * D
                                         : Q + r * D;
                    memcpy(mt, m + r, sizeof(float) * (size_t)n);
                    memset(at, 0, sizeof(float) * (size_t)(n * S));
                    T[h](Qr, qscale + r, D, Kt, kb, Vt, bs, be, nl, mt, at);
                    merge_rows(m + r, acc + r * S, mt, at, n, S);
                    r += n;
                }
            }
        }
    }
    _mm_setcsr(csr);
    free(Qp);
    return NULL;
}

/* 1 <= Cv <= 4 (values are the C channels of a centre pixel). Returns 0 on success. */
int lemmse_attend_f32(const float *Q, const float *qscale, int64_t M, int64_t D,
                      const float *Kt, const float *kb, const float *Vt, int64_t Cv,
                      int64_t G, const int64_t *q0, const int64_t *q1,
                      const int64_t *b0, const int64_t *b1, const int64_t *nlast,
                      int64_t kchunk_blocks, float *m, double *acc, int nthreads,
                      int direct) {
    if (Cv < 1 || Cv > 4) return 1;
    const int wide = D >= WIDE_MIN_DIM;
    const tile_fn *T = (wide ? WIDE_TILES : TILES)[direct ? 1 : 0][Cv - 1];
    const int64_t th = wide ? WIDE_ROWS : NARROW_ROWS;  /* rows of a work item */
    if (wide && WIDE_NB == 2 && kchunk_blocks > 1)
        kchunk_blocks &= ~(int64_t)1;  /* whole pairs of blocks */
    (void)M;
    const int64_t S = (Cv + 1) * 16;
    /* Tiles: (group, query tile of <= th rows).  Work items are runs of item_tiles consecutive
       tiles, about 16 per thread, taken from a shared counter, so that a thread that the OS or
       a noisy neighbour holds up does not keep the others waiting at the end (measured: a fixed
       split in equal shares lost up to ~10 % on a 2-core VM).  Within an item the keys are swept
       in L2-sized chunks of kchunk_blocks blocks, all of the item's tiles over one chunk before
       the next.  Every query row is processed by one thread, in key order, whatever the split:
       the results do not depend on it or on the thread count.                               */
    int64_t maxblocks = 0, ntiles = 0;
    for (int64_t g = 0; g < G; g++) {
        if (b1[g] - b0[g] > maxblocks) maxblocks = b1[g] - b0[g];
        ntiles += (q1[g] - q0[g] + th - 1) / th;
    }
    int64_t *tile_g = (int64_t *)malloc(sizeof(int64_t) * (size_t)(2 * ntiles + 1));
    if (tile_g == NULL) return 2;
    int64_t *tile_r = tile_g + ntiles;
    for (int64_t g = 0, it = 0; g < G; g++)
        for (int64_t r = q0[g]; r < q1[g]; r += th, it++) {
            tile_g[it] = g; tile_r[it] = r;
        }
    /* plain POSIX threads, not OpenMP: a second OpenMP runtime beside torch's would leave
       two sets of spin-waiting threads competing for the cores                              */
    if (nthreads < 1) nthreads = 1;
    if (nthreads > 64) nthreads = 64;
    int64_t item_tiles = ntiles / (16 * (int64_t)nthreads);
    if (item_tiles < 1) item_tiles = 1;
    work_t *w = (work_t *)malloc(sizeof(work_t));
    if (w == NULL) { free(tile_g); return 2; }
    *w = (work_t){Q, qscale, Kt, kb, Vt, D, S, ntiles, maxblocks, kchunk_blocks, th, item_tiles,
                  q1, b0, b1, nlast, tile_g, tile_r, T, wide, m, acc};
    atomic_init(&w->next, 0);
    pthread_t th_[64];
    int started = 1;
    for (int t = 1; t < nthreads; t++) {
        if (pthread_create(&th_[t], NULL, worker, w) != 0) break;
        started++;
    }
    /* the calling thread takes items too (all of them if no thread could be started) */
    int rc = worker(w) != NULL;
    for (int t = 1; t < started; t++) {
        void *r = NULL;
        pthread_join(th_[t], &r);
        rc |= r != NULL;
    }
    free(tile_g);
    free(w);
    return rc ? 2 : 0;
}
