/* One Llama-family decoder layer in one call, for bf16 models whose four projections are 4-bit (q4_vnni.c):
 *     h = rmsnorm(hidden + residual); qkv = h W_qkv; RoPE on q, k; attention (writes k, v to the paged cache);
 *     h = rmsnorm(attn W_o + residual); out = (silu(h W_gate) * h W_up) W_down
 *
 * Why: at batch 1 each kernel of a layer runs for a few microseconds, and reaching it from Python (module call,
 * checks, output allocation, ctypes) costs as much again: a batch-1 step spent ~270 us per layer, of which the
 * kernels were a fraction. Here the layer's eight kernel calls are plain C calls in a row.
 *
 * It calls the very kernels the module-by-module path calls (runner/native/modules.py, runner/q4_linear.py,
 * runner/native/ops.py), on the same inputs in the same order, so its results are bit-identical to that path,
 * which stays the reference and the fallback (runner/fused_layer.py). Biases and q/k norms (Qwen) are not
 * handled here: such layers take the module path. */
#include <stdint.h>
#include <stdlib.h>

#include "attention_args.h"

void plait_add_rms_norm_bf16(const void *x, const void *residual, const void *weight, void *sum_out, void *out,
                             int rows, int dim, float eps);
void plait_silu_mul_bf16(const void *gate_up, void *out, int rows, int dim);
void plait_rope_bf16(void *x, int64_t row_stride, const void *cos, const void *signed_sin, int tokens, int heads,
                     int dim);
int plait_q4_vnni_linear_bf16(const uint16_t *x, const uint8_t *w, uint16_t *y, int64_t M, int64_t N, int64_t K);

/* Mirrored by LayerArgs in __init__.py. Tensors are bf16 and contiguous, [tokens, ...]. */
struct layer_args {
    const uint16_t *hidden;        /* the previous layer's MLP output (the embeddings for the first layer) */
    const uint16_t *residual;      /* the residual stream before it; NULL for the first layer (hidden is it) */
    uint16_t *residual_out;        /* the residual stream after this layer's attention */
    uint16_t *out;                 /* this layer's MLP output */
    const uint16_t *input_norm, *post_norm;
    const uint8_t *qkv_w, *o_w, *gate_up_w, *down_w; /* q4_vnni.c's packed weights */
    const uint16_t *cos, *signed_sin;                /* [tokens, head_dim] */
    int64_t tokens, hidden_size, intermediate_size;
    int32_t heads, kv_heads, head_dim;
    float eps;
};

/* Returns 0; -1 if a 4-bit product refused its shape, -2 if the workspace could not be allocated, -3 if attention
 * could not allocate its scratch. On failure nothing but the cache slots of this step's k/v has been written,
 * and those are written again, the same, by whichever path reruns the layer. */
int plait_llama_layer_bf16(const struct layer_args *a, struct attention_args *att) {
    const int64_t T = a->tokens, H = a->hidden_size, I = a->intermediate_size, D = a->head_dim;
    const int64_t q_size = a->heads * D, kv_size = a->kv_heads * D, qkv_size = q_size + 2 * kv_size;
    /* One workspace, each part 64-byte aligned as torch aligns its tensors: the kernels' vector loads and stores
     * then split no cache line (unaligned parts measured ~20% slower at 2048 rows). */
    const int64_t elems[6] = {T * H, T * H, T * qkv_size, T * q_size, T * 2 * I, T * I};
    size_t offsets[7] = {0};
    for (int i = 0; i < 6; i++) offsets[i + 1] = offsets[i] + ((size_t)elems[i] * sizeof(uint16_t) + 63) / 64 * 64;
    char *work = aligned_alloc(64, offsets[6]);
    if (!work) return -2;
    uint16_t *normed = (uint16_t *)(work + offsets[0]), *proj = (uint16_t *)(work + offsets[1]);
    uint16_t *qkv = (uint16_t *)(work + offsets[2]), *attn = (uint16_t *)(work + offsets[3]);
    uint16_t *gate_up = (uint16_t *)(work + offsets[4]), *act = (uint16_t *)(work + offsets[5]);
    int status = 0;
    const uint16_t *residual = a->residual ? a->residual_out : a->hidden;
    plait_add_rms_norm_bf16(a->hidden, a->residual, a->input_norm, a->residual_out, normed, (int)T, (int)H, a->eps);
    status = plait_q4_vnni_linear_bf16(normed, a->qkv_w, qkv, T, qkv_size, H);
    if (status != 0) goto done;
    plait_rope_bf16(qkv, qkv_size, a->cos, a->signed_sin, (int)T, a->heads + a->kv_heads, (int)D);
    att->q = qkv, att->k_new = qkv + q_size, att->v_new = qkv + q_size + kv_size, att->out = attn;
    att->q_stride = att->k_stride = att->v_stride = qkv_size;
    att->heads = a->heads, att->kv_heads = a->kv_heads, att->head_dim = a->head_dim;
    if (plait_paged_attention_bf16(att) != 0) {
        status = -3;
        goto done;
    }
    status = plait_q4_vnni_linear_bf16(attn, a->o_w, proj, T, H, q_size);
    if (status != 0) goto done;
    /* In place is safe: each element of the sum is read from residual before it is written, at the same index. */
    plait_add_rms_norm_bf16(proj, residual, a->post_norm, a->residual_out, normed, (int)T, (int)H, a->eps);
    status = plait_q4_vnni_linear_bf16(normed, a->gate_up_w, gate_up, T, 2 * I, H);
    if (status != 0) goto done;
    plait_silu_mul_bf16(gate_up, act, (int)T, (int)I);
    status = plait_q4_vnni_linear_bf16(act, a->down_w, a->out, T, H, I);
done:
    free(work);
    return status;
}
