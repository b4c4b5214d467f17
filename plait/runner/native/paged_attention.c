/* Attention for a packed batch straight from the paged KV cache, grouped-query heads, causal.
 *
 * Every query token t of the batch attends to the first lengths[t] tokens of its own sequence (its position + 1:
 * the earlier tokens and itself), whose K/V sit in the blocks of row rows[t] of the block tables. A decode is one
 * such token; a prompt chunk is several consecutive ones, whatever is already cached before them. So one kernel
 * covers decodes, fresh prompts, chunked prefill and prompts continuing a prefix-cache hit.
 *
 * Why a kernel: in plain PyTorch a decode step must first gather every sequence's context out of the paged pool
 * (index_select) and then run two batched matmuls over the copy, reading the KV three times and writing it once;
 * and CPU SDPA on short bf16 prompts runs at a fraction of the matmul rate. Here each (token, kv head) walks its
 * block table once for the scores and once for the values, with fp32 arithmetic whatever the storage type.
 *
 * Plain C that the compiler vectorizes (-O3 -march=native -ffast-math; __init__.py says how it is linked).
 * Threads come from OpenMP, which resolves to the libgomp PyTorch has already loaded, so both share one thread
 * pool instead of fighting over the cores.
 *
 * The call first writes the step's new K/V rows into their cache slots (what index_copy_ did, without its strided
 * copies), then, after a barrier, attends. Arguments come in one struct (struct attention_args, attention_args.h;
 * strides in elements):
 *   q               [T, H, D], token t's heads at t * q_stride (q may be a slice of a fused qkv/qk tensor)
 *   k_new, v_new    [T, KV, D], token t's heads at t * k_stride / t * v_stride
 *   slots           [T] int64: the cache slot of each token (slot = block * bs + offset)
 *   k_cache, v_cache [KV, num_slots, D] for one layer; kv head h starts at h * head_stride
 *   tables          [num_rows, max_blocks] int32 block ids
 *   rows            [T] int32: the block-table row of each token's sequence
 *   lengths         [T] int32: context length of each token, itself included
 *   out             [T, H, D] contiguous
 *   window          0, or a sliding window: token t then attends to its last `window` positions only
 *                   (positions lengths[t] - window .. lengths[t] - 1), as Gemma 3's local layers do
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "attention_args.h"
#include "common.h"

/* Ask for the next block while this one is computed: blocks are scattered, so the hardware prefetcher cannot
 * guess where the next one starts. */
static inline void prefetch_rows(const void *base, int64_t first, int64_t count, int bf16) {
    const char *p = (const char *)base + first * (bf16 ? 2 : 4);
    const int64_t bytes = count * (bf16 ? 2 : 4);
    for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(p + off, 0, 3);
}

#include "bf16_dot.h"

#ifdef HAVE_BF16_DOT
/* bf16 scores for head sizes 64 and 128 (dot_row: bf16_dot.h), 16 context tokens per reduction. */
__attribute__((always_inline)) static inline void scores_bf16(const uint16_t *q, const uint16_t *k_head,
                                                              const int32_t *table, int len, int group, int bs,
                                                              float scale, float *scores, const int D) {
    const __m512 vscale = _mm512_set1_ps(scale);
    for (int g = 0; g < group; ++g) {
        __m512bh qv[4];
        for (int c = 0; c < D / 32; ++c) qv[c] = (__m512bh)_mm512_loadu_si512(q + g * D + 32 * c);
        float *out = scores + g * len;
        for (int start = 0; start < len; start += bs) {
            const uint16_t *block = k_head + (int64_t)table[start / bs] * bs * D;
            const int n = len - start < bs ? len - start : bs;
            int j = 0;
            for (; j + 16 <= n; j += 16) {
                __m512 acc[16];
                for (int u = 0; u < 16; ++u) acc[u] = dot_row(qv, block + (int64_t)(j + u) * D, D);
                _mm512_storeu_ps(out + start + j, _mm512_mul_ps(sum16(acc), vscale));
            }
            for (; j < n; ++j) out[start + j] = _mm512_reduce_add_ps(dot_row(qv, block + (int64_t)j * D, D)) * scale;
        }
    }
}


/* acc[g] = sum over the context of probs[g, t] * v_t for head sizes 64 and 128: each V row is converted once and
 * feeds as many heads as 16 vector registers hold (4 of size 64, 2 of size 128). */
