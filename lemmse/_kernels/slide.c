/*
 * Sliding-window (shift) formulation of the physics-agnostic LE-MMSE on x86-64, compiled with
 * AVX-512 or with AVX2 + FMA (the vector layer lemmse/_kernels/simd.h).
 *
 * For a query image v (C, H, W), a training key image u (C, H, W) with clean values x, and a
 * circular shift t = (a, b), query pixel i is paired with the key centred at j = i + t:
 *     d_t(p)         = sum_c (v[c, p] - u[c, p + t])^2                 for every pixel p,
 *     Dist(i, i + t) = sum_{delta in [-r, r]^2} d_t(i + delta)         (P x P box, r = P / 2),
 *     logit          = s_q * Dist,   s_q = -log2(e) / (2 sigma_q^2)     (base-2 units),
 *     value          = x[:, i + t]   (the clean centre pixel of the key patch).
 * The box sum is separable (horizontal then vertical) and uses direct sums of P terms, never
 * running add/subtract sums, so a pair costs about 2C + 2P additions instead of the 2 C P^2 of
 * a patch dot product, and no GEMM expansion (no cancellation at small sigma).
 * The LE-MMSE takes every one of the H W shifts; the local MMSE only t = (0, 0).  With a
 * position group table gid (physics-aware inpainting) the pair (i, i + t) is admissible iff
 * gid[i] == gid[i + t]; other pairs get weight 0 (t = 0 is always admissible).
 *
 * Vectorisation: VL fp32 lanes (16 on AVX-512, 8 on AVX2) along an image row; a row of W pixels
 * takes SW = 16 ceil(W / 16) lanes on either instruction set (the layout of the caller's state),
 * Wv = SW / VL vectors; the lanes past W compute on real, finite pixels and are never read back.
 * Every lane is one query pixel and its arithmetic does not depend on its neighbours, so the result
 * does not depend on how rows are grouped into work items or on the number of threads.
 *
 * Layout (arguments):
 *   V      [B][C][H][W]   query images          qs [B]  s_q of each query image
 *   U, X   [N][C][H][W]   key images and clean values of a chunk of training images
 *   shifts [T][2]         (a, b), 0 <= a < H, 0 <= b < W, processed in this order, split
 *                         into S consecutive groups g = 0..S-1 of T/S shifts, each with its
 *                         own state (the caller merges the S states; S is fixed by the caller
 *                         independently of the thread count, so that a single query image
 *                         still makes S whole-image work items)
 *   gid    [H][W]         int32 position groups, or NULL (all pairs admissible)
 * State (read and updated in place, so the caller streams chunks of training images):
 *   m   [B][S][H][SW]        running maximum of the logits (base 2), -inf initially
 *   acc [B][S][H][C+1][SW]   float64 sums: denominator sum 2^(l-m), then the C numerators
 *   SW = 16 ceil(W / 16)     (lanes >= W are padding)
 * Online softmax per lane: the running maximum is raised (and the sums rescaled) only when a
 * logit exceeds it by SLACK, one exp2 per pair.  The per-pair sums are made in fp32 and folded
 * into the float64 state every MERGE_TERMS shifts (an fp32 sum of 10^7 terms would stall, and
 * short fp32 sums keep the rounding error of the sums near 2^-24).
 *
 * Work items are (query image, shift group, band of rows), taken from a shared counter by plain
 * POSIX threads; each item runs over the whole chunk in (n, t) order.  A whole-image item
 * computes each row pair of the horizontal pass once and copies the 2r circular halo rows;
 * a band recomputes them.  Per item and training image
 * the key and value images are copied into circularly tiled buffers (all sizes L1/L2), so no
 * index needs a modulo in the inner loops.  Workers run with flush-to-zero and
 * denormals-are-zero (far keys give weights below 2^-126; denormal arithmetic is ~100x slower).
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "simd.h"

#define SLACK 16.0f
#define MERGE_TERMS 64


typedef struct {
    const float *V, *qs, *U, *X;
    const int32_t *shifts, *gid;
    float *m;
    double *acc;
    int64_t B, C, H, W, P, r, N, T, S, R, nbands, nitems;
    int64_t SW, Wv, SD, Wd, RU, SU, RX, SX, amax, bmax;
    atomic_llong next;
    atomic_int err;
} job_t;

typedef struct {
    float *Vp, *Ut, *Xt, *drow, *hbuf, *l1;
    int32_t *Gq, *Gt;
} bufs_t;

static int64_t round16(int64_t n) { return (n + 15) / 16 * 16; }

/* floats between the horizontal-pass buffers of the KB shifts of a block: (R + 2r) rows of SW,
   plus one cache line.  Without it, with W = 28, the buffers are exactly 4 KiB apart and the
   vertical pass, which reads the same row of every buffer, ran about 5 % slower (measured on
   AVX-512; the likely cause, not measured: loads with equal address bits 0-11 share an L1 set
   and are falsely matched against the stores in between, "4K aliasing") */
