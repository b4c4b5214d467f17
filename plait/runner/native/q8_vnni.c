/* logits[M, N] = x[M, K] @ w[N, K]^T for a bf16 x and Q8_0 weights (the GGUF's LM head), in integer arithmetic on
 * AVX512-VNNI; fp32 out.
 *
 * Why: above two rows the bf16 head ran oneDNN's bf16 GEMM over a dense copy (10 ms of a 65 ms step at 64 rows,
 * and it grows with every verified draft row); integer dot products do twice the work per instruction. Each
 * activation row is quantized to int8 per block of 32 (int8_rows.h), as llama.cpp's Q8_0 x Q8_0 dot products do:
 *     y[m, n] = sum over blocks b of  d[n, b] * dx[m, b] * sum_k q[n, k] * xq[m, k]
 * VPDPBUSD multiplies unsigned by signed bytes, so the weights are stored as q + 128 (0..255) and the block sum
 * subtracts 128 * sum xq. Teacher-forced against fp32 (the golden test's measure) this head is as accurate as the
 * bf16 GEMM it replaces (mean |logprob error| 0.0425 against 0.0433 with the 4-bit layers).
 *
 * Batch invariance: as q4_vnni.c, a row's arithmetic does not depend on M; threads split the outputs.
 *
 * Weight layout (runner/q8_vnni.py): tiles of 16 outputs; per tile and block 544 bytes: 8 chunks of 64 bytes,
 * byte 4n + i of chunk c = output n's input 4c + i (+128), then 16 fp16 scales d. */
#include <stdint.h>
#include <stdlib.h>

#include "common.h"

#define TILE_N 16
#define TILE_BYTES 544
#define ROW_TILE 8

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#include <immintrin.h>

#include "int8_rows.h"

/* R rows of one row tile (int8_rows.h) against one tile of 16 outputs. */
static inline __attribute__((always_inline)) void q8_tile_rows(const int R, const uint8_t *w, const uint8_t *next,
                                                               int64_t blocks, const int8_t *xq, const float *dx,
                                                               const int32_t *xsum128, float *y, int64_t N) {
    __m512 acc[ROW_TILE];
    for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
    for (int64_t b = 0; b < blocks; b++) {
        const uint8_t *p = w + b * TILE_BYTES;
        if (next) prefetch_block(next + b * TILE_BYTES, TILE_BYTES);
        const int8_t *xb = xq + b * R * QK;
        __m512i dot[ROW_TILE];
        for (int r = 0; r < R; r++) dot[r] = _mm512_set1_epi32(xsum128[b * R + r]); /* undoes the +128 */
        for (int c = 0; c < 8; c++) {
            const __m512i wv = _mm512_loadu_si512((const void *)(p + 64 * c));
            for (int r = 0; r < R; r++) {
                int32_t x4;
                __builtin_memcpy(&x4, xb + r * QK + 4 * c, 4);
                dot[r] = _mm512_dpbusd_epi32(dot[r], wv, _mm512_set1_epi32(x4));
            }
        }
        const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + 512)));
        for (int r = 0; r < R; r++)
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[r]), _mm512_mul_ps(d, _mm512_set1_ps(dx[b * R + r])),
                                     acc[r]);
    }
    for (int r = 0; r < R; r++) _mm512_storeu_ps(y + r * N, acc[r]);
}

static void q8_rows_of_tile(const int8_tiles *a, const uint8_t *w, float *y, int64_t N) {
    for (int64_t t = 0; t < a->tiles; t++) {
        const int8_tile v = int8_tile_at(a, t);
        const uint8_t *next = int8_prefetch_during(a, t, w + a->blocks * TILE_BYTES);
        float *yt = y + v.first * N;
        switch (v.rows) {
            case 8: q8_tile_rows(8, w, next, a->blocks, v.xq, v.dx, v.xsum, yt, N); break;
            case 7: q8_tile_rows(7, w, next, a->blocks, v.xq, v.dx, v.xsum, yt, N); break;
            case 6: q8_tile_rows(6, w, next, a->blocks, v.xq, v.dx, v.xsum, yt, N); break;
            case 5: q8_tile_rows(5, w, next, a->blocks, v.xq, v.dx, v.xsum, yt, N); break;
            case 4: q8_tile_rows(4, w, next, a->blocks, v.xq, v.dx, v.xsum, yt, N); break;
            case 3: q8_tile_rows(3, w, next, a->blocks, v.xq, v.dx, v.xsum, yt, N); break;
            case 2: q8_tile_rows(2, w, next, a->blocks, v.xq, v.dx, v.xsum, yt, N); break;
            case 1: q8_tile_rows(1, w, next, a->blocks, v.xq, v.dx, v.xsum, yt, N); break;
            default: break;
        }
    }
}

int plait_q8_vnni_linear_bf16(const uint16_t *x, const uint8_t *w, float *y, int64_t M, int64_t N, int64_t K) {
    if (K % QK != 0 || N % TILE_N != 0) return -1;
    int8_tiles a; /* its exact block sums sx are unused by a symmetric format */
    if (int8_tiles_alloc(&a, M, K) != 0) return -2;
#pragma omp parallel
    {
#pragma omp for schedule(static)
        for (int64_t m = 0; m < M; m++) int8_tiles_quantize(&a, x, m, -128);
#pragma omp for schedule(static)
        for (int64_t t = 0; t < N / TILE_N; t++) q8_rows_of_tile(&a, w + t * a.blocks * TILE_BYTES, y + t * TILE_N, N);
    }
    free(a.xq);
    return 0;
}

#else

int plait_q8_vnni_linear_bf16(const uint16_t *x, const uint8_t *w, float *y, int64_t M, int64_t N, int64_t K) {
    (void)x; (void)w; (void)y; (void)M; (void)N; (void)K;
    return -1; /* no AVX512-VNNI: the caller keeps its other paths */
}

#endif
