/*
 * The vector layer of lemmse's native kernels: one source, two instruction sets.
 *
 * Each kernel is written once against the names below and compiled by lemmse/_native.py either
 * with AVX-512 (-mavx512f -mavx512dq: VL = 16 fp32 lanes, masks are __mmask16) or with AVX2 + FMA
 * (VL = 8 lanes, masks are vectors of all-ones / all-zeros lanes).  On AVX-512 every name is the
 * intrinsic of the same meaning, so the AVX-512 kernels compile to what they were before this
 * layer existed; on AVX2 the few AVX-512 operations without a counterpart (masked compares and
 * moves, scalef, two-source permutes) are emulated with blends, shifts and lane permutes.
 *
 *   vf, vmask, VL              vector of VL floats, a lane mask
 *   vload/vstore (aligned to VL * 4 bytes), vloadu/vstoreu, vadd, vsub, vmul, vfmadd(a,b,c)=a*b+c,
 *   vmax, vset1, vzero, vxor
 *   VMASK_ALL                  every lane
 *   vmask_first(n)             lanes 0 .. n-1 (0 <= n <= VL)
 *   vmask_gt(m, a, b)          lanes of m where a > b (ordered); vcmp_gt(a, b): all lanes
 *   vmask_any(m)               some lane is set
 *   vmask_xor(src, m, a, b)    a ^ b where m, src elsewhere
 *   vmaskz(m, a)               a where m, 0 elsewhere
 *   vmask_reduce_max(m, a)     max of a over the lanes of m (m not empty)
 *   vmask_eq_i32(p, q)         lanes where the int32 at p (aligned) equals the one at q
 *   vwindow(lo, hi, k)         lanes k .. k + VL - 1 of the concatenation (lo, hi), 0 < k < VL
 *   exp2_ps(x)                 2^x, relative error ~2e-7, exactly 1 at x = 0, for x <= 64;
 *                              results below 2^-126 are 0 (the kernels run with flush-to-zero)
 *   vd_mul_masked(g, m, s)     the VL doubles at g (unaligned) times the fp32 lanes of s, where m
 *   vd_add_f32(g, f)           the VL doubles at g (unaligned) plus the VL floats at f (aligned)
 */
#ifndef LEMMSE_SIMD_H
#define LEMMSE_SIMD_H
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

/* 2^f on [-0.5, 0.5] for the AVX2 exp2: 1 + f (C1 + f (C2 + ...)), a degree-5 polynomial fitted
   for the least maximum relative error (9e-8 in exact arithmetic, 1.9e-7 evaluated in fp32) with
   the constant term exactly 1, so that exp2(0) == 1: the kernels rescale every lane of a vector by
   exp2(old max - new max), which must leave the lanes whose maximum did not move unchanged
   (the AVX-512 exp2 keeps the degree-6 polynomial its kernels were measured with) */
#define EXP2_C1 0.693147004f
#define EXP2_C2 0.240222424f
#define EXP2_C3 0.0555073358f
#define EXP2_C4 0.00967151299f
#define EXP2_C5 0.00132647285f

#if defined(__AVX512F__)

#define VL 16
typedef __m512 vf;
typedef __mmask16 vmask;
#define vload _mm512_load_ps
#define vloadu _mm512_loadu_ps
#define vstore _mm512_store_ps
#define vstoreu _mm512_storeu_ps
#define vadd _mm512_add_ps
#define vsub _mm512_sub_ps
#define vmul _mm512_mul_ps
#define vfmadd _mm512_fmadd_ps
#define vmax _mm512_max_ps
#define vset1 _mm512_set1_ps
#define vzero _mm512_setzero_ps
#define vxor _mm512_xor_ps
#define VMASK_ALL ((vmask)0xFFFF)
#define vmask_first(n) ((vmask)((1u << (n)) - 1u))
#define vmask_gt(m, a, b) _mm512_mask_cmp_ps_mask((m), (a), (b), _CMP_GT_OQ)
#define vcmp_gt(a, b) _mm512_cmp_ps_mask((a), (b), _CMP_GT_OQ)
#define vmask_any(m) ((m) != 0)
#define vmask_xor _mm512_mask_xor_ps
#define vmaskz _mm512_maskz_mov_ps
#define vmask_reduce_max _mm512_mask_reduce_max_ps
#define vmask_eq_i32(p, q) \
    _mm512_cmpeq_epi32_mask(_mm512_load_si512(p), _mm512_loadu_si512(q))

static inline __attribute__((always_inline)) vf vwindow(vf lo, vf hi, int k) {
    const __m512i iota = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    return _mm512_permutex2var_ps(lo, _mm512_add_epi32(iota, _mm512_set1_epi32(k)), hi);
}

static inline vf exp2_ps(vf x) {
    /* 2^x = 2^n * 2^f, n = round(x), f in [-0.5, 0.5]; minimax-like polynomial (rel err ~2e-7) */
    __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(x, n);
    __m512 p = _mm512_set1_ps(1.535336188319500e-4f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.339887440266574e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618437357674640e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550332471162809e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402264791363012e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931472028550421e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

static inline __attribute__((always_inline)) void vd_mul_masked(double *g, vmask m, vf s) {
    __m512d slo = _mm512_cvtps_pd(_mm512_castps512_ps256(s));
    __m512d shi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(s), 1)));
    __m512d g0 = _mm512_loadu_pd(g), g1 = _mm512_loadu_pd(g + 8);
    _mm512_storeu_pd(g, _mm512_mask_mul_pd(g0, (__mmask8)m, g0, slo));
    _mm512_storeu_pd(g + 8, _mm512_mask_mul_pd(g1, (__mmask8)(m >> 8), g1, shi));
}