static int64_t hbuf_stride(int64_t R, int64_t r, int64_t SW) { return (R + 2 * r) * SW + 16; }

static int64_t pmod(int64_t a, int64_t n) { a %= n; return a < 0 ? a + n : a; }

/* dst[u][w] = src[(u - off) mod H][(w - off) mod W] for u < rows, w < stride (circular tile) */
static void tile_f32(float *dst, int64_t rows, int64_t stride, const float *src, int64_t H,
                     int64_t W, int64_t off) {
    for (int64_t u = 0; u < rows; u++) {
        const float *s = src + pmod(u - off, H) * W;
        float *d = dst + u * stride;
        int64_t c0 = pmod(-off, W), w = 0;
        while (w < stride) {
            int64_t n = W - c0 < stride - w ? W - c0 : stride - w;
            memcpy(d + w, s + c0, (size_t)n * sizeof(float));
            w += n;
            c0 = 0;
        }
    }
}

static void tile_i32(int32_t *dst, int64_t rows, int64_t stride, const int32_t *src, int64_t H,
                     int64_t W) {
    for (int64_t u = 0; u < rows; u++)
        for (int64_t w = 0; w < stride; w++) dst[u * stride + w] = src[(u % H) * W + w % W];
}

/* fold the fp32 partial sums of rows [0, Rb) into the float64 state and clear them */
static void merge(const job_t *J, float *l1, double *l2, int64_t Rb) {
    const int64_t n = Rb * (J->C + 1) * J->SW;
    for (int64_t i = 0; i < n; i += VL) vd_add_f32(l2 + i, l1 + i);
    memset(l1, 0, (size_t)n * sizeof(float));
}

/* squared differences of the C channels of a query row and a key row, one vector */
static inline __attribute__((always_inline)) vf
sqdiff(const float *vr, int64_t VPS, const float *ur, int64_t UTS, const int C) {
    vf d = vzero();
    for (int c = 0; c < C; c++) {
        vf df = vsub(vload(vr + c * VPS), vloadu(ur + c * UTS));
        d = vfmadd(df, df, d);
    }
    return d;
}

/* Horizontal pass of one shift: squared differences of every padded row pair, then the
   horizontal box sum h[x] = sum_{k < P} d[x + k], into h[(Rb + 2r)][SW].  The shifted vectors
   are lane permutes of two consecutive d vectors (kept in registers for P <= VL + 1; beyond, the
   row of d goes through memory and is reloaded aligned: an unaligned load straddling two fresh
   stores would stall on the failed store forwarding). */