__attribute__((always_inline)) static inline void values_bf16(const float *probs, const uint16_t *v_head,
                                                              const int32_t *table, int len, int group, int bs,
                                                              float *acc, const int D) {
    const int per_pass = 256 / D, chunks = D / 16;
    for (int g0 = 0; g0 < group; g0 += per_pass) {
        const int heads = group - g0 < per_pass ? group - g0 : per_pass;
        __m512 sum[4][8];
        for (int g = 0; g < per_pass; ++g)
            for (int c = 0; c < chunks; ++c) sum[g][c] = _mm512_setzero_ps();
        for (int start = 0; start < len; start += bs) {
            const uint16_t *block = v_head + (int64_t)table[start / bs] * bs * D;
            const int n = len - start < bs ? len - start : bs;
            for (int j = 0; j < n; ++j) {
                const uint16_t *row = block + (int64_t)j * D;
                __m512 v[8];
                for (int c = 0; c < chunks; ++c) v[c] = bf16x16_to_f32(row + 16 * c);
                for (int g = 0; g < heads; ++g) {
                    const __m512 p = _mm512_set1_ps(probs[(g0 + g) * len + start + j]);
                    for (int c = 0; c < chunks; ++c) sum[g][c] = _mm512_fmadd_ps(p, v[c], sum[g][c]);
                }
            }
        }
        for (int g = 0; g < heads; ++g)
            for (int c = 0; c < chunks; ++c) _mm512_storeu_ps(acc + (g0 + g) * D + c * 16, sum[g][c]);
    }
}
#endif

/* Generic scores (any head size, bf16 or fp32 storage): q is scaled into fp32 scratch, then each K row is read
 * once, block by block: a block's rows are contiguous, and no division per token to find its slot. */
__attribute__((always_inline)) static inline void scores_generic(
    const void *q, const void *k_head, const int32_t *table, int len, int group, int D, int bs, float scale,
    float *q_f, float *scores, int bf16) {
    for (int i = 0; i < group * D; ++i) q_f[i] = load(q, i, bf16) * scale;
    for (int start = 0; start < len; start += bs) {
        const int64_t first = (int64_t)table[start / bs] * bs * D;
        if (start + bs < len) prefetch_rows(k_head, (int64_t)table[start / bs + 1] * bs * D, bs * D, bf16);
        const int n = len - start < bs ? len - start : bs;
        for (int j = 0; j < n; ++j) {
            const int64_t row = first + (int64_t)j * D;
            for (int g = 0; g < group; ++g) {
                const float *qg = q_f + g * D;
                float dot = 0.0f;
                for (int i = 0; i < D; ++i) dot += qg[i] * load(k_head, row + i, bf16);
                scores[g * len + start + j] = dot;
            }
        }
    }
}

/* Generic acc[g] = sum over the context of probs[g, t] * v_t, walking the blocks as scores_generic does. */
__attribute__((always_inline)) static inline void values_generic(
    const float *probs, const void *v_head, const int32_t *table, int len, int group, int D, int bs, float *acc,
    int bf16) {
    memset(acc, 0, sizeof(float) * group * D);
    for (int start = 0; start < len; start += bs) {
        const int64_t first = (int64_t)table[start / bs] * bs * D;
        if (start + bs < len) prefetch_rows(v_head, (int64_t)table[start / bs + 1] * bs * D, bs * D, bf16);
        const int n = len - start < bs ? len - start : bs;
        for (int j = 0; j < n; ++j) {
            const int64_t row = first + (int64_t)j * D;
            for (int g = 0; g < group; ++g) {
                const float p = probs[g * len + start + j];
                float *ag = acc + g * D;
                for (int i = 0; i < D; ++i) ag[i] += p * load(v_head, row + i, bf16);
            }
        }
    }
}

/* Row-wise softmax of the [group, len] scores, in place; the first `skip` columns (left the window) get 0. */
static inline void softmax_rows(float *scores, int group, int len, int skip) {
    for (int g = 0; g < group; ++g) {
        float *s = scores + g * len;
        float top = -FLT_MAX, sum = 0.0f;  /* not -INFINITY: compiled with -ffast-math, which assumes finite math */
        for (int t = 0; t < skip; ++t) s[t] = 0.0f;
        for (int t = skip; t < len; ++t) top = s[t] > top ? s[t] : top;
        for (int t = skip; t < len; ++t) {
            s[t] = expf(s[t] - top);
            sum += s[t];
        }
        const float inv = 1.0f / sum;
        for (int t = 0; t < len; ++t) s[t] *= inv;
    }
}

/* One (token, kv head): `group` query heads over context positions first .. len - 1.
 * work holds q (scaled, fp32) [group, D], the output accumulator [group, D] and the scores [group, len].
 * A window start skips whole blocks by advancing the table; the rest of its block gets probability 0. */
__attribute__((always_inline)) static inline void attend_one(
    const void *q, const void *k_head, const void *v_head, const int32_t *table, int first, int len, int group,
    int D, int bs, float scale, void *out, float *work, int bf16) {
    float *q_f = work, *acc = work + group * D, *scores = work + 2 * group * D;
    table += first / bs;
    len -= first / bs * bs;
    const int skip = first % bs;
#ifdef HAVE_BF16_DOT
    const int fast = bf16 && (D == 64 || D == 128);
#else
    const int fast = 0;
#endif
    if (fast) {
#ifdef HAVE_BF16_DOT
        scores_bf16((const uint16_t *)q, (const uint16_t *)k_head, table, len, group, bs, scale, scores, D);
        softmax_rows(scores, group, len, skip);
        values_bf16(scores, (const uint16_t *)v_head, table, len, group, bs, acc, D);
#endif
    } else {
        scores_generic(q, k_head, table, len, group, D, bs, scale, q_f, scores, bf16);
        softmax_rows(scores, group, len, skip);
        values_generic(scores, v_head, table, len, group, D, bs, acc, bf16);
    }
    for (int i = 0; i < group * D; ++i) store(out, i, acc[i], bf16);
}

