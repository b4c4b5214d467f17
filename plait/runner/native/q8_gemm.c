/* y[M, N] = x[M, K] @ w[N, K]^T (+ bias[N]) in fp32, with w stored as GGUF-style Q8_0 blocks: 32 int8 values
 * q and one scale d per block (d as fp32 here), w = d * q.
 *
 * Why: a weight read in int8 costs a quarter of its fp32 read, and an LM head over a large vocabulary is read in
 * full every step (Gemma 3 270M: 262,144 x 640, 671 MB in fp32, 48% of a batch-1 step). When the file stores the
 * tensor as Q8_0 (both shipped models do for the embedding), these blocks ARE the file's exact values.
 *
 * Each weight is rebuilt in registers as float(q) * d, which is exact (an 8-bit integer times an fp16-representable
 * scale fits fp32's 24-bit mantissa). Every output (m, n) is then summed the same way whatever M is: four 8-lane
 * accumulators (one per 8 weights of a block, so four FMA chains hide the FMA latency that a single chain exposes
 * at M = 1), over k in order, then (a0 + a1) + (a2 + a3) and one horizontal sum. The loops around that differ with
 * M (rows 1-3 rebuild the weights in registers; more rows rebuild one weight row into a buffer and sweep the rows
 * of x in tiles of 3) but the per-output arithmetic does not: a row's logits never depend on its neighbours. */
#include <stdint.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

#include <stdlib.h>

#define BLOCK 32
#define TILE 3 /* rows per sweep: 3 x 4 accumulators + weights + x stay within the 16 ymm registers */

static inline float hsum(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    __m128 s = _mm_add_ps(lo, hi);
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline __m256 dequant8(const int8_t *q, __m256 d) {
    __m256i wide = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)q));
    return _mm256_mul_ps(_mm256_cvtepi32_ps(wide), d);
}

static inline float finish(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
    return hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
}

/* ROWS rows of x against one weight row: from the int8 blocks (FROM_Q8) or from a rebuilt fp32 row. ROWS is a
 * compile-time constant so the accumulators stay in registers. */
#define SWEEP(ROWS)                                                                                                 \
    static inline void sweep_q8_##ROWS(const float *x, const int8_t *qr, const float *sr, float bn, float *y,      \
                                       int64_t N, int64_t K) {                                                      \
        __m256 acc[ROWS][4];                                                                                        \
        for (int m = 0; m < ROWS; m++)                                                                              \
            for (int j = 0; j < 4; j++) acc[m][j] = _mm256_setzero_ps();                                            \
        for (int64_t k = 0; k < K; k += BLOCK) {                                                                    \
            const __m256 d = _mm256_set1_ps(sr[k / BLOCK]);                                                         \
            for (int j = 0; j < 4; j++) {                                                                           \
                const __m256 wv = dequant8(qr + k + 8 * j, d);                                                      \
                for (int m = 0; m < ROWS; m++)                                                                      \
                    acc[m][j] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + m * K + k + 8 * j), acc[m][j]);             \
            }                                                                                                       \
        }                                                                                                           \
        for (int m = 0; m < ROWS; m++) y[m * N] = finish(acc[m][0], acc[m][1], acc[m][2], acc[m][3]) + bn;          \
    }                                                                                                               \
    static inline void sweep_f32_##ROWS(const float *x, const float *wr, float bn, float *y, int64_t N, int64_t K) { \
        __m256 acc[ROWS][4];                                                                                        \
        for (int m = 0; m < ROWS; m++)                                                                              \
            for (int j = 0; j < 4; j++) acc[m][j] = _mm256_setzero_ps();                                            \
        for (int64_t k = 0; k < K; k += BLOCK) {                                                                    \
            for (int j = 0; j < 4; j++) {                                                                           \
                const __m256 wv = _mm256_load_ps(wr + k + 8 * j);                                                   \
                for (int m = 0; m < ROWS; m++)                                                                      \
                    acc[m][j] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + m * K + k + 8 * j), acc[m][j]);             \
            }                                                                                                       \
        }                                                                                                           \
        for (int m = 0; m < ROWS; m++) y[m * N] = finish(acc[m][0], acc[m][1], acc[m][2], acc[m][3]) + bn;          \
    }

SWEEP(1)
SWEEP(2)
SWEEP(3)

static void few_rows(const float *x, const int8_t *q, const float *scales, const float *bias, float *y, int rows,
                     int64_t N, int64_t K) {
    const int64_t blocks = K / BLOCK;
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const float bn = bias ? bias[n] : 0.0f;
        const int8_t *qr = q + n * K;
        const float *sr = scales + n * blocks;
        if (rows == 1) sweep_q8_1(x, qr, sr, bn, y + n, N, K);
        else if (rows == 2) sweep_q8_2(x, qr, sr, bn, y + n, N, K);
        else sweep_q8_3(x, qr, sr, bn, y + n, N, K);
    }
}

/* Many rows: rebuild NB weight rows into an L1 buffer, then sweep the rows of x in tiles of TILE against each of
 * them, so a tile of x is read from L2 once per NB weight rows rather than once per row. */
#define NB 4

static int many_rows(const float *x, const int8_t *q, const float *scales, const float *bias, float *y, int64_t M,
                     int64_t N, int64_t K) {
    const int64_t blocks = K / BLOCK;
    int failed = 0;
#pragma omp parallel
    {
        float *wbuf = aligned_alloc(32, (size_t)(NB * K) * sizeof(float));
        if (!wbuf) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t n0 = 0; n0 < N; n0 += NB) {
            if (!wbuf) continue;
            const int64_t nb = N - n0 < NB ? N - n0 : NB;
            for (int64_t i = 0; i < nb; i++) {
                const int8_t *qr = q + (n0 + i) * K;
                const float *sr = scales + (n0 + i) * blocks;
                for (int64_t k = 0; k < K; k += BLOCK) {
                    const __m256 d = _mm256_set1_ps(sr[k / BLOCK]);
                    for (int j = 0; j < 4; j++) _mm256_store_ps(wbuf + i * K + k + 8 * j, dequant8(qr + k + 8 * j, d));
                }
            }
            int64_t m = 0;
            for (; m + TILE <= M; m += TILE)
                for (int64_t i = 0; i < nb; i++)
                    sweep_f32_3(x + m * K, wbuf + i * K, bias ? bias[n0 + i] : 0.0f, y + m * N + n0 + i, N, K);
            for (int64_t i = 0; i < nb; i++) {
                const float bn = bias ? bias[n0 + i] : 0.0f;
                if (M - m == 2) sweep_f32_2(x + m * K, wbuf + i * K, bn, y + m * N + n0 + i, N, K);
                else if (M - m == 1) sweep_f32_1(x + m * K, wbuf + i * K, bn, y + m * N + n0 + i, N, K);
            }
        }
        free(wbuf);
    }
    return failed ? -2 : 0;
}

int plait_q8_linear_f32(const float *x, const int8_t *q, const float *scales, const float *bias, float *y,
                        int64_t M, int64_t N, int64_t K) {
    if (K % BLOCK != 0) return -1;
    if (M <= TILE) {
        if (M > 0) few_rows(x, q, scales, bias, y, (int)M, N, K);
        return 0;
    }
    return many_rows(x, q, scales, bias, y, M, N, K);
}

#else

int plait_q8_linear_f32(const float *x, const int8_t *q, const float *scales, const float *bias, float *y,
                        int64_t M, int64_t N, int64_t K) {
    (void)x; (void)q; (void)scales; (void)bias; (void)y; (void)M; (void)N; (void)K;
    return -1; /* no AVX2 + FMA: the caller keeps F.linear */
}

#endif