static inline __attribute__((always_inline)) void
horizontal(const job_t *J, const bufs_t *bf, int64_t y0, int64_t Rb, int64_t a, int64_t bb,
           float *h, const int C, const int PP) {
    const int64_t P = PP ? PP : J->P, r = P / 2, SW = J->SW, Wv = J->Wv, SD = J->SD;
    const int64_t Wd = J->Wd, SU = J->SU;
    const int64_t VPS = (J->H + 2 * r) * SD, UTS = J->RU * SU;
    float *drow = bf->drow;
    /* whole image: rows r .. r + H - 1 are all the distinct row pairs; the halo rows above and
       below are the same row pairs (circularly), copied after the loop */
    const int whole = Rb == J->H;
    const int64_t ylo = whole ? r : 0, yhi = whole ? r + Rb : Rb + 2 * r;
    for (int64_t yy = ylo; yy < yhi; yy++) {
        const float *vr = bf->Vp + (y0 + yy) * SD;
        const float *ur = bf->Ut + (y0 + yy + a) * SU + bb;
        float *hr = h + yy * SW;
        if (P <= VL + 1) {
            vf dc = sqdiff(vr, VPS, ur, UTS, C);
            for (int64_t xv = 0; xv < Wv; xv++) {
                vf dn = sqdiff(vr + xv * VL + VL, VPS, ur + xv * VL + VL, UTS, C);
                vf acc = dc;
                for (int64_t k = 1; k < P; k++)
                    acc = vadd(acc, k == VL ? dn : vwindow(dc, dn, (int)k));
                vstore(hr + xv * VL, acc);
                dc = dn;
            }
            continue;
        }
        for (int64_t xv = 0; xv < Wd; xv++)
            vstore(drow + xv * VL, sqdiff(vr + xv * VL, VPS, ur + xv * VL, UTS, C));
        for (int64_t xv = 0; xv < Wv; xv++) {
            vf acc = vload(drow + xv * VL);
            for (int64_t k = 1; k < P; k++) {
                const int64_t j = xv + k / VL, kk = k % VL;
                vf lo = vload(drow + j * VL);
                vf sh = kk == 0 ? lo : vwindow(lo, vload(drow + j * VL + VL), (int)kk);
                acc = vadd(acc, sh);
            }
            vstore(hr + xv * VL, acc);
        }
    }
    if (whole) {  /* halo rows: row yy and row yy + H are the same row pair */
        const int64_t H = J->H;
        for (int64_t yy = 0; yy < r; yy++)
            memcpy(h + yy * SW, h + (yy + H) * SW, (size_t)SW * sizeof(float));
        for (int64_t yy = r + H; yy < H + 2 * r; yy++)
            memcpy(h + yy * SW, h + (yy - H) * SW, (size_t)SW * sizeof(float));
    }
}

/* Online softmax update of one query row's VL lanes with the distances of one shift. */
static inline __attribute__((always_inline)) void
update(vf dist, vf s, vf *nm, vf *st, vmask adm, const float *xr,
       int64_t XTS, double *gp, int64_t SW, const int C, const int G) {
    const vf slack = vset1(SLACK), floor2 = vset1(-256.0f);
    const vf neg0 = vset1(-0.0f);
    vf x = vfmadd(dist, s, *nm);
    vmask big = G ? vmask_gt(adm, x, slack) : vcmp_gt(x, slack);
    if (vmask_any(big)) {  /* raise the running maximum of these lanes, rescale their sums */
        vf l = vmul(dist, s);
        vf nn = vmask_xor(*nm, big, l, neg0);  /* -l */
        vf sc = exp2_ps(vmax(vsub(nn, *nm), floor2));
        for (int c = 0; c <= C; c++) st[c] = vmul(st[c], sc);
        for (int c = 0; c <= C; c++) vd_mul_masked(gp + c * SW, big, sc);
        *nm = nn;
        x = vfmadd(dist, s, nn);
    }
    vf e = exp2_ps(x);
    if (G) e = vmaskz(adm, e);
    st[0] = vadd(st[0], e);
    for (int c = 0; c < C; c++)
        st[c + 1] = vfmadd(e, vloadu(xr + c * XTS), st[c + 1]);
}

