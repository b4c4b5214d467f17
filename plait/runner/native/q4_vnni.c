/* y[M, N] = x[M, K] @ w[N, K]^T for a bf16 x and 4-bit Q4_0 / Q4_1 weights, in integer arithmetic on AVX512-VNNI.
 *
 * Why: torch's CPU int4 kernel rebuilds bf16 weights for every group of rows it multiplies, so a 5-row step
 * (a decode verifying 4 drafted tokens) costs ~3x a 1-row step, and beyond 8 rows the dense bf16 weights are
 * cheaper. Here the weights are read once per step whatever its row count: each row's activations are quantized
 * to int8 per block of 32 (as llama.cpp's Q4 x Q8 dot products do), one VPDPBUSD multiplies 16 outputs x 4 inputs
 * of one row, and a block's int32 sums are scaled in fp32:
 *     y[m, n] = sum over blocks b of  d[n, b] * dx[m, b] * sum_k (q[n, k] - 8) * xq[m, k]  +  z[n, b] * sx[m, b]
 * with w = q * d + mn = (q - 8) * d + z (Q4_1; Q4_0 is mn = -8 d), z = mn + 8 d, xq = round(x / dx),
 * dx = amax / 127, and sx = the exact sum of the block's x (so the offset term carries no quantization error).
 * The activations are quantized once per call into int8_rows.h's tiles: a tile's rows share each weight load.
 *
 * Batch invariance: a row's quantization and every output's sum (integer inside a block, then fp32 over blocks
 * in order) are the same operations whatever M is; tiles of rows only share the weight loads. Threads split the
 * outputs, never the sum. So a row's result is bit-identical alone or inside any batch.
 *
 * Weight layout (built by runner/q4_vnni.py): tiles of 16 outputs; per tile and block 320 bytes: 4 chunks of 64
 * bytes, where byte 4n + i of chunk c holds output n's input 4c + i in its low nibble and input 16 + 4c + i in its
 * high nibble (so a chunk is two VPDPBUSD operands), then 16 fp16 scales d and 16 fp16 minimums mn. That is the
 * file's 5 bits a weight, streamed in order. */
#include <stdint.h>
#include <stdlib.h>

#include "common.h"

#define QK 32
#define TILE_N 16
#define TILE_BYTES 320
#define ROW_TILE 8 /* rows sharing one weight load: 8 int32 + 8 fp32 accumulators of the 32 zmm registers */

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#include <immintrin.h>

#include "int8_rows.h"

static inline __m256i to_bf16(__m512 v) {
    /* round to nearest even, as torch converts (activations are finite here) */
    __m512i u = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    u = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb));
    return _mm512_cvtepi32_epi16(_mm512_srli_epi32(u, 16));
}

/* R rows (a compile-time constant after inlining) of one row tile (int8_rows.h) against one tile of 16 outputs. */
static inline __attribute__((always_inline)) void tile_rows(const int R, const uint8_t *w, const uint8_t *next,
                                                            int64_t blocks, const int8_t *xq, const float *dx,
                                                            const float *sx, const int32_t *xsum8, uint16_t *y,
                                                            int64_t N) {
    __m512 acc[ROW_TILE];
    for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
    const __m512i nibble = _mm512_set1_epi8(0x0f);
    /* With few rows, a row's eight VPDPBUSD a block are one dependency chain: give the high nibbles a second one
     * (integer sums, so the result is the same bits). */
    const int split = R <= 3;
    for (int64_t b = 0; b < blocks; b++) {
        const uint8_t *p = w + b * TILE_BYTES;
        if (next) prefetch_block(next + b * TILE_BYTES, TILE_BYTES);
        const int8_t *xb = xq + b * R * QK;
        const float *dxb = dx + b * R, *sxb = sx + b * R;
        /* sum (q - 8) xq: centred codes carry about half the activation rounding error of q in 0..15; the
         * -8 sum xq is where the dot product starts */
        __m512i dot[ROW_TILE], dot_hi[ROW_TILE];
        for (int r = 0; r < R; r++) {
            dot[r] = _mm512_set1_epi32(xsum8[b * R + r]);
            dot_hi[r] = _mm512_setzero_si512();
        }
        for (int c = 0; c < 4; c++) {
            const __m512i raw = _mm512_loadu_si512((const void *)(p + 64 * c));
            const __m512i lo = _mm512_and_si512(raw, nibble);
            const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), nibble);
            for (int r = 0; r < R; r++) {
                int32_t x_lo, x_hi;
                __builtin_memcpy(&x_lo, xb + r * QK + 4 * c, 4);
                __builtin_memcpy(&x_hi, xb + r * QK + 16 + 4 * c, 4);
                dot[r] = _mm512_dpbusd_epi32(dot[r], lo, _mm512_set1_epi32(x_lo));
                if (split) dot_hi[r] = _mm512_dpbusd_epi32(dot_hi[r], hi, _mm512_set1_epi32(x_hi));
                else dot[r] = _mm512_dpbusd_epi32(dot[r], hi, _mm512_set1_epi32(x_hi));
            }
        }
        if (split)
            for (int r = 0; r < R; r++) dot[r] = _mm512_add_epi32(dot[r], dot_hi[r]);
        const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + 256)));
        const __m512 mn = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + 288)));
        const __m512 zero = _mm512_fmadd_ps(_mm512_set1_ps(8.0f), d, mn); /* exact: fp16 d and mn */
        for (int r = 0; r < R; r++) {
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[r]), _mm512_mul_ps(d, _mm512_set1_ps(dxb[r])), acc[r]);
            acc[r] = _mm512_fmadd_ps(zero, _mm512_set1_ps(sxb[r]), acc[r]);
        }
    }
    for (int r = 0; r < R; r++) _mm256_storeu_si256((__m256i *)(y + r * N), to_bf16(acc[r]));
}