static inline __attribute__((always_inline)) void vd_add_f32(double *g, const float *f) {
    for (int i = 0; i < 16; i += 8) {
        __m512d a = _mm512_loadu_pd(g + i);
        _mm512_storeu_pd(g + i, _mm512_add_pd(a, _mm512_cvtps_pd(_mm256_load_ps(f + i))));
    }
}

#elif defined(__AVX2__) && defined(__FMA__)

#define VL 8
typedef __m256 vf;
typedef __m256 vmask;
#define vload _mm256_load_ps
#define vloadu _mm256_loadu_ps
#define vstore _mm256_store_ps
#define vstoreu _mm256_storeu_ps
#define vadd _mm256_add_ps
#define vsub _mm256_sub_ps
#define vmul _mm256_mul_ps
#define vfmadd _mm256_fmadd_ps
#define vmax _mm256_max_ps
#define vset1 _mm256_set1_ps
#define vzero _mm256_setzero_ps
#define vxor _mm256_xor_ps
#define VMASK_ALL _mm256_castsi256_ps(_mm256_set1_epi32(-1))

static inline __attribute__((always_inline)) vmask vmask_first(int n) {
    const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(n), iota));
}
static inline __attribute__((always_inline)) vmask vmask_gt(vmask m, vf a, vf b) {
    return _mm256_and_ps(m, _mm256_cmp_ps(a, b, _CMP_GT_OQ));
}
static inline __attribute__((always_inline)) vmask vcmp_gt(vf a, vf b) {
    return _mm256_cmp_ps(a, b, _CMP_GT_OQ);
}
static inline __attribute__((always_inline)) int vmask_any(vmask m) {
    return _mm256_movemask_ps(m) != 0;
}
static inline __attribute__((always_inline)) vf vmask_xor(vf src, vmask m, vf a, vf b) {
    return _mm256_blendv_ps(src, _mm256_xor_ps(a, b), m);
}
static inline __attribute__((always_inline)) vf vmaskz(vmask m, vf a) {
    return _mm256_and_ps(m, a);
}
static inline __attribute__((always_inline)) float vmask_reduce_max(vmask m, vf a) {
    __m256 x = _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), a, m);
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}
static inline __attribute__((always_inline)) vmask vmask_eq_i32(const int32_t *p,
                                                                const int32_t *q) {
    return _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_load_si256((const __m256i *)p),
                                                  _mm256_loadu_si256((const __m256i *)q)));
}

/* lanes k .. k + 7 of (lo, hi): one cross-lane permute and one in-lane byte shift */
static inline __attribute__((always_inline)) vf vwindow(vf lo, vf hi, int k) {
    const __m256i a = _mm256_castps_si256(lo), b = _mm256_castps_si256(hi);
    const __m256i mid = _mm256_permute2x128_si256(a, b, 0x21);  /* (lo[4..7], hi[0..3]) */
    switch (k) {
    case 1: return _mm256_castsi256_ps(_mm256_alignr_epi8(mid, a, 4));
    case 2: return _mm256_castsi256_ps(_mm256_alignr_epi8(mid, a, 8));
    case 3: return _mm256_castsi256_ps(_mm256_alignr_epi8(mid, a, 12));
    case 4: return _mm256_castsi256_ps(mid);
    case 5: return _mm256_castsi256_ps(_mm256_alignr_epi8(b, mid, 4));
    case 6: return _mm256_castsi256_ps(_mm256_alignr_epi8(b, mid, 8));
    default: return _mm256_castsi256_ps(_mm256_alignr_epi8(b, mid, 12));
    }
}

static inline vf exp2_ps(vf x) {
    /* 2^n * P5(f), with n and 2^n from one addition of a shifter: the float 1.5 2^23 + 127 + x
       holds round(x) + 127 in its low mantissa bits, and those bits shifted into the exponent
       field are 2^round(x).  x is clamped at -127 below, where the exponent field 0 gives
       exactly 0 (2^-127 is below the flush-to-zero threshold) */
    const __m256 shifter = _mm256_set1_ps(12583039.0f);  /* 1.5 * 2^23 + 127 */
    x = _mm256_max_ps(x, _mm256_set1_ps(-127.0f));
    const __m256 t = _mm256_add_ps(x, shifter);
    const __m256 f = _mm256_sub_ps(x, _mm256_sub_ps(t, shifter));
    __m256 p = _mm256_set1_ps(EXP2_C5);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(EXP2_C4));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(EXP2_C3));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(EXP2_C2));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(EXP2_C1));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
    return _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(t), 23)));
}

static inline __attribute__((always_inline)) void vd_mul_masked(double *g, vmask m, vf s) {
    const __m256 t = _mm256_blendv_ps(_mm256_set1_ps(1.0f), s, m);  /* exact 1 elsewhere */
    __m256d g0 = _mm256_loadu_pd(g), g1 = _mm256_loadu_pd(g + 4);
    _mm256_storeu_pd(g, _mm256_mul_pd(g0, _mm256_cvtps_pd(_mm256_castps256_ps128(t))));
    _mm256_storeu_pd(g + 4, _mm256_mul_pd(g1, _mm256_cvtps_pd(_mm256_extractf128_ps(t, 1))));
}

static inline __attribute__((always_inline)) void vd_add_f32(double *g, const float *f) {
    for (int i = 0; i < 8; i += 4) {
        __m256d a = _mm256_loadu_pd(g + i);
        _mm256_storeu_pd(g + i, _mm256_add_pd(a, _mm256_cvtps_pd(_mm_load_ps(f + i))));
    }
}

#else
#error "lemmse kernels need AVX-512 (-mavx512f -mavx512dq) or AVX2 and FMA (-mavx2 -mfma)"
#endif

#endif