/* Vertical pass and online softmax update of NK shifts whose horizontal passes are in
   hbuf[k].  Rows go in pairs (y, y + 1), y even in image coordinates (bands start on even
   rows): the pair shares the P - 1 middle rows of its two P-row box sums,
       common = h[y+1] + ... + h[y+P-1],  Dist[y] = common + h[y],  Dist[y+1] = common + h[y+P],
   and a row without a partner (odd row count) computes Dist[y] the same way, so every pixel's
   distance is the same sum in the same order whatever the work split.  Each pixel's state
   stays in registers across the NK shifts.  With nm = -m (minus the running maximum) the
   base-2 logit relative to the maximum is x = dist * s + nm: one fma.  All pointers are local
   (the may_alias vector stores would otherwise force reloads of pointers read via a struct). */
static inline __attribute__((always_inline)) void
vertical(const job_t *J, const bufs_t *bf, int64_t y0, int64_t Rb, vf s, float *mrow,
         double *l2, const int64_t *sa, const int64_t *sb, const int C, const int G,
         const int PP, const int NK) {
    const int64_t P = PP ? PP : J->P, r = P / 2, SW = J->SW, Wv = J->Wv, SX = J->SX;
    const int64_t XTS = J->RX * SX, HS = hbuf_stride(J->R, r, SW), LS = (C + 1) * SW;
    float *const l1 = bf->l1;
    const float *const hbuf = bf->hbuf;
    const int32_t *const Gq = bf->Gq;
    const float *xk[4];
    const int32_t *gk[4];
    for (int k = 0; k < NK; k++) {
        xk[k] = bf->Xt + (y0 + sa[k]) * SX + sb[k];
        gk[k] = G ? bf->Gt + (y0 + sa[k]) * SX + sb[k] : NULL;
    }
    const vf neg0 = vset1(-0.0f);
    for (int64_t y = 0; y < Rb; y += 2) {
        const int two = y + 1 < Rb;
        for (int64_t xv = 0; xv < Wv; xv++) {
            const int64_t oh = y * SW + xv * VL, ox = y * SX + xv * VL;
            float *mp = mrow + oh;
            float *lp = l1 + y * LS + xv * VL;
            double *gp = l2 + y * LS + xv * VL;
            vf nm0 = vxor(vloadu(mp), neg0), nm1 = nm0;
            vf st0[5], st1[5];
            for (int c = 0; c <= C; c++) st0[c] = st1[c] = vload(lp + c * SW);
            if (two) {
                nm1 = vxor(vloadu(mp + SW), neg0);
                for (int c = 0; c <= C; c++) st1[c] = vload(lp + LS + c * SW);
            }
            for (int k = 0; k < NK; k++) {
                const float *hk = hbuf + k * HS + oh;
                vf common = vzero();
                if (P > 1) {
                    common = vload(hk + SW);
                    for (int64_t j = 2; j < P; j++)
                        common = vadd(common, vload(hk + j * SW));
                }
                vf d0 = P > 1 ? vadd(common, vload(hk)) : vload(hk);
                vmask adm0 = VMASK_ALL, adm1 = VMASK_ALL;
                if (G) {
                    const int32_t *gq = Gq + (y0 + y) * SW + xv * VL;
                    adm0 = vmask_eq_i32(gq, gk[k] + ox);
                    if (two)
                        adm1 = vmask_eq_i32(gq + SW, gk[k] + ox + SX);
                }
                update(d0, s, &nm0, st0, adm0, xk[k] + ox, XTS, gp, SW, C, G);
                if (two) {
                    vf d1 = P > 1 ? vadd(common, vload(hk + P * SW)) : vload(hk + SW);
                    update(d1, s, &nm1, st1, adm1, xk[k] + ox + SX, XTS, gp + LS, SW, C, G);
                }
            }
            for (int c = 0; c <= C; c++) vstore(lp + c * SW, st0[c]);
            vstoreu(mp, vxor(nm0, neg0));
            if (two) {
                for (int c = 0; c <= C; c++) vstore(lp + LS + c * SW, st1[c]);
                vstoreu(mp + SW, vxor(nm1, neg0));
            }
        }
    }
}

