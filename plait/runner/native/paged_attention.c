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
 * Layouts (strides in elements):
 *   q        [T, H, D], token t's heads at t * q_stride (q may be a slice of a fused qkv/qk tensor)
 *   k, v     [KV, num_slots, D] for one layer; kv head h starts at h * head_stride; slot = block * bs + offset
 *   tables   [num_rows, max_blocks] int32 block ids
 *   rows     [T] int32: the block-table row of each token's sequence
 *   lengths  [T] int32: context length of each token, itself included (its K/V already written)
 *   out      [T, H, D] contiguous
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

/* Softmax tails are subnormal (exp of very negative scores) and x86 computes with subnormals ~100x slower. Each
 * kernel thread flushes them to zero while it runs and restores its previous mode after: the process keeps IEEE
 * semantics everywhere else. */
static inline unsigned flush_subnormals(void) {
#if defined(__x86_64__) || defined(__i386__)
    const unsigned saved = _mm_getcsr();
    _mm_setcsr(saved | 0x8040u);  /* FTZ | DAZ */
    return saved;
#else
    return 0;
#endif
}

static inline void restore_fp_mode(unsigned saved) {
#if defined(__x86_64__) || defined(__i386__)
    _mm_setcsr(saved);
#else
    (void)saved;
#endif
}

static inline float load(const void *base, int64_t i, int bf16) {
    if (!bf16) return ((const float *)base)[i];
    uint32_t bits = (uint32_t)((const uint16_t *)base)[i] << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline void store(void *base, int64_t i, float f, int bf16) {
    if (!bf16) {
        ((float *)base)[i] = f;
        return;
    }
    uint32_t bits;  /* round to nearest even, as torch's conversion does; NaN stays NaN */
    memcpy(&bits, &f, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u) bits |= 0x400000u;
    else bits += 0x7fffu + ((bits >> 16) & 1u);
    ((uint16_t *)base)[i] = (uint16_t)(bits >> 16);
}

/* One (token, kv head): `group` query heads over `len` context tokens.
 * work holds q (scaled, fp32) [group, D], the output accumulator [group, D] and the scores [group, len]. */
__attribute__((always_inline)) static inline void attend_one(
    const void *q, const void *k_head, const void *v_head, const int32_t *table, int len, int group, int D, int bs,
    float scale, void *out, float *work, int bf16) {
    float *q_f = work, *acc = work + group * D, *scores = work + 2 * group * D;
    for (int i = 0; i < group * D; ++i) q_f[i] = load(q, i, bf16) * scale;

    for (int t = 0; t < len; ++t) {
        const int64_t row = ((int64_t)table[t / bs] * bs + t % bs) * D;
        for (int g = 0; g < group; ++g) {
            const float *qg = q_f + g * D;
            float dot = 0.0f;
            for (int i = 0; i < D; ++i) dot += qg[i] * load(k_head, row + i, bf16);
            scores[g * len + t] = dot;
        }
    }
    for (int g = 0; g < group; ++g) {
        float *s = scores + g * len;
        float top = -FLT_MAX, sum = 0.0f;  /* not -INFINITY: compiled with -ffast-math, which assumes finite math */
        for (int t = 0; t < len; ++t) top = s[t] > top ? s[t] : top;
        for (int t = 0; t < len; ++t) {
            s[t] = expf(s[t] - top);
            sum += s[t];
        }
        const float inv = 1.0f / sum;
        for (int t = 0; t < len; ++t) s[t] *= inv;
    }
    memset(acc, 0, sizeof(float) * group * D);
    for (int t = 0; t < len; ++t) {
        const int64_t row = ((int64_t)table[t / bs] * bs + t % bs) * D;
        for (int g = 0; g < group; ++g) {
            const float p = scores[g * len + t];
            float *ag = acc + g * D;
            for (int i = 0; i < D; ++i) ag[i] += p * load(v_head, row + i, bf16);
        }
    }
    for (int i = 0; i < group * D; ++i) store(out, i, acc[i], bf16);
}

/* Returns 0, or -1 if a thread could not allocate its scratch (the output is then incomplete). */
static inline int paged_attention(const void *q, int64_t q_stride, const void *k, const void *v,
                                  int64_t head_stride, const int32_t *tables, int max_blocks, const int32_t *rows,
                                  const int32_t *lengths, int T, int H, int KV, int D, int bs, float scale,
                                  void *out, int bf16) {
    const int group = H / KV;
    const size_t elem = bf16 ? 2 : 4;
    int max_len = 0, failed = 0;
    for (int t = 0; t < T; ++t) max_len = lengths[t] > max_len ? lengths[t] : max_len;
#pragma omp parallel
    {
        const unsigned fp_mode = flush_subnormals();
        float *work = malloc(sizeof(float) * (size_t)group * (2 * (size_t)D + (size_t)max_len));
        if (!work) {
#pragma omp atomic write
            failed = 1;
        }
        /* Dynamic: tokens differ in context length, so equal shares of tasks are not equal shares of work.
         * Neighbouring tasks share a sequence, so its K/V stays in cache between them. */
#pragma omp for schedule(dynamic, 4)
        for (int64_t task = 0; task < (int64_t)T * KV; ++task) {
            if (!work) continue;
            const int t = (int)(task / KV), h = (int)(task % KV);
            const int64_t q_off = (int64_t)t * q_stride + (int64_t)h * group * D;
            const int64_t o_off = ((int64_t)t * H + (int64_t)h * group) * D;
            const void *qt = (const char *)q + q_off * elem, *kh = (const char *)k + h * head_stride * elem,
                       *vh = (const char *)v + h * head_stride * elem;
            const int32_t *table = tables + (int64_t)rows[t] * max_blocks;
            void *ot = (char *)out + o_off * elem;
            /* Constant head sizes let the compiler unroll the inner loops into whole vector registers. */
            if (D == 64)
                attend_one(qt, kh, vh, table, lengths[t], group, 64, bs, scale, ot, work, bf16);
            else if (D == 128)
                attend_one(qt, kh, vh, table, lengths[t], group, 128, bs, scale, ot, work, bf16);
            else
                attend_one(qt, kh, vh, table, lengths[t], group, D, bs, scale, ot, work, bf16);
        }
        free(work);
        restore_fp_mode(fp_mode);
    }
    return failed ? -1 : 0;
}

/* Exported entry points; see the layouts at the top. */
int plait_paged_attention_bf16(const void *q, int64_t q_stride, const void *k, const void *v, int64_t head_stride,
                               const int32_t *tables, int max_blocks, const int32_t *rows, const int32_t *lengths,
                               int T, int H, int KV, int D, int bs, float scale, void *out) {
    return paged_attention(q, q_stride, k, v, head_stride, tables, max_blocks, rows, lengths, T, H, KV, D, bs, scale,
                           out, 1);
}

int plait_paged_attention_f32(const void *q, int64_t q_stride, const void *k, const void *v, int64_t head_stride,
                              const int32_t *tables, int max_blocks, const int32_t *rows, const int32_t *lengths,
                              int T, int H, int KV, int D, int bs, float scale, void *out) {
    return paged_attention(q, q_stride, k, v, head_stride, tables, max_blocks, rows, lengths, T, H, KV, D, bs, scale,
                           out, 0);
}
