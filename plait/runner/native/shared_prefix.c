/* Shared-prefix attention (Hydragen) for groups of one-token queries that hold the same leading KV blocks.
 *
 * Called after paged_attention.c's kernel has computed each grouped query's attention over its own suffix (its
 * context after the shared run) into `out`. For every (group, kv head, tile of members) this kernel:
 *   1. attends the tile's stacked queries (members x query heads of that kv head) to the shared run, flash-style
 *      (online softmax over one block at a time, scores never leave L1): each K/V block is read once for the
 *      whole tile, a matrix-matrix product instead of one matrix-vector pass per sequence;
 *   2. computes the log-sum-exp of each query's scores over its own suffix (short: the kernel before only
 *      returned the normalized output);
 *   3. merges in place: out = a * prefix_out + (1 - a) * suffix_out, a = sigmoid(lse_prefix - lse_suffix).
 *
 * Block size 16 with head size 64 or 128 runs vector loops (GCC/Clang vector extensions, 8 floats: AVX2 or half
 * an AVX-512 register): each K block is transposed to [D][16] fp32 once per tile, so a query row's 16 scores are
 * two vector accumulators and no horizontal sums. Other shapes run the generic fp32 loops. On a CPU with
 * AVX512-BF16, bf16 caches with those shapes take the bf16 dot-product path instead (as paged_attention.c does):
 * scores straight from the bf16 q and K rows, the V block widened to fp32 16 values at a time, 16-wide FMAs. The
 * fp32 loops there reached ~40-70 GFLOP/s, half the speed of the plain kernel's bf16 dot products, which made
 * sharing slower than not sharing (plait bench: 0.5-0.8x for one layer at 256-4096 shared tokens).
 *
 * Arguments in struct prefix_args (strides in elements); tables/rows are the step's ORIGINAL block-table rows.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bf16_dot.h"
#include "common.h"

/* Stacked query rows of one task the bf16 path takes (tile x query heads per kv head); larger tiles run fp32. */
#define MAX_BF16_ROWS 256
/* Shared blocks per online-softmax update on the bf16 path (the scores and V scratch hold this many blocks). */
#define SPAN 4

/* Mirrored by plait/runner/native/shared_prefix_ops.py (PrefixArgs): keep the two in step. */
struct prefix_args {
    const void *q;
    void *out;
    const void *k_cache, *v_cache;
    const int32_t *tables;        /* [rows, max_blocks] */
    const int32_t *members;       /* [N] packed token index of each grouped query, group after group */
    const int32_t *member_rows;   /* [N] its block-table row */
    const int32_t *lengths;       /* [N] its context length (position + 1) */
    const int32_t *group_starts;  /* [G + 1] */
    const int32_t *prefix_blocks; /* [G] shared leading blocks of each group */
    int64_t q_stride, head_stride;
    int32_t groups, heads, kv_heads, head_dim, block_size, max_blocks, tile;
    float scale;
};

/* Scores of rows x n keys of one block: s[r * bs + j] = q_f[r] . k_j (q_f already scaled, fp32). */
__attribute__((always_inline)) static inline void block_scores_generic(
    const float *q_f, int rows, const void *k_block, int n, const int D, const int bs, float *kt, float *s,
    const int bf16) {
    for (int j = 0; j < n; ++j)  /* transpose to [D][bs] so the loop over keys vectorizes */
        for (int d = 0; d < D; ++d) kt[d * bs + j] = load(k_block, (int64_t)j * D + d, bf16);
    for (int r = 0; r < rows; ++r) {
        float *restrict sr = s + r * bs;
        for (int j = 0; j < n; ++j) sr[j] = 0.0f;
        for (int d = 0; d < D; ++d) {
            const float qd = q_f[r * D + d];
            const float *restrict kd = kt + d * bs;
            for (int j = 0; j < n; ++j) sr[j] += qd * kd[j];
        }
    }
}


/* GCC/Clang vector extension: 8 floats, one AVX2 register (half of an AVX-512 one); wider vectors spill on AVX2. */
typedef float v8f __attribute__((vector_size(32)));

