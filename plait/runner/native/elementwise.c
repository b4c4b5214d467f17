/* Fused row-wise ops of the decoder layer: residual add + RMSNorm, SiLU(gate) * up, and RoPE in place.
 *
 * Why: in eager PyTorch on a CPU, bf16 RMSNorm is decomposed into ~8 ops (casts, pow, mean, rsqrt, muls) and
 * SiLU-and-multiply into 2-3, each a pass over memory plus a dispatch; measured together at ~10% of a serving
 * step. Here each is one pass per row, fp32 arithmetic, one rounding at the end.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "common.h"

/* sum = x + residual (rounded to the storage type, the residual stream the next layer adds to), then
 * out = sum / sqrt(mean(sum^2) + eps) * weight. Without a residual, sum is x itself and sum_out is unused.
 * Rows of x, residual, sum_out and out are contiguous, `dim` elements each. One row: */
__attribute__((always_inline)) static inline void add_rms_norm_row(const void *x, const void *residual,
                                                                   const void *weight, void *sum_out, void *out,
                                                                   int64_t base, int dim, float eps, const int bf16) {
    float sumsq = 0.0f;
    if (residual) {
        for (int i = 0; i < dim; ++i) {
            store(sum_out, base + i, load(x, base + i, bf16) + load(residual, base + i, bf16), bf16);
            const float s = load(sum_out, base + i, bf16);
            sumsq += s * s;
        }
    } else {
        for (int i = 0; i < dim; ++i) {
            const float s = load(x, base + i, bf16);
            sumsq += s * s;
        }
    }
    const void *src = residual ? sum_out : x;
    const float inv = 1.0f / sqrtf(sumsq / (float)dim + eps);
    for (int i = 0; i < dim; ++i) store(out, base + i, load(src, base + i, bf16) * inv * load(weight, i, bf16), bf16);
}

/* e^x by range reduction (x = n ln2 + r) and Cephes' degree-6 polynomial for e^r, ~1 ulp on [-87, 88]. Plain
 * arithmetic on purpose: libm's scalar expf and libmvec's vector expf may differ in the last bit, and which one a
 * loop element gets depends on how gcc splits the loop (body, epilogue, peel), i.e. on the row's place in the
 * batch. Plain arithmetic gives the same bits in scalar and vector code (batch invariance, design rule 9). */
static inline float exp_same_bits(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    const float n = __builtin_rintf(x * 1.44269504088896341f);
    const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* out[r, i] = silu(gate_up[r, i]) * gate_up[r, dim + i]: gate and up are the two halves of one fused matmul. */
__attribute__((always_inline)) static inline void silu_mul_row(const void *gate_up, void *out, int64_t r, int dim,
                                                               const int bf16) {
    const int64_t in = r * 2 * dim, o = r * dim;
    for (int i = 0; i < dim; ++i) {
        const float g = load(gate_up, in + i, bf16), u = load(gate_up, in + dim + i, bf16);
        store(out, o + i, g / (1.0f + exp_same_bits(-g)) * u, bf16);
    }
}

/* x[t, h] = x[t, h] * cos[t] + swap_halves(x[t, h]) * signed_sin[t], in place, for `heads` heads of `dim` values
 * per token (token t's heads start at t * row_stride). cos and signed_sin are [tokens, dim], rotate_half's sign
 * already folded into signed_sin. One token: a head is read into fp32 scratch (on the stack: head sizes are at most
 * a few hundred) before it is overwritten, so with no aliasing left between the loads and the stores the loops
 * vectorize; cos/sin are converted once per token for all its heads. */
__attribute__((always_inline)) static inline void rope_token(void *x, int64_t row_stride, const void *cos,
                                                             const void *signed_sin, int64_t t, int heads, int dim,
                                                             const int bf16) {
    const int half = dim / 2;
    float buf[4 * dim];
    float *head = buf, *c = buf + dim, *sn = buf + 2 * dim, *rotated = buf + 3 * dim;
    const int64_t table = t * dim;
    for (int i = 0; i < dim; ++i) {
        c[i] = load(cos, table + i, bf16);
        sn[i] = load(signed_sin, table + i, bf16);
    }
    for (int h = 0; h < heads; ++h) {
        const int64_t base = t * row_stride + (int64_t)h * dim;
        for (int i = 0; i < dim; ++i) head[i] = load(x, base + i, bf16);
        for (int i = 0; i < half; ++i) {
            rotated[i] = head[i] * c[i] + head[half + i] * sn[i];
            rotated[half + i] = head[half + i] * c[half + i] + head[i] * sn[half + i];
        }
        for (int i = 0; i < dim; ++i) store(x, base + i, rotated[i], bf16);
    }
}

/* The exported entry points hold the OpenMP loops, each with its storage type as a literal: OpenMP outlines a
 * parallel region before inlining, so a type passed into one arrives as a variable, and the loops inside then
 * test it per element instead of vectorizing (SiLU * up ran ~19x slower that way). */

void plait_rope_bf16(void *x, int64_t row_stride, const void *cos, const void *signed_sin, int tokens, int heads,
                     int dim) {
#pragma omp parallel for schedule(static)
    for (int t = 0; t < tokens; ++t) rope_token(x, row_stride, cos, signed_sin, t, heads, dim, 1);
}

void plait_rope_f32(void *x, int64_t row_stride, const void *cos, const void *signed_sin, int tokens, int heads,
                    int dim) {
#pragma omp parallel for schedule(static)
    for (int t = 0; t < tokens; ++t) rope_token(x, row_stride, cos, signed_sin, t, heads, dim, 0);
}

void plait_add_rms_norm_bf16(const void *x, const void *residual, const void *weight, void *sum_out, void *out,
                             int rows, int dim, float eps) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; ++r) add_rms_norm_row(x, residual, weight, sum_out, out, (int64_t)r * dim, dim, eps, 1);
}

void plait_add_rms_norm_f32(const void *x, const void *residual, const void *weight, void *sum_out, void *out,
                            int rows, int dim, float eps) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; ++r) add_rms_norm_row(x, residual, weight, sum_out, out, (int64_t)r * dim, dim, eps, 0);
}

void plait_silu_mul_bf16(const void *gate_up, void *out, int rows, int dim) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; ++r) silu_mul_row(gate_up, out, r, dim, 1);
}

void plait_silu_mul_f32(const void *gate_up, void *out, int rows, int dim) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; ++r) silu_mul_row(gate_up, out, r, dim, 0);
}
