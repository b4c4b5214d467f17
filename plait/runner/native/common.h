/* Helpers shared by plait's C kernels: bf16 <-> fp32 and the subnormal mode. */
#ifndef PLAIT_COMMON_H
#define PLAIT_COMMON_H

#include <stdint.h>
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

#endif