static inline v8f load8(const float *p) {
    v8f v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void store8(float *p, v8f v) { memcpy(p, &v, sizeof v); }

/* Scores of rows x 16 keys (block size 16): kt is the block transposed to [D][16] fp32. */
__attribute__((always_inline)) static inline void block_scores_v16(const float *q_f, int rows, const void *k_block,
                                                                   const int D, float *kt, float *s,
                                                                   const int bf16) {
    for (int j = 0; j < 16; ++j)
        for (int d = 0; d < D; ++d) kt[d * 16 + j] = load(k_block, (int64_t)j * D + d, bf16);
    int r = 0;
    for (; r + 2 <= rows; r += 2) {  /* two rows share each load of the transposed block */
        v8f a0 = {0}, a1 = {0}, b0 = {0}, b1 = {0};
        const float *q0 = q_f + (int64_t)r * D, *q1 = q0 + D;
        for (int d = 0; d < D; ++d) {
            const v8f k0 = load8(kt + d * 16), k1 = load8(kt + d * 16 + 8);
            a0 += q0[d] * k0;
            a1 += q0[d] * k1;
            b0 += q1[d] * k0;
            b1 += q1[d] * k1;
        }
        store8(s + r * 16, a0);
        store8(s + r * 16 + 8, a1);
        store8(s + (r + 1) * 16, b0);
        store8(s + (r + 1) * 16 + 8, b1);
    }
    for (; r < rows; ++r) {
        v8f a0 = {0}, a1 = {0};
        const float *q0 = q_f + (int64_t)r * D;
        for (int d = 0; d < D; ++d) {
            a0 += q0[d] * load8(kt + d * 16);
            a1 += q0[d] * load8(kt + d * 16 + 8);
        }
        store8(s + r * 16, a0);
        store8(s + r * 16 + 8, a1);
    }
}

/* Online-softmax update of rows with one block of 16 keys: s [rows, 16] scores in, probabilities out; then
 * acc[r] = acc[r] * corr[r] + sum_j p[r, j] v_j with the row's accumulator in registers over the block's 16 V
 * rows (converted to fp32 once per block into vf [16, D] for all rows). D is 64 or 128. */
__attribute__((always_inline)) static inline void block_update_v16(float *s, int rows, const void *v_block,
                                                                   const int D, float *vf, float *corr, float *mx,
                                                                   float *sum, float *acc, const int bf16) {
    for (int j = 0; j < 16 * D; ++j) vf[j] = load(v_block, j, bf16);
    for (int r = 0; r < rows; ++r) {
        float *sr = s + r * 16;
        float top = mx[r];
        for (int j = 0; j < 16; ++j) top = sr[j] > top ? sr[j] : top;
        corr[r] = expf(mx[r] - top);
        float total = 0.0f;
        for (int j = 0; j < 16; ++j) {
            sr[j] = expf(sr[j] - top);
            total += sr[j];
        }
        mx[r] = top;
        sum[r] = sum[r] * corr[r] + total;
    }
    const int chunks = D / 8;
    for (int r = 0; r < rows; ++r) {
        float *ar = acc + (int64_t)r * D;
        for (int c0 = 0; c0 < chunks; c0 += 8) {  /* 8 registers of accumulators at a time */
            v8f a[8];
            for (int k = 0; k < 8; ++k) a[k] = corr[r] * load8(ar + 8 * (c0 + k));
            for (int j = 0; j < 16; ++j) {
                const float p = s[r * 16 + j];
                for (int k = 0; k < 8; ++k) a[k] += p * load8(vf + j * D + 8 * (c0 + k));
            }
            for (int k = 0; k < 8; ++k) store8(ar + 8 * (c0 + k), a[k]);
        }
    }
}

/* Online-softmax update of rows with one block's scores s [rows, bs] (n valid) and its values. */
__attribute__((always_inline)) static inline void block_update(
    float *s, int rows, int n, const int bs, const void *v_block, const int D, float *vf, float *mx, float *sum,
    float *acc, const int bf16) {
    for (int j = 0; j < n; ++j)
        for (int d = 0; d < D; ++d) vf[j * D + d] = load(v_block, (int64_t)j * D + d, bf16);
    for (int r = 0; r < rows; ++r) {
        float *sr = s + r * bs;
        float top = mx[r];
        for (int j = 0; j < n; ++j) top = sr[j] > top ? sr[j] : top;
        const float corr = expf(mx[r] - top);
        float total = 0.0f;
        for (int j = 0; j < n; ++j) {
            sr[j] = expf(sr[j] - top);
            total += sr[j];
        }
        mx[r] = top;
        sum[r] = sum[r] * corr + total;
        float *restrict ar = acc + (int64_t)r * D;
        for (int d = 0; d < D; ++d) ar[d] *= corr;
        for (int j = 0; j < n; ++j) {
            const float p = sr[j];
            const float *restrict vj = vf + j * D;
            for (int d = 0; d < D; ++d) ar[d] += p * vj[d];
        }
    }
}

#ifdef HAVE_BF16_DOT
/* Up to SPAN shared blocks (16 keys each) for `rows` stacked query rows, bf16 cache, D = 64 or 128, as register-
 * blocked bf16 dot products (both matrix products of attention with the same instruction, no horizontal sums):
 *   - scores: each K block is laid out once for all rows as kt[d/2][key] (a 32-bit word holds the two bf16 values
 *     of dims d, d+1, which is how a K row already stores them), so one vector holds 16 keys x one dim pair and
 *     a row's 16 scores accumulate in one register, query dim pairs broadcast; four rows share each K vector;
 *   - values: each V block is laid out once as vt[key/2][d] (the two keys of a pair interleaved per dim), the
 *     probabilities are rounded to bf16 pairs, and a row's output accumulates 16 dims a register.
 * The probabilities' bf16 rounding (8 bits) is the one numeric change against fp32 P @ V: relative error ~2^-9
 * per weight, averaging out over keys; the softmax sum stays fp32. Measured against a per-row dot product with a
 * transpose-and-add reduction (what this replaced): ~2x the kernel's throughput (docs/many_samples.md). */
__attribute__((always_inline)) static inline void span_bf16(const uint16_t *const *q_rows, int rows,
                                                            const uint16_t *const *k_blocks,
                                                            const uint16_t *const *v_blocks, int nblk, const int D,
                                                            float scale, float *s, uint32_t *kt, uint32_t *vt,
                                                            float *mx, float *sum, float *acc) {
    const int pairs = D / 2, width = nblk * 16, stride = SPAN * 16;
    const __m512 vscale = _mm512_set1_ps(scale);
    /* kt[b][d2][key] = word d2 of K row `key`; vt[b][kp][d] = V[2kp][d] | V[2kp+1][d] << 16. */
    const __m512i interleave_lo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8,
                                                   39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
    for (int b = 0; b < nblk; ++b) {
        const uint32_t *k = (const uint32_t *)k_blocks[b];
        uint32_t *kb = kt + (size_t)b * 16 * pairs;
        for (int key = 0; key < 16; ++key)
            for (int d2 = 0; d2 < pairs; ++d2) kb[d2 * 16 + key] = k[key * pairs + d2];
        const uint16_t *v = v_blocks[b];
        uint32_t *vb = vt + (size_t)b * 16 * pairs;
        for (int kp = 0; kp < 8; ++kp)
            for (int c = 0; c < D / 16; ++c) {
                const __m512i even = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(v + (2 * kp) * D + 16 * c)));
                const __m512i odd = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(v + (2 * kp + 1) * D + 16 * c)));
                _mm512_storeu_si512(vb + kp * D + 16 * c, _mm512_permutex2var_epi16(even, interleave_lo, odd));
            }
    }
    /* Scores, eight rows at a time: eight independent accumulators cover the dot product's latency. */
    int r = 0;
    for (; r < rows; r += 8) {
        const int n = rows - r < 8 ? rows - r : 8;
        const uint32_t *q[8];
        for (int i = 0; i < 8; ++i) q[i] = (const uint32_t *)q_rows[r + (i < n ? i : 0)];
        for (int b = 0; b < nblk; ++b) {
            const uint32_t *kb = kt + (size_t)b * 16 * pairs;
            __m512 a[8];
            for (int i = 0; i < 8; ++i) a[i] = _mm512_setzero_ps();
            for (int d2 = 0; d2 < pairs; ++d2) {
                const __m512bh kv = (__m512bh)_mm512_loadu_si512(kb + d2 * 16);
                for (int i = 0; i < 8; ++i) a[i] = _mm512_dpbf16_ps(a[i], kv, (__m512bh)_mm512_set1_epi32((int)q[i][d2]));
            }
            for (int i = 0; i < n; ++i) _mm512_storeu_ps(s + (size_t)(r + i) * stride + b * 16, _mm512_mul_ps(a[i], vscale));
        }
    }
    const int chunks = D / 16;
    for (r = 0; r < rows; ++r) {
        float *sr = s + (size_t)r * stride;
        __m512 top_v = _mm512_loadu_ps(sr);
        for (int b = 1; b < nblk; ++b) top_v = _mm512_max_ps(top_v, _mm512_loadu_ps(sr + 16 * b));
        const float top = fmaxf(mx[r], _mm512_reduce_max_ps(top_v));
        const float corr = expf(mx[r] - top);
        __m512 total = _mm512_setzero_ps();
        uint32_t *pw = (uint32_t *)sr;  /* the row's probabilities as bf16 pairs, over its own scores */
        for (int b = 0; b < nblk; ++b) {
            const __m512 probs = exp16(_mm512_sub_ps(_mm512_loadu_ps(sr + 16 * b), _mm512_set1_ps(top)));
            total = _mm512_add_ps(total, probs);
            _mm256_storeu_si256((__m256i *)(pw + 8 * b), (__m256i)_mm512_cvtneps_pbh(probs));
        }
        mx[r] = top;
        sum[r] = sum[r] * corr + _mm512_reduce_add_ps(total);
        float *ar = acc + (int64_t)r * D;
        /* Two accumulator sets (even and odd key pairs) so 8-16 dot products are in flight, not 4-8. */
        __m512 a[8], e[8];
        const __m512 vcorr = _mm512_set1_ps(corr);
        for (int c = 0; c < chunks; ++c) {
            a[c] = _mm512_mul_ps(vcorr, _mm512_loadu_ps(ar + 16 * c));
            e[c] = _mm512_setzero_ps();
        }
        for (int kp = 0; kp < width / 2; kp += 2) {  /* width / 2 is a multiple of 8 */
            const __m512bh p0 = (__m512bh)_mm512_set1_epi32((int)pw[kp]);
            const __m512bh p1 = (__m512bh)_mm512_set1_epi32((int)pw[kp + 1]);
            const uint32_t *v0 = vt + (size_t)kp * D, *v1 = v0 + D;  /* blocks are consecutive: pair kp of the span */
            for (int c = 0; c < chunks; ++c) {
                a[c] = _mm512_dpbf16_ps(a[c], (__m512bh)_mm512_loadu_si512(v0 + 16 * c), p0);
                e[c] = _mm512_dpbf16_ps(e[c], (__m512bh)_mm512_loadu_si512(v1 + 16 * c), p1);
            }
        }
        for (int c = 0; c < chunks; ++c) _mm512_storeu_ps(ar + 16 * c, _mm512_add_ps(a[c], e[c]));
    }
}
#endif