/* One training image, all shifts, rows [y0, y0 + Rb) of one query image, in blocks of KB
   shifts (the horizontal pass of each, then one vertical pass for the block). */
#define KB 4
static inline __attribute__((always_inline)) void
shifts_body(const job_t *J, const bufs_t *bf, int64_t y0, int64_t Rb, vf s, float *mrow,
            double *l2, int64_t *pending, const int32_t *shifts, int64_t T, const int C,
            const int G, const int PP) {
    const int64_t P = PP ? PP : J->P, HS = hbuf_stride(J->R, P / 2, J->SW);
    float *const hbuf = bf->hbuf;
    for (int64_t t0 = 0; t0 < T; t0 += KB) {
        const int nk = T - t0 < KB ? (int)(T - t0) : KB;
        int64_t sa[KB], sb[KB];
        for (int k = 0; k < nk; k++) {
            sa[k] = shifts[2 * (t0 + k)];
            sb[k] = shifts[2 * (t0 + k) + 1];
            horizontal(J, bf, y0, Rb, sa[k], sb[k], hbuf + k * HS, C, PP);
        }
        if (nk == KB) {
            vertical(J, bf, y0, Rb, s, mrow, l2, sa, sb, C, G, PP, KB);
        } else {
            for (int k = 0; k < nk; k++) {
                bufs_t one = *bf;
                one.hbuf = hbuf + k * HS;
                vertical(J, &one, y0, Rb, s, mrow, l2, sa + k, sb + k, C, G, PP, 1);
            }
        }
        *pending += nk;
        if (*pending >= MERGE_TERMS) {
            merge(J, bf->l1, l2, Rb);
            *pending = 0;
        }
    }
}

typedef void (*shifts_fn)(const job_t *, const bufs_t *, int64_t, int64_t, vf, float *,
                          double *, int64_t *, const int32_t *, int64_t);
/* specialised on the channels C, the use of position groups G and the patch size (0: any) */
#define DEFINE_SHIFTS(C, G, P)                                                                 \
    static void shifts_##C##_##G##_##P(const job_t *J, const bufs_t *bf, int64_t y0,           \
                                       int64_t Rb, vf s, float *mrow, double *l2,              \
                                       int64_t *pending, const int32_t *sh, int64_t T) {       \
        shifts_body(J, bf, y0, Rb, s, mrow, l2, pending, sh, T, C, G, P);                       \
    }
#define DEFINE_SHIFTS_C(C, G)                                                                  \
    DEFINE_SHIFTS(C, G, 0) DEFINE_SHIFTS(C, G, 3) DEFINE_SHIFTS(C, G, 5)                        \
    DEFINE_SHIFTS(C, G, 7) DEFINE_SHIFTS(C, G, 11)
DEFINE_SHIFTS_C(1, 0)
DEFINE_SHIFTS_C(2, 0)
DEFINE_SHIFTS_C(3, 0)
DEFINE_SHIFTS_C(4, 0)
DEFINE_SHIFTS_C(1, 1)
DEFINE_SHIFTS_C(2, 1)
DEFINE_SHIFTS_C(3, 1)
DEFINE_SHIFTS_C(4, 1)
#define ROW_P(C, G) {shifts_##C##_##G##_0, shifts_##C##_##G##_3, shifts_##C##_##G##_5,          \
                     shifts_##C##_##G##_7, shifts_##C##_##G##_11}
static const shifts_fn SHIFTS[2][4][5] = {
    {ROW_P(1, 0), ROW_P(2, 0), ROW_P(3, 0), ROW_P(4, 0)},
    {ROW_P(1, 1), ROW_P(2, 1), ROW_P(3, 1), ROW_P(4, 1)}};

static shifts_fn pick_shifts(int64_t C, int G, int64_t P) {
    int ip = P == 3 ? 1 : P == 5 ? 2 : P == 7 ? 3 : P == 11 ? 4 : 0;
    return SHIFTS[G][C - 1][ip];
}

