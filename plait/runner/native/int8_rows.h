/* Block-wise int8 quantization of bf16 activation rows, shared by the VNNI kernels (q4_vnni.c, q8_vnni.c): per
 * block of 32, dx = amax / 127 and xq = round(x / dx) to nearest even, as llama.cpp's Q8 activations. Include it
 * inside an AVX-512 section. */
#ifndef PLAIT_INT8_ROWS_H
#define PLAIT_INT8_ROWS_H

#include <immintrin.h>
#include <stdint.h>

#ifndef QK
#define QK 32
#endif

/* One row's block-wise int8 quantization: xq (int8, K), and per block dx, sx (fp32) and the sum of xq (int32). */
static inline void quantize_row(const uint16_t *x, int64_t K, int8_t *xq, float *dx, float *sx, int32_t *xsum) {
    const __m512 sign = _mm512_set1_ps(-0.0f);
    for (int64_t b = 0; b < K / QK; b++) {
        const __m256i raw0 = _mm256_loadu_si256((const __m256i *)(x + b * QK));
        const __m256i raw1 = _mm256_loadu_si256((const __m256i *)(x + b * QK + 16));
        const __m512 v0 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw0), 16));
        const __m512 v1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw1), 16));
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_andnot_ps(sign, v0), _mm512_andnot_ps(sign, v1)));
        sx[b] = _mm512_reduce_add_ps(_mm512_add_ps(v0, v1));
        dx[b] = amax / 127.0f;
        const __m512 inv = _mm512_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
        const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, inv)); /* round to nearest even */
        const __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, inv));
        _mm_storeu_si128((__m128i *)(xq + b * QK), _mm512_cvtsepi32_epi8(q0));
        _mm_storeu_si128((__m128i *)(xq + b * QK + 16), _mm512_cvtsepi32_epi8(q1));
        xsum[b] = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1)); /* values are within +-127 after rounding */
    }
}

#endif
