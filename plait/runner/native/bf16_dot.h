/* AVX512-BF16 helpers shared by the attention kernels (paged_attention.c, shared_prefix.c): defines
 * HAVE_BF16_DOT where the CPU (the compiler's -march=native) has the bf16 dot-product instruction. */
#ifndef PLAIT_BF16_DOT_H
#define PLAIT_BF16_DOT_H

#include <stdint.h>

#if defined(__AVX512F__) && defined(__AVX512BF16__)
#include <immintrin.h>
#define HAVE_BF16_DOT 1

/* Lane u of the result = the sum of the 16 lanes of acc[u]: a transpose-and-add tree, ~3 instructions per
 * vector instead of a full horizontal reduction each. */
static inline __m512 sum16(const __m512 acc[16]) {
    __m512 pairs[8], quads[4];
    for (int i = 0; i < 8; ++i)  /* per 128-bit lane: [a, b, a, b] partial sums */
        pairs[i] = _mm512_add_ps(_mm512_unpacklo_ps(acc[2 * i], acc[2 * i + 1]),
                                 _mm512_unpackhi_ps(acc[2 * i], acc[2 * i + 1]));
    for (int i = 0; i < 4; ++i) {  /* per 128-bit lane: [a, b, c, d] partial sums */
        const __m512d x = _mm512_castps_pd(pairs[2 * i]), y = _mm512_castps_pd(pairs[2 * i + 1]);
        quads[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
                                 _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
    }
    const __m512 lo = _mm512_add_ps(_mm512_shuffle_f32x4(quads[0], quads[1], 0x88),
                                    _mm512_shuffle_f32x4(quads[0], quads[1], 0xDD));
    const __m512 hi = _mm512_add_ps(_mm512_shuffle_f32x4(quads[2], quads[3], 0x88),
                                    _mm512_shuffle_f32x4(quads[2], quads[3], 0xDD));
    return _mm512_add_ps(_mm512_shuffle_f32x4(lo, hi, 0x88), _mm512_shuffle_f32x4(lo, hi, 0xDD));
}

/* q . row for head sizes 64 and 128 as 16 lanes of partial sums (reduce them with sum16 or a horizontal add),
 * with the CPU's bf16 dot-product instruction: q and k stay bf16 (the values the model produced; products are
 * exact, sums fp32). D is a constant after inlining, so the loop over it unrolls into registers. */
__attribute__((always_inline)) static inline __m512 dot_row(const __m512bh *qv, const uint16_t *row, const int D) {
    __m512 acc = _mm512_setzero_ps();
    for (int c = 0; c < D / 32; ++c) acc = _mm512_dpbf16_ps(acc, qv[c], (__m512bh)_mm512_loadu_si512(row + 32 * c));
    return acc;
}

/* e^x for 16 lanes (x <= 0 here: scores minus their running max): range reduction x = n ln2 + r and Cephes'
 * degree-6 polynomial for e^r, ~1 ulp; inputs below -87 give ~0. A scalar expf per score was a third of the
 * shared-prefix kernel's time. */
static inline __m512 exp16(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    const __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
}

static inline __m512 bf16x16_to_f32(const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}
#endif

#endif