static void run_item(const job_t *J, const bufs_t *bf, int64_t item) {
    const int64_t C = J->C, H = J->H, W = J->W, r = J->r, SW = J->SW;
    /* item = (query image b, shift group g, band of rows from y0) */
    const int64_t b = item / (J->S * J->nbands), g = item / J->nbands % J->S;
    const int64_t y0 = (item % J->nbands) * J->R;
    const int64_t t0 = g * J->T / J->S, t1 = (g + 1) * J->T / J->S;
    const int64_t Rb = J->R < H - y0 ? J->R : H - y0;
    const shifts_fn f = pick_shifts(C, J->gid != NULL, J->P);
    for (int64_t c = 0; c < C; c++)
        tile_f32(bf->Vp + c * (H + 2 * r) * J->SD, H + 2 * r, J->SD,
                 J->V + (b * C + c) * H * W, H, W, r);
    const vf s = vset1(J->qs[b]);
    float *mrow = J->m + ((b * J->S + g) * H + y0) * SW;
    double *l2 = J->acc + ((b * J->S + g) * H + y0) * (C + 1) * SW;
    memset(bf->l1, 0, (size_t)(Rb * (C + 1) * SW) * sizeof(float));
    int64_t pending = 0;  /* shifts summed in l1 since the last merge */
    for (int64_t n = 0; n < J->N; n++) {
        for (int64_t c = 0; c < C; c++) {
            tile_f32(bf->Ut + c * J->RU * J->SU, J->RU, J->SU, J->U + (n * C + c) * H * W, H,
                     W, r);
            tile_f32(bf->Xt + c * J->RX * J->SX, J->RX, J->SX, J->X + (n * C + c) * H * W, H,
                     W, 0);
        }
        if (t1 > t0) f(J, bf, y0, Rb, s, mrow, l2, &pending, J->shifts + 2 * t0, t1 - t0);
    }
    if (pending) merge(J, bf->l1, l2, Rb);
}

static void *fallible_alloc(size_t n) {
    n = (n + 63) / 64 * 64;
    void *p = aligned_alloc(64, n ? n : 64);
    if (p) memset(p, 0, n);
    return p;
}

static void *worker(void *arg) {
    job_t *J = (job_t *)arg;
    const unsigned int csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040);  /* flush-to-zero, denormals-are-zero */
    const int64_t C = J->C, H = J->H, r = J->r;
    bufs_t bf;
    bf.Vp = fallible_alloc(sizeof(float) * (size_t)(C * (H + 2 * r) * J->SD));
    bf.Ut = fallible_alloc(sizeof(float) * (size_t)(C * J->RU * J->SU));
    bf.Xt = fallible_alloc(sizeof(float) * (size_t)(C * J->RX * J->SX));
    bf.drow = fallible_alloc(sizeof(float) * (size_t)(J->SD + 16));
    bf.hbuf = fallible_alloc(sizeof(float) * (size_t)(KB * hbuf_stride(J->R, r, J->SW)));
    bf.l1 = fallible_alloc(sizeof(float) * (size_t)(J->R * (C + 1) * J->SW));
    bf.Gq = bf.Gt = NULL;
    int ok = bf.Vp && bf.Ut && bf.Xt && bf.drow && bf.hbuf && bf.l1;
    if (ok && J->gid) {
        bf.Gq = fallible_alloc(sizeof(int32_t) * (size_t)(H * J->SW));
        bf.Gt = fallible_alloc(sizeof(int32_t) * (size_t)(J->RX * J->SX));
        ok = bf.Gq && bf.Gt;
        if (ok) {
            tile_i32(bf.Gq, H, J->SW, J->gid, H, J->W);
            tile_i32(bf.Gt, J->RX, J->SX, J->gid, H, J->W);
        }
    }
    if (!ok) {
        atomic_store(&J->err, 4);
    } else {
        for (;;) {
            int64_t it = atomic_fetch_add(&J->next, 1);
            if (it >= J->nitems || atomic_load(&J->err)) break;
            run_item(J, &bf, it);
        }
    }
    free(bf.Vp); free(bf.Ut); free(bf.Xt); free(bf.drow); free(bf.hbuf); free(bf.l1);
    free(bf.Gq); free(bf.Gt);
    _mm_setcsr(csr);
    return NULL;
}

