/* y[M, N] = x[M, K] @ w[N, K]^T (+ bias[N]) in fp32 for a few rows (M <= 8 per pass): each weight row is read
 * once per pass and multiplied with every row of x while it is in registers.
 *
 * Why: on CPUs where small-M GEMMs fall off the memory-bound path (measured on an AVX2 EPYC: MKL's sgemm takes
 * 2.7x longer for M = 5 than its GEMV for M = 1), a decode step of a few tokens, a speculative verification of
 * k + 1 tokens or a batch of 2-8 streams should cost about one weight read, as M = 1 does.
 *
 * Every output (m, n) is computed by the same instructions whatever M is: one 8-lane FMA accumulator per row of x,
 * over k in order, then the same horizontal sum. So a row's result does not depend on how many rows share the
 * call (batch-invariant), and it differs from MKL's only by summation order. */
#include <stdint.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

#define MAX_ROWS 8

static inline float hsum(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    __m128 s = _mm_add_ps(lo, hi);
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static void pass(const float *x, const float *w, const float *bias, float *y, int rows, int64_t N, int64_t K,
                 int64_t y_stride) {
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        __m256 acc[MAX_ROWS];
        for (int m = 0; m < rows; m++) acc[m] = _mm256_setzero_ps();
        const float *wr = w + n * K;
        for (int64_t k = 0; k < K; k += 8) {
            __m256 wv = _mm256_loadu_ps(wr + k);
            for (int m = 0; m < rows; m++) acc[m] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + m * K + k), acc[m]);
        }
        const float b = bias ? bias[n] : 0.0f;
        for (int m = 0; m < rows; m++) y[m * y_stride + n] = hsum(acc[m]) + b;
    }
}

int plait_small_linear_f32(const float *x, const float *w, const float *bias, float *y, int64_t M, int64_t N,
                           int64_t K) {
    if (K % 8 != 0) return -1;
    for (int64_t m0 = 0; m0 < M; m0 += MAX_ROWS) {
        const int rows = (int)(M - m0 < MAX_ROWS ? M - m0 : MAX_ROWS);
        pass(x + m0 * K, w, bias, y + m0 * N, rows, N, K, N);
    }
    return 0;
}

#else

int plait_small_linear_f32(const float *x, const float *w, const float *bias, float *y, int64_t M, int64_t N,
                           int64_t K) {
    (void)x; (void)w; (void)bias; (void)y; (void)M; (void)N; (void)K;
    return -1; /* no AVX2 + FMA: the caller keeps F.linear */
}

#endif