/* One score into a running log-sum-exp kept as (max, sum of exp(score - max)). */
static inline void lse_push(float dot, float *top, float *total) {
    if (dot > *top) {
        *total = *total * expf(*top - dot) + 1.0f;
        *top = dot;
    } else {
        *total += expf(dot - *top);
    }
}

/* Log-sum-exp of one query head's scores over a suffix of its context: tokens [first, len) of its table. */
__attribute__((always_inline)) static inline float suffix_lse(
    const float *q_f, const void *k_head, const int32_t *table, int first, int len, const int D, const int bs,
    const int bf16) {
    float top = -FLT_MAX, total = 0.0f;
    for (int t = first; t < len; ++t) {
        const int64_t row = ((int64_t)table[t / bs] * bs + t % bs) * D;
        float dot = 0.0f;
        for (int d = 0; d < D; ++d) dot += q_f[d] * load(k_head, row + d, bf16);
        lse_push(dot, &top, &total);
    }
    return top + logf(total);
}

#ifdef HAVE_BF16_DOT
/* suffix_lse for a bf16 cache, D = 64 or 128: the scores with the bf16 dot product, as the plain kernel computes
 * them, instead of the scalar fp32 loop (one layer, 64 sequences, on/off: 0.76x -> 0.79x at 256 shared tokens,
 * 1.03x -> 1.09x at 1,024). */
