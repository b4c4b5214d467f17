/* The arguments of the paged attention kernel (paged_attention.c documents each field), shared with the fused
 * decoder layer (decoder_layer.c), which fills in the step's q/k/v itself. Mirrored by AttentionArgs in __init__.py. */
#ifndef PLAIT_ATTENTION_ARGS_H
#define PLAIT_ATTENTION_ARGS_H

#include <stdint.h>

struct attention_args {
    const void *q, *k_new, *v_new;
    void *k_cache, *v_cache, *out;
    const int64_t *slots;
    const int32_t *tables, *rows, *lengths;
    int64_t q_stride, k_stride, v_stride, head_stride;
    int32_t tokens, heads, kv_heads, head_dim, block_size, max_blocks;
    float scale;
    int32_t window;
};

int plait_paged_attention_bf16(const struct attention_args *a);

#endif
