/* Shared AVX-512 helpers of lemmse's native kernels (included by each kernel source). */
#ifndef LEMMSE_AVX512_COMMON_H
#define LEMMSE_AVX512_COMMON_H
#include <immintrin.h>

static inline __m512 exp2_ps(__m512 x) {
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

#endif