__attribute__((always_inline)) static inline float suffix_lse_bf16(const uint16_t *q, float scale,
                                                                   const uint16_t *k_head, const int32_t *table,
                                                                   int first, int len, const int D, const int bs) {
    __m512bh qv[4];
    for (int c = 0; c < D / 32; ++c) qv[c] = (__m512bh)_mm512_loadu_si512(q + 32 * c);
    float top = -FLT_MAX, total = 0.0f;
    for (int t = first; t < len; ++t) {
        const uint16_t *row = k_head + ((int64_t)table[t / bs] * bs + t % bs) * D;
        const float dot = _mm512_reduce_add_ps(dot_row(qv, row, D)) * scale;
        lse_push(dot, &top, &total);
    }
    return top + logf(total);
}
#endif

/* One task: (group, kv head, tile of members); D, bs and bf16 are constants after inlining. */
__attribute__((always_inline)) static inline void run_task(const struct prefix_args *a, int64_t task, float *work,
                                                           const int D, const int bs, const int bf16) {
    const int H = a->heads, KV = a->kv_heads, tile = a->tile;
    const int gq = H / KV;
    const int rows_max = tile * gq;
    /* Find this task's group, head and tile. */
    int64_t rest = task;
    int g = 0, tiles = 0;
    for (;; ++g) {
        tiles = (a->group_starts[g + 1] - a->group_starts[g] + tile - 1) / tile;
        if (rest < (int64_t)KV * tiles) break;
        rest -= (int64_t)KV * tiles;
    }
    const int h = (int)(rest / tiles), first_member = a->group_starts[g] + (int)(rest % tiles) * tile;
    const int end_member = first_member + tile < a->group_starts[g + 1] ? first_member + tile
                                                                          : a->group_starts[g + 1];
    const int members = end_member - first_member, rows = members * gq;
    float *q_f = work, *acc = q_f + (size_t)rows_max * D, *s = acc + (size_t)rows_max * D;
    float *mx = s + (size_t)rows_max * bs * SPAN, *sum = mx + rows_max, *kt = sum + rows_max;
    float *vf = kt + (size_t)bs * D, *corr = vf + (size_t)bs * D * SPAN;
    const void *k_head = (const char *)a->k_cache + h * a->head_stride * (bf16 ? 2 : 4);
    const void *v_head = (const char *)a->v_cache + h * a->head_stride * (bf16 ? 2 : 4);
    for (int m = 0; m < members; ++m) {
        const int t = a->members[first_member + m];
        const int64_t q_off = (int64_t)t * a->q_stride + (int64_t)h * gq * D;
        for (int i = 0; i < gq * D; ++i) {
            q_f[(int64_t)m * gq * D + i] = load(a->q, q_off + i, bf16) * a->scale;
        }
    }
    for (int r = 0; r < rows; ++r) {
        mx[r] = -FLT_MAX;
        sum[r] = 0.0f;
    }
    memset(acc, 0, sizeof(float) * (size_t)rows * D);
    const int32_t *table = a->tables + (int64_t)a->member_rows[first_member] * a->max_blocks;
    const int blocks = a->prefix_blocks[g];
#ifdef HAVE_BF16_DOT
    if (bf16 && bs == 16 && (D == 64 || D == 128) && rows <= MAX_BF16_ROWS) {
        const uint16_t *q_rows[MAX_BF16_ROWS];
        for (int r = 0; r < rows; ++r)
            q_rows[r] = (const uint16_t *)a->q + (int64_t)a->members[first_member + r / gq] * a->q_stride
                        + ((int64_t)h * gq + r % gq) * D;
        for (int b0 = 0; b0 < blocks; b0 += SPAN) {
            const int nblk = blocks - b0 < SPAN ? blocks - b0 : SPAN;
            const uint16_t *kb[SPAN], *vb[SPAN];
            for (int b = 0; b < nblk; ++b) {
                const int64_t base = (int64_t)table[b0 + b] * bs * D;
                kb[b] = (const uint16_t *)k_head + base;
                vb[b] = (const uint16_t *)v_head + base;
            }
            /* kt and vt: SPAN blocks of 16 x D bf16 each, in the vf scratch (SPAN blocks of 16 x D floats). */
            span_bf16(q_rows, rows, kb, vb, nblk, D, a->scale, s, (uint32_t *)vf,
                      (uint32_t *)vf + (size_t)SPAN * 8 * D, mx, sum, acc);
        }
    } else
#endif
    for (int b = 0; b < blocks; ++b) {
        const int64_t base = (int64_t)table[b] * bs * D;
        const size_t elem = bf16 ? 2 : 4;
        const void *kb = (const char *)k_head + base * elem, *vb = (const char *)v_head + base * elem;
        if (bs == 16 && (D == 64 || D == 128)) {
            block_scores_v16(q_f, rows, kb, D, kt, s, bf16);
            block_update_v16(s, rows, vb, D, vf, corr, mx, sum, acc, bf16);
            continue;
        }
        block_scores_generic(q_f, rows, kb, bs, D, bs, kt, s, bf16);
        block_update(s, rows, bs, bs, vb, D, vf, mx, sum, acc, bf16);
    }
    /* Merge with each member's suffix result (already in out). */
    for (int m = 0; m < members; ++m) {
        const int idx = first_member + m, t = a->members[idx];
        const int32_t *own = a->tables + (int64_t)a->member_rows[idx] * a->max_blocks;
        for (int i = 0; i < gq; ++i) {
            const int r = m * gq + i;
#ifdef HAVE_BF16_DOT
            const float lse_s = bf16 && (D == 64 || D == 128)
                ? suffix_lse_bf16((const uint16_t *)a->q + (int64_t)t * a->q_stride + ((int64_t)h * gq + i) * D,
                                  a->scale, (const uint16_t *)k_head, own, blocks * bs, a->lengths[idx], D, bs)
                : suffix_lse(q_f + (int64_t)r * D, k_head, own, blocks * bs, a->lengths[idx], D, bs, bf16);
#else
            const float lse_s = suffix_lse(q_f + (int64_t)r * D, k_head, own, blocks * bs, a->lengths[idx],
                                           D, bs, bf16);
#endif
            const float lse_p = mx[r] + logf(sum[r]);
            const float w = 1.0f / (1.0f + expf(lse_s - lse_p));
            const float inv = 1.0f / sum[r];
            const int64_t o_off = ((int64_t)t * H + (int64_t)h * gq + i) * D;
            for (int d = 0; d < D; ++d) {
                const float o_s = load(a->out, o_off + d, bf16);
                store(a->out, o_off + d, o_s + w * (acc[(int64_t)r * D + d] * inv - o_s), bf16);
            }
        }
    }
}