/* Number of rows per work item: whole images when there are enough of them for the threads,
   else the fewest bands per image that make the item count a multiple of the thread count
   (each band recomputes 2r halo rows of the horizontal pass). */
static int64_t auto_band_rows(int64_t B, int64_t H, int64_t r, int nthreads) {  /* B: items */
    if (nthreads <= 1 || B >= 4 * nthreads) return H;
    int64_t g = B, t = nthreads;
    while (t) { int64_t tmp = g % t; g = t; t = tmp; }  /* gcd(B, nthreads) */
    int64_t nb = nthreads / g;
    int64_t R = (H + nb - 1) / nb;
    int64_t Rmin = 2 * r > 4 ? 2 * r : 4;
    if (R < Rmin) R = Rmin;
    return R < H ? R : H;
}

/* Returns 0 on success, 1 bad sizes, 2 bad patch size, 3 bad shift, 4 out of memory. */
int lemmse_slide_f32(const float *V, const float *qs, int64_t B, int64_t C, int64_t H,
                     int64_t W, int64_t P, const float *U, const float *X, int64_t N,
                     const int32_t *shifts, int64_t T, int64_t S, const int32_t *gid,
                     float *m, double *acc, int64_t band_rows, int nthreads) {
    if (B < 1 || N < 0 || C < 1 || C > 4 || H < 1 || W < 1 || T < 1 || S < 1 || S > T)
        return 1;
    if (P < 1 || P % 2 == 0 || P > H || P > W) return 2;
    int64_t amax = 0, bmax = 0;
    for (int64_t t = 0; t < T; t++) {
        int64_t a = shifts[2 * t], b = shifts[2 * t + 1];
        if (a < 0 || a >= H || b < 0 || b >= W) return 3;
        if (a > amax) amax = a;
        if (b > bmax) bmax = b;
    }
    if (N == 0) return 0;
    if (nthreads < 1) nthreads = 1;
    if (nthreads > 64) nthreads = 64;
    job_t *job = (job_t *)malloc(sizeof(job_t));
    if (!job) return 4;
    job->V = V; job->qs = qs; job->U = U; job->X = X; job->shifts = shifts; job->gid = gid;
    job->m = m; job->acc = acc;
    job->B = B; job->C = C; job->H = H; job->W = W; job->P = P; job->r = P / 2; job->N = N;
    job->T = T;
    job->S = S;
    job->R = band_rows > 0 ? band_rows : auto_band_rows(B * S, H, P / 2, nthreads);
    job->R += job->R % 2;  /* bands start on even rows (see vertical) */
    if (job->R > H) job->R = H;
    job->nbands = (H + job->R - 1) / job->R;
    job->nitems = B * S * job->nbands;
    job->SW = round16(W);
    job->Wv = job->SW / VL;
    job->Wd = job->Wv + ((P + VL - 3) / VL > 1 ? (P + VL - 3) / VL : 1);  /* row of d + lookahead */
    job->SD = VL * job->Wd;
    job->amax = amax; job->bmax = bmax;
    job->RU = H + 2 * job->r + amax;
    job->SU = round16(bmax + job->SD);
    job->RX = H + amax;
    job->SX = round16(bmax + job->SW);
    atomic_init(&job->next, 0);
    atomic_init(&job->err, 0);
    /* plain POSIX threads, not OpenMP (a second OpenMP runtime beside torch's competes) */
    pthread_t th[64];
    int started = 1;
    for (int t = 1; t < nthreads; t++) {
        if (pthread_create(&th[t], NULL, worker, job) != 0) break;
        started++;
    }
    worker(job);
    for (int t = 1; t < started; t++) pthread_join(th[t], NULL);
    int err = atomic_load(&job->err);
    free(job);
    return err;
}