/* Every row tile against one tile of 16 outputs (whose weights stay in L1 across the row tiles). */
static void rows_of_tile(const int8_tiles *a, const uint8_t *w, uint16_t *y, int64_t N) {
    for (int64_t t = 0; t < a->tiles; t++) {
        const int8_tile v = int8_tile_at(a, t);
        const uint8_t *next = int8_prefetch_during(a, t, w + a->blocks * TILE_BYTES);
        uint16_t *yt = y + v.first * N;
        switch (v.rows) {
            case 8: tile_rows(8, w, next, a->blocks, v.xq, v.dx, v.sx, v.xsum, yt, N); break;
            case 7: tile_rows(7, w, next, a->blocks, v.xq, v.dx, v.sx, v.xsum, yt, N); break;
            case 6: tile_rows(6, w, next, a->blocks, v.xq, v.dx, v.sx, v.xsum, yt, N); break;
            case 5: tile_rows(5, w, next, a->blocks, v.xq, v.dx, v.sx, v.xsum, yt, N); break;
            case 4: tile_rows(4, w, next, a->blocks, v.xq, v.dx, v.sx, v.xsum, yt, N); break;
            case 3: tile_rows(3, w, next, a->blocks, v.xq, v.dx, v.sx, v.xsum, yt, N); break;
            case 2: tile_rows(2, w, next, a->blocks, v.xq, v.dx, v.sx, v.xsum, yt, N); break;
            case 1: tile_rows(1, w, next, a->blocks, v.xq, v.dx, v.sx, v.xsum, yt, N); break;
            default: break;
        }
    }
}

int plait_q4_vnni_linear_bf16(const uint16_t *x, const uint8_t *w, uint16_t *y, int64_t M, int64_t N, int64_t K) {
    if (K % QK != 0 || N % TILE_N != 0) return -1;
    int8_tiles a;
    if (int8_tiles_alloc(&a, M, K) != 0) return -2;
#pragma omp parallel
    {
#pragma omp for schedule(static)
        for (int64_t m = 0; m < M; m++) int8_tiles_quantize(&a, x, m, -8);
#pragma omp for schedule(static)
        for (int64_t t = 0; t < N / TILE_N; t++) rows_of_tile(&a, w + t * a.blocks * TILE_BYTES, y + t * TILE_N, N);
    }
    free(a.xq);
    return 0;
}

/* w[N, K] in bf16 from the packed weights (layout above): the dense matrix the file's loader builds, q * d + mn
 * rounded once to fp32 (q * d is exact: a 4-bit code times an fp16 scale) and then to bf16 (nearest even, as torch
 * converts). Plain C: it rebuilds a dense copy only when one is asked for (runner/q4_linear.py drops it). */
int plait_q4_vnni_dequantize_bf16(const uint8_t *w, uint16_t *out, int64_t N, int64_t K) {
    if (K % QK != 0 || N % TILE_N != 0) return -1;
    const int64_t blocks = K / QK;
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < N / TILE_N; t++) {
        for (int64_t b = 0; b < blocks; b++) {
            const uint8_t *p = w + (t * blocks + b) * TILE_BYTES;
            for (int n = 0; n < TILE_N; n++) {
                uint16_t dh, mh;
                __builtin_memcpy(&dh, p + 256 + 2 * n, 2);
                __builtin_memcpy(&mh, p + 288 + 2 * n, 2);
                const float d = _cvtsh_ss(dh), mn = _cvtsh_ss(mh);
                const int64_t row = (t * TILE_N + n) * K + b * QK;
                for (int c = 0; c < 4; c++)
                    for (int i = 0; i < 4; i++) {
                        const uint8_t byte = p[64 * c + 4 * n + i];
                        store(out, row + 4 * c + i, (float)(byte & 0x0f) * d + mn, 1);
                        store(out, row + 16 + 4 * c + i, (float)(byte >> 4) * d + mn, 1);
                    }
            }
        }
    }
    return 0;
}

int plait_has_q4_vnni(void) { return 1; }

#else

int plait_q4_vnni_linear_bf16(const uint16_t *x, const uint8_t *w, uint16_t *y, int64_t M, int64_t N, int64_t K) {
    (void)x; (void)w; (void)y; (void)M; (void)N; (void)K;
    return -1; /* no AVX512-VNNI: the caller keeps torch's int4 kernel */
}

int plait_q4_vnni_dequantize_bf16(const uint8_t *w, uint16_t *out, int64_t N, int64_t K) {
    (void)w; (void)out; (void)N; (void)K;
    return -1;
}

int plait_has_q4_vnni(void) { return 0; }

#endif