__attribute__((always_inline)) static inline int shared_prefix(const struct prefix_args *a, const int bf16) {
    const int H = a->heads, KV = a->kv_heads, D = a->head_dim, bs = a->block_size, tile = a->tile;
    const int gq = H / KV;
    const int rows_max = tile * gq;
    /* Tasks: (group, kv head, tile of members). */
    int64_t num_tasks = 0;
    for (int g = 0; g < a->groups; ++g)
        num_tasks += (int64_t)KV * ((a->group_starts[g + 1] - a->group_starts[g] + tile - 1) / tile);
    int failed = 0;
#pragma omp parallel
    {
        const unsigned fp_mode = flush_subnormals();
        const size_t floats = (size_t)rows_max * D * 2 + (size_t)rows_max * bs * SPAN + (size_t)rows_max * 3
                              + (size_t)bs * D * (1 + SPAN) + (size_t)D;
        float *work = malloc(sizeof(float) * floats);
        if (!work) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t task = 0; task < num_tasks; ++task) {
            if (!work) continue;
            if (D == 64 && bs == 16) run_task(a, task, work, 64, 16, bf16);
            else if (D == 128 && bs == 16) run_task(a, task, work, 128, 16, bf16);
            else run_task(a, task, work, D, bs, bf16);
        }
        free(work);
        restore_fp_mode(fp_mode);
    }
    return failed ? -1 : 0;
}

int plait_shared_prefix_bf16(const struct prefix_args *a) { return shared_prefix(a, 1); }

int plait_shared_prefix_f32(const struct prefix_args *a) { return shared_prefix(a, 0); }