/* Mirrored by plait/runner/native/__init__.py (AttentionArgs): keep the two in step. */

static void write_new_kv(const struct attention_args *a, size_t elem) {
    const size_t row_bytes = (size_t)a->head_dim * elem;
#pragma omp for schedule(static)
    for (int t = 0; t < a->tokens; ++t) {
        for (int h = 0; h < a->kv_heads; ++h) {
            const int64_t dst = (h * a->head_stride + a->slots[t] * a->head_dim) * (int64_t)elem;
            const int64_t k_src = (t * a->k_stride + (int64_t)h * a->head_dim) * (int64_t)elem;
            const int64_t v_src = (t * a->v_stride + (int64_t)h * a->head_dim) * (int64_t)elem;
            memcpy((char *)a->k_cache + dst, (const char *)a->k_new + k_src, row_bytes);
            memcpy((char *)a->v_cache + dst, (const char *)a->v_new + v_src, row_bytes);
        }
    }
    /* the implicit barrier of `omp for`: every row is written before any thread attends */
}

/* One thread's part of the call (inside the parallel region): write the new rows, then attend to its tasks. Sets
 * *failed if it could not allocate its scratch. */
__attribute__((always_inline)) static inline void attention_thread(const struct attention_args *a, int max_len,
                                                                   int *failed, const int bf16) {
    const int T = a->tokens, H = a->heads, KV = a->kv_heads, D = a->head_dim, bs = a->block_size;
    const int group = H / KV;
    const size_t elem = bf16 ? 2 : 4;
    const unsigned fp_mode = flush_subnormals();
    write_new_kv(a, elem);
    float *work = malloc(sizeof(float) * (size_t)group * (2 * (size_t)D + (size_t)max_len));
    if (!work) {
#pragma omp atomic write
        *failed = 1;
    }
    /* Dynamic: tokens differ in context length, so equal shares of tasks are not equal shares of work.
     * Neighbouring tasks share a sequence, so its K/V stays in cache between them. */
#pragma omp for schedule(dynamic, 4)
    for (int64_t task = 0; task < (int64_t)T * KV; ++task) {
        if (!work) continue;
        const int t = (int)(task / KV), h = (int)(task % KV);
        const int64_t q_off = (int64_t)t * a->q_stride + (int64_t)h * group * D;
        const int64_t o_off = ((int64_t)t * H + (int64_t)h * group) * D;
        const void *qt = (const char *)a->q + q_off * elem;
        const void *kh = (const char *)a->k_cache + h * a->head_stride * elem;
        const void *vh = (const char *)a->v_cache + h * a->head_stride * elem;
        const int32_t *table = a->tables + (int64_t)a->rows[t] * a->max_blocks;
        void *ot = (char *)a->out + o_off * elem;
        const int len = a->lengths[t], first = a->window > 0 && len > a->window ? len - a->window : 0;
        /* Constant head sizes let the compiler unroll the inner loops into whole vector registers. */
        if (D == 64)
            attend_one(qt, kh, vh, table, first, len, group, 64, bs, a->scale, ot, work, bf16);
        else if (D == 128)
            attend_one(qt, kh, vh, table, first, len, group, 128, bs, a->scale, ot, work, bf16);
        else
            attend_one(qt, kh, vh, table, first, len, group, D, bs, a->scale, ot, work, bf16);
    }
    free(work);
    restore_fp_mode(fp_mode);
}

static int longest_context(const struct attention_args *a) {
    int max_len = 0;
    for (int t = 0; t < a->tokens; ++t) max_len = a->lengths[t] > max_len ? a->lengths[t] : max_len;
    return max_len;
}

/* Each returns 0, or -1 if a thread could not allocate its scratch (the output is then incomplete). The parallel
 * region is here, with the storage type as a literal inside it: OpenMP outlines a region before inlining, so a
 * type passed into one arrives as a variable and every per-element load and store tests it. */
int plait_paged_attention_bf16(const struct attention_args *a) {
    const int max_len = longest_context(a);
    int failed = 0;
#pragma omp parallel
    attention_thread(a, max_len, &failed, 1);
    return failed ? -1 : 0;
}

int plait_paged_attention_f32(const struct attention_args *a) {
    const int max_len = longest_context(a);
    int failed = 0;
#pragma omp parallel
    attention_thread(a, max_len, &failed, 0);
    return failed ? -1 : 0;
}

/* 1 where this build computes bf16 scores with the bf16 dot-product instruction (the Python side picks defaults
 * by it: runner/shared_prefix.py's default_min_shared_blocks). */
int plait_has_bf16_dot(void) {
#ifdef HAVE_BF16_DOT
    return 1;
#else
    return 0;
#endif
}
