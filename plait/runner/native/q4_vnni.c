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

/* R rows (a compile-time constant after inlining) against one tile of 16 outputs. */
static inline __attribute__((always_inline)) void tile_rows(const int R, const uint8_t *w, int64_t blocks,
                                                            const int8_t *xq, const float *dx, const float *sx,
                                                            const int32_t *xsum, int64_t K, uint16_t *y, int64_t N) {
    __m512 acc[ROW_TILE];
    for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
    const __m512i nibble = _mm512_set1_epi8(0x0f);
    for (int64_t b = 0; b < blocks; b++) {
        const uint8_t *p = w + b * TILE_BYTES;
        __m512i dot[ROW_TILE];
        for (int r = 0; r < R; r++) dot[r] = _mm512_setzero_si512();
        for (int c = 0; c < 4; c++) {
            const __m512i raw = _mm512_loadu_si512((const void *)(p + 64 * c));
            const __m512i lo = _mm512_and_si512(raw, nibble);
            const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), nibble);
            for (int r = 0; r < R; r++) {
                const int8_t *xr = xq + r * K + b * QK;
                int32_t x_lo, x_hi;
                __builtin_memcpy(&x_lo, xr + 4 * c, 4);
                __builtin_memcpy(&x_hi, xr + 16 + 4 * c, 4);
                dot[r] = _mm512_dpbusd_epi32(dot[r], lo, _mm512_set1_epi32(x_lo));
                dot[r] = _mm512_dpbusd_epi32(dot[r], hi, _mm512_set1_epi32(x_hi));
            }
        }
        const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + 256)));
        const __m512 mn = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + 288)));
        const __m512 zero = _mm512_fmadd_ps(_mm512_set1_ps(8.0f), d, mn); /* exact: fp16 d and mn */
        for (int r = 0; r < R; r++) {
            const int64_t rb = r * (K / QK) + b;
            /* sum (q - 8) xq: centred codes carry about half the activation rounding error of q in 0..15 */
            const __m512i centred = _mm512_sub_epi32(dot[r], _mm512_set1_epi32(8 * xsum[rb]));
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(centred), _mm512_mul_ps(d, _mm512_set1_ps(dx[rb])), acc[r]);
            acc[r] = _mm512_fmadd_ps(zero, _mm512_set1_ps(sx[rb]), acc[r]);
        }
    }
    for (int r = 0; r < R; r++) _mm256_storeu_si256((__m256i *)(y + r * N), to_bf16(acc[r]));
}

static void rows_of_tile(int64_t M, const uint8_t *w, int64_t blocks, const int8_t *xq, const float *dx,
                         const float *sx, const int32_t *xsum, int64_t K, uint16_t *y, int64_t N) {
    int64_t m = 0;
    for (; m + ROW_TILE <= M; m += ROW_TILE)
        tile_rows(ROW_TILE, w, blocks, xq + m * K, dx + m * blocks, sx + m * blocks, xsum + m * blocks, K,
                  y + m * N, N);
    const int64_t rest = M - m;
    xq += m * K, dx += m * blocks, sx += m * blocks, xsum += m * blocks, y += m * N;
    switch (rest) {
        case 1: tile_rows(1, w, blocks, xq, dx, sx, xsum, K, y, N); break;
        case 2: tile_rows(2, w, blocks, xq, dx, sx, xsum, K, y, N); break;
        case 3: tile_rows(3, w, blocks, xq, dx, sx, xsum, K, y, N); break;
        case 4: tile_rows(4, w, blocks, xq, dx, sx, xsum, K, y, N); break;
        case 5: tile_rows(5, w, blocks, xq, dx, sx, xsum, K, y, N); break;
        case 6: tile_rows(6, w, blocks, xq, dx, sx, xsum, K, y, N); break;
        case 7: tile_rows(7, w, blocks, xq, dx, sx, xsum, K, y, N); break;
        default: break;
    }
}

int plait_q4_vnni_linear_bf16(const uint16_t *x, const uint8_t *w, uint16_t *y, int64_t M, int64_t N, int64_t K) {
    if (K % QK != 0 || N % TILE_N != 0) return -1;
    const int64_t blocks = K / QK;
    int8_t *xq = malloc((size_t)(M * K) + 3 * (size_t)(M * blocks) * sizeof(float) + 64);
    if (!xq) return -2;
    float *dx = (float *)(((uintptr_t)(xq + M * K) + 63) & ~(uintptr_t)63);
    float *sx = dx + M * blocks;
    int32_t *xsum = (int32_t *)(sx + M * blocks);
#pragma omp parallel
    {
#pragma omp for schedule(static)
        for (int64_t m = 0; m < M; m++) quantize_row(x + m * K, K, xq + m * K, dx + m * blocks, sx + m * blocks,
                                                    xsum + m * blocks);
#pragma omp for schedule(static)
        for (int64_t t = 0; t < N / TILE_N; t++)
            rows_of_tile(M, w + t * blocks * TILE_BYTES, blocks, xq, dx, sx, xsum, K, y + t * TILE_N, N);
    }
    free(xq);
    return 0;
}

int plait_has_q4_vnni(void) { return 1; }

#else

int plait_q4_vnni_linear_bf16(const uint16_t *x, const uint8_t *w, uint16_t *y, int64_t M, int64_t N, int64_t K) {
    (void)x; (void)w; (void)y; (void)M; (void)N; (void)K;
    return -1; /* no AVX512-VNNI: the caller keeps torch's int4 kernel */
}

int plait_has_q4_vnni(void) { return 0; }

#endif
