/*
 * Fused streaming softmax attention for the LE-MMSE on x86-64 CPUs with AVX-512 (fp32).
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
 *   acc [M][Cv+1][16]      lane-wise partial sums: denominator first, then the Cv numerators
 *
 * With direct != 0 the logit is computed from explicit differences instead,
 *     l(q, k) = qscale_q * sum_d (q_d - k_d)^2,   qscale_q = -log2(e) / (2 sigma_q^2),
 * with Q holding the raw query rows: no cancellation, for small sigma (about 2x the work).
 *
 * Each query row is processed by exactly one thread, in key order: results do not depend on
 * the number of threads (deterministic).
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <pthread.h>

#define SLACK 16.0f  /* rescale only when a logit exceeds the running max by this (base 2) */

#include "avx512_common.h"

/* One tile: QT query rows x one key block of 16 keys at a time, CV value channels.  DIRECT is a
   compile-time flag: 0 for the GEMM expansion (Q pre-scaled, logits s_q (q.k - |k|^2/2)), 1 for
   explicit differences (logits qscale_q |q - k|^2).                                          */
#define DEFINE_TILE(NAME, QT, CV, DIRECT)                                                          \
static void NAME(const float *Q, const float *qscale, int64_t D,                                   \
                 const float *Kt, const float *kb, const float *Vt,                                \
                 int64_t b0, int64_t b1, int nlast, float *m, float *acc) {                        \
    const int64_t Cv = CV, S = (CV + 1) * 16;                                                      \
    __m512 st[QT][CV + 1];                                                                         \
    float mm[QT];                                                                                  \
    for (int t = 0; t < QT; t++) {                                                                 \
        mm[t] = m[t];                                                                              \
        for (int64_t c = 0; c <= Cv; c++) st[t][c] = _mm512_loadu_ps(acc + t * S + c * 16);       \
    }                                                                                              \
    for (int64_t b = b0; b < b1; b++) {                                                            \
        const float *K = Kt + b * D * 16;                                                          \
        __m512 l[QT];                                                                              \
        for (int t = 0; t < QT; t++)                                                               \
            l[t] = DIRECT ? _mm512_setzero_ps()                                                    \
                          : _mm512_mul_ps(_mm512_loadu_ps(kb + b * 16), _mm512_set1_ps(qscale[t]));\
        for (int64_t d = 0; d < D; d++) {                                                          \
            const __m512 kv = _mm512_loadu_ps(K + d * 16);                                         \
            for (int t = 0; t < QT; t++) {                                                         \
                const __m512 qv = _mm512_set1_ps(Q[t * D + d]);                                    \
                if (DIRECT) {                                                                      \
                    const __m512 df = _mm512_sub_ps(qv, kv);                                       \
                    l[t] = _mm512_fmadd_ps(df, df, l[t]);                                          \
                } else {                                                                           \
                    l[t] = _mm512_fmadd_ps(qv, kv, l[t]);                                          \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        if (DIRECT)                                                                                \
            for (int t = 0; t < QT; t++) l[t] = _mm512_mul_ps(l[t], _mm512_set1_ps(qscale[t]));   \
        const __mmask16 valid = (b == b1 - 1) ? (__mmask16)((1u << nlast) - 1u) : 0xFFFF;          \
        const float *V = Vt + b * Cv * 16;                                                         \
        for (int t = 0; t < QT; t++) {                                                             \
            __mmask16 big = _mm512_mask_cmp_ps_mask(valid, l[t],                                   \
                                _mm512_set1_ps(mm[t] + SLACK), _CMP_GT_OQ);                        \
            if (big) {                                                                             \
                float bm = _mm512_mask_reduce_max_ps(valid, l[t]);                                 \
                float nm = bm > mm[t] ? bm : mm[t];                                                \
                __m512 sc = _mm512_set1_ps(exp2f(mm[t] - nm));                                     \
                for (int64_t c = 0; c <= Cv; c++) st[t][c] = _mm512_mul_ps(st[t][c], sc);          \
                mm[t] = nm;                                                                        \
            }                                                                                      \
            __m512 e = exp2_ps(_mm512_sub_ps(l[t], _mm512_set1_ps(mm[t])));                        \
            e = _mm512_maskz_mov_ps(valid, e);                                                     \
            st[t][0] = _mm512_add_ps(st[t][0], e);                                                 \
            for (int64_t c = 0; c < Cv; c++)                                                       \
                st[t][c + 1] = _mm512_fmadd_ps(e, _mm512_loadu_ps(V + c * 16), st[t][c + 1]);      \
        }                                                                                          \
    }                                                                                              \
    for (int t = 0; t < QT; t++) {                                                                 \
        m[t] = mm[t];                                                                              \
        for (int64_t c = 0; c <= Cv; c++) _mm512_storeu_ps(acc + t * S + c * 16, st[t][c]);        \
    }                                                                                              \
}

#define DEFINE_TILES(QT, CV)                                                                       \
    DEFINE_TILE(tile_##QT##_##CV, QT, CV, 0)                                                       \
    DEFINE_TILE(dtile_##QT##_##CV, QT, CV, 1)

DEFINE_TILES(1, 1) DEFINE_TILES(2, 1) DEFINE_TILES(4, 1) DEFINE_TILES(8, 1)
DEFINE_TILES(1, 2) DEFINE_TILES(2, 2) DEFINE_TILES(4, 2) DEFINE_TILES(8, 2)
DEFINE_TILES(1, 3) DEFINE_TILES(2, 3) DEFINE_TILES(4, 3) DEFINE_TILES(8, 3)
DEFINE_TILES(1, 4) DEFINE_TILES(2, 4) DEFINE_TILES(4, 4) DEFINE_TILES(8, 4)

/* ---------------------------------------------------------------------------- wide tiles
   For large D the dot products dominate (the exponentials and sums are ~2 % of the work at
   D = 363) and the tiles above, one key vector per broadcast, run well below the FMA peak.  A
   wide tile holds QT query rows x two key blocks (32 keys) of logits in 2 QT registers (QT <= 12:
   24 accumulators, 2 key vectors, broadcasts and differences fit in the 32 zmm registers); each
   query element is broadcast once and used for two FMAs.  The query rows are packed d-major
   (Qp[d][QT]) by the caller so that the broadcasts read one sequential stream.  The running sums
   stay in memory (acc), touched once per row and key block.                                   */

/* fold the 16 logits l of one key block into the running state (mm, a [Cv+1][16]) of one row */
static inline __attribute__((always_inline)) void fold_block(__m512 l, __mmask16 valid,
                                                             float *mm, float *a,
                                                             const float *V, const int Cv) {
    if (_mm512_mask_cmp_ps_mask(valid, l, _mm512_set1_ps(*mm + SLACK), _CMP_GT_OQ)) {
        float bm = _mm512_mask_reduce_max_ps(valid, l);
        float nm = bm > *mm ? bm : *mm;
        __m512 sc = _mm512_set1_ps(exp2f(*mm - nm));
        for (int c = 0; c <= Cv; c++)
            _mm512_storeu_ps(a + c * 16, _mm512_mul_ps(_mm512_loadu_ps(a + c * 16), sc));
        *mm = nm;
    }
    const __m512 e = _mm512_maskz_mov_ps(valid,
                                         exp2_ps(_mm512_sub_ps(l, _mm512_set1_ps(*mm))));
    _mm512_storeu_ps(a, _mm512_add_ps(_mm512_loadu_ps(a), e));
    for (int c = 0; c < Cv; c++)
        _mm512_storeu_ps(a + 16 + c * 16, _mm512_fmadd_ps(e, _mm512_loadu_ps(V + c * 16),
                                                          _mm512_loadu_ps(a + 16 + c * 16)));
}

/* NB (1 or 2) key blocks starting at block b, against the QT packed query rows */
#define WIDE_STEP(QT, CV, DIRECT, NB)                                                              \
    do {                                                                                           \
        const float *K0 = Kt + b * D * 16, *K1 = K0 + (NB - 1) * D * 16;                           \
        __m512 l0[QT], l1[QT];                                                                     \
        for (int t = 0; t < QT; t++) {                                                             \
            l0[t] = DIRECT ? _mm512_setzero_ps()                                                   \
                : _mm512_mul_ps(_mm512_loadu_ps(kb + b * 16), _mm512_set1_ps(qscale[t]));          \
            l1[t] = DIRECT || NB == 1 ? _mm512_setzero_ps()                                        \
                : _mm512_mul_ps(_mm512_loadu_ps(kb + (b + 1) * 16), _mm512_set1_ps(qscale[t]));    \
        }                                                                                          \
        for (int64_t d = 0; d < D; d++) {                                                          \
            const __m512 k0 = _mm512_loadu_ps(K0 + d * 16);                                       \
            const __m512 k1 = _mm512_loadu_ps(K1 + d * 16);                                       \
            for (int t = 0; t < QT; t++) {                                                         \
                const __m512 qv = _mm512_set1_ps(Qp[d * QT + t]);                                  \
                if (DIRECT) {                                                                      \
                    const __m512 f0 = _mm512_sub_ps(qv, k0);                                       \
                    l0[t] = _mm512_fmadd_ps(f0, f0, l0[t]);                                        \
                    if (NB == 2) {                                                                 \
                        const __m512 f1 = _mm512_sub_ps(qv, k1);                                   \
                        l1[t] = _mm512_fmadd_ps(f1, f1, l1[t]);                                    \
                    }                                                                              \
                } else {                                                                           \
                    l0[t] = _mm512_fmadd_ps(qv, k0, l0[t]);                                        \
                    if (NB == 2) l1[t] = _mm512_fmadd_ps(qv, k1, l1[t]);                           \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        const __mmask16 v0 = (b == b1 - 1) ? last : 0xFFFF;                                        \
        const __mmask16 v1 = (b + 1 == b1 - 1) ? last : 0xFFFF;                                    \
        for (int t = 0; t < QT; t++) {                                                             \
            const __m512 sc = _mm512_set1_ps(qscale[t]);                                           \
            fold_block(DIRECT ? _mm512_mul_ps(l0[t], sc) : l0[t], v0, m + t, acc + t * S,          \
                       Vt + b * CV * 16, CV);                                                      \
            if (NB == 2)                                                                           \
                fold_block(DIRECT ? _mm512_mul_ps(l1[t], sc) : l1[t], v1, m + t, acc + t * S,      \
                           Vt + (b + 1) * CV * 16, CV);                                            \
        }                                                                                          \
    } while (0)

#define DEFINE_WIDE_TILE(NAME, QT, CV, DIRECT)                                                     \
static void NAME(const float *Qp, const float *qscale, int64_t D,                                  \
                 const float *Kt, const float *kb, const float *Vt,                                \
                 int64_t b0, int64_t b1, int nlast, float *m, float *acc) {                        \
    const int64_t S = (CV + 1) * 16;                                                               \
    const __mmask16 last = (__mmask16)((1u << nlast) - 1u);                                        \
    int64_t b = b0;                                                                                \
    for (; b + 1 < b1; b += 2) WIDE_STEP(QT, CV, DIRECT, 2);                                       \
    if (b < b1) WIDE_STEP(QT, CV, DIRECT, 1);                                                      \
}

#define DEFINE_WIDE_TILES(QT, CV)                                                                  \
    DEFINE_WIDE_TILE(wtile_##QT##_##CV, QT, CV, 0)                                                 \
    DEFINE_WIDE_TILE(wdtile_##QT##_##CV, QT, CV, 1)

DEFINE_WIDE_TILES(1, 1) DEFINE_WIDE_TILES(2, 1) DEFINE_WIDE_TILES(4, 1) DEFINE_WIDE_TILES(8, 1)
DEFINE_WIDE_TILES(12, 1)
DEFINE_WIDE_TILES(1, 2) DEFINE_WIDE_TILES(2, 2) DEFINE_WIDE_TILES(4, 2) DEFINE_WIDE_TILES(8, 2)
DEFINE_WIDE_TILES(12, 2)
DEFINE_WIDE_TILES(1, 3) DEFINE_WIDE_TILES(2, 3) DEFINE_WIDE_TILES(4, 3) DEFINE_WIDE_TILES(8, 3)
DEFINE_WIDE_TILES(12, 3)
DEFINE_WIDE_TILES(1, 4) DEFINE_WIDE_TILES(2, 4) DEFINE_WIDE_TILES(4, 4) DEFINE_WIDE_TILES(8, 4)
DEFINE_WIDE_TILES(12, 4)

typedef void (*tile_fn)(const float *, const float *, int64_t, const float *, const float *,
                        const float *, int64_t, int64_t, int, float *, float *);
/* [mode][Cv - 1][tile height index]: heights 1, 2, 4, 8 (and 12 for the wide tiles) */
static const tile_fn TILES[2][4][5] = {
    {{tile_1_1, tile_2_1, tile_4_1, tile_8_1, NULL}, {tile_1_2, tile_2_2, tile_4_2, tile_8_2, NULL},
     {tile_1_3, tile_2_3, tile_4_3, tile_8_3, NULL}, {tile_1_4, tile_2_4, tile_4_4, tile_8_4, NULL}},
    {{dtile_1_1, dtile_2_1, dtile_4_1, dtile_8_1, NULL},
     {dtile_1_2, dtile_2_2, dtile_4_2, dtile_8_2, NULL},
     {dtile_1_3, dtile_2_3, dtile_4_3, dtile_8_3, NULL},
     {dtile_1_4, dtile_2_4, dtile_4_4, dtile_8_4, NULL}}};
static const tile_fn WIDE_TILES[2][4][5] = {
    {{wtile_1_1, wtile_2_1, wtile_4_1, wtile_8_1, wtile_12_1},
     {wtile_1_2, wtile_2_2, wtile_4_2, wtile_8_2, wtile_12_2},
     {wtile_1_3, wtile_2_3, wtile_4_3, wtile_8_3, wtile_12_3},
     {wtile_1_4, wtile_2_4, wtile_4_4, wtile_8_4, wtile_12_4}},
    {{wdtile_1_1, wdtile_2_1, wdtile_4_1, wdtile_8_1, wdtile_12_1},
     {wdtile_1_2, wdtile_2_2, wdtile_4_2, wdtile_8_2, wdtile_12_2},
     {wdtile_1_3, wdtile_2_3, wdtile_4_3, wdtile_8_3, wdtile_12_3},
     {wdtile_1_4, wdtile_2_4, wdtile_4_4, wdtile_8_4, wdtile_12_4}}};
static const int HEIGHTS[5] = {1, 2, 4, 8, 12};

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

typedef struct {
    const float *Q, *qscale, *Kt, *kb, *Vt;
    int64_t D, S, ntiles, maxblocks, kchunk_blocks, th;
    const int64_t *q1, *b0, *b1, *nlast, *tile_g, *tile_r;
    const tile_fn *T;
    int wide;
    double total;
    float *m, *acc;
    int tid, nt;
} work_t;

static void *worker(void *arg) {
    const work_t *w = (const work_t *)arg;
    const int64_t D = w->D, S = w->S, ntiles = w->ntiles, th = w->th;
    const int64_t *q1 = w->q1, *b0 = w->b0, *b1 = w->b1, *nlast = w->nlast;
    const int64_t *tile_g = w->tile_g, *tile_r = w->tile_r;
    const float *Q = w->Q, *qscale = w->qscale, *Kt = w->Kt, *kb = w->kb, *Vt = w->Vt;
    const tile_fn *T = w->T;
    float *m = w->m, *acc = w->acc;
    /* flush denormals to zero: far keys give weights 2^(l-m) below 2^-126, and denormal
       arithmetic is ~100x slower; their contribution is below fp32 resolution anyway */
    const unsigned int csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040);
    /* this thread's tiles: [lo, hi) by cumulative work */
    int64_t lo = 0, hi = 0;
    double acc_w = 0.0, w_lo = w->total * w->tid / w->nt, w_hi = w->total * (w->tid + 1) / w->nt;
    for (int64_t it = 0; it < ntiles; it++) {
        int64_t g = tile_g[it];
        int64_t rows = q1[g] - tile_r[it] < th ? q1[g] - tile_r[it] : th;
        double mid = acc_w + 0.5 * (double)rows * (double)(b1[g] - b0[g]);
        if (mid < w_lo) lo = it + 1;
        if (mid < w_hi) hi = it + 1;
        acc_w += (double)rows * (double)(b1[g] - b0[g]);
    }
    /* wide tiles read their query rows packed d-major: this thread's rows, packed once, each
       tile at (it - lo) * th * D, each of its sub-tiles of n rows at (r - tile_r) * D as [D][n] */
    float *Qp = NULL;
    if (w->wide && hi > lo) {
        Qp = (float *)malloc(sizeof(float) * (size_t)((hi - lo) * th * D));
        if (Qp == NULL) { _mm_setcsr(csr); return (void *)1; }
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
                const float *Qr = Qp ? Qp + (it - lo) * th * D + (r - tile_r[it]) * D : Q + r * D;
                T[h](Qr, qscale + r, D, Kt, kb, Vt, bs, be, nl, m + r, acc + r * S);
                r += n;
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
                      int64_t kchunk_blocks, float *m, float *acc, int nthreads,
                      int direct) {
    if (Cv < 1 || Cv > 4) return 1;
    const int wide = D >= WIDE_MIN_DIM;
    const tile_fn *T = (wide ? WIDE_TILES : TILES)[direct ? 1 : 0][Cv - 1];
    const int64_t th = wide ? 12 : 8;  /* rows of a work item */
    if (wide && kchunk_blocks > 1) kchunk_blocks &= ~(int64_t)1;  /* whole pairs of blocks */
    (void)M;
    const int64_t S = (Cv + 1) * 16;
    /* Work items: (group, query tile of <= th rows).  The tiles are split between the threads
       once, by equal shares of work (rows x key blocks); each thread then sweeps the keys in
       L2-sized chunks of kchunk_blocks blocks, running all of its tiles over one chunk before
       the next.  No barrier inside the sweep: a thread that the OS holds up delays only its own
       share.                                                                                 */
    int64_t maxblocks = 0, ntiles = 0;
    for (int64_t g = 0; g < G; g++) {
        if (b1[g] - b0[g] > maxblocks) maxblocks = b1[g] - b0[g];
        ntiles += (q1[g] - q0[g] + th - 1) / th;
    }
    int64_t *tile_g = (int64_t *)malloc(sizeof(int64_t) * (size_t)(2 * ntiles + 1));
    if (tile_g == NULL) return 2;
    int64_t *tile_r = tile_g + ntiles;
    double total = 0.0;
    for (int64_t g = 0, it = 0; g < G; g++)
        for (int64_t r = q0[g]; r < q1[g]; r += th, it++) {
            tile_g[it] = g; tile_r[it] = r;
            int64_t rows = q1[g] - r < th ? q1[g] - r : th;
            total += (double)rows * (double)(b1[g] - b0[g]);
        }
    /* plain POSIX threads, not OpenMP: a second OpenMP runtime beside torch's would leave
       two sets of spin-waiting threads competing for the cores                              */
    if (nthreads < 1) nthreads = 1;
    if (nthreads > 64) nthreads = 64;
    work_t w[64];
    pthread_t th_[64];
    for (int t = 0; t < nthreads; t++) {
        w[t] = (work_t){Q, qscale, Kt, kb, Vt, D, S, ntiles, maxblocks, kchunk_blocks, th, q1,
                        b0, b1, nlast, tile_g, tile_r, T, wide, total, m, acc, t, nthreads};
    }
    int started = 1;
    for (int t = 1; t < nthreads; t++) {
        if (pthread_create(&th_[t], NULL, worker, &w[t]) != 0) break;
        started++;
    }
    /* the calling thread does share 0, and any share whose thread could not be started */
    int rc = worker(&w[0]) != NULL;
    for (int t = started; t < nthreads; t++) rc |= worker(&w[t]) != NULL;
    for (int t = 1; t < started; t++) {
        void *r = NULL;
        pthread_join(th_[t], &r);
        rc |= r != NULL;
    }
    free(tile_g);
    return rc ? 2 : 0;
}
