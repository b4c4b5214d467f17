/* Block-wise int8 quantization of bf16 activation rows for the VNNI kernels (q4_vnni.c, q8_vnni.c), stored tile by
 * tile the way those kernels read them. Include it inside an AVX-512 section.
 *
 * Quantization: per block of 32, dx = amax / 127 and xq = round(x / dx) to nearest even, as llama.cpp's Q8
 * activations; sx = the block's exact sum, xsum = the sum of its xq (stored times a kernel's constant, so the
 * kernel starts its integer dot product from it with a broadcast load instead of subtracting it afterwards).
 *
 * Layout: the M rows are split into ceil(M / ROW_TILE) tiles of near-equal size (9 rows as 5 + 4, not 8 + 1: a
 * kernel runs a 1-row tile at a fraction of its speed). A tile of R rows starting at row `first` occupies rows
 * first.. of every array; within it, block by block, its R rows' 32 int8 values are adjacent, and so are their R
 * values of dx, sx and xsum. So a kernel reads one tile's activations through one pointer per array at offsets
 * fixed at compile time, and one row alone is stored exactly as a plain row-major row. The layout only decides
 * where a row's numbers are stored, never how they are computed: each row's arithmetic is the same in any M. */
#ifndef PLAIT_INT8_ROWS_H
#define PLAIT_INT8_ROWS_H

#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>

#ifndef QK
#define QK 32
#endif
#ifndef ROW_TILE
#define ROW_TILE 8
#endif

typedef struct {
    int8_t *xq;
    float *dx, *sx;
    int32_t *xsum;
    int64_t M, blocks, tiles;
} int8_tiles;

/* The tiles for M rows of K inputs (K a multiple of QK), in one allocation; 0 on success. Free with free(t->xq). */
static inline int int8_tiles_alloc(int8_tiles *t, int64_t M, int64_t K) {
    t->M = M;
    t->blocks = K / QK;
    t->tiles = (M + ROW_TILE - 1) / ROW_TILE;
    const int64_t slots = M * t->blocks;
    t->xq = aligned_alloc(64, (size_t)((slots * QK + 3 * slots * 4 + 63) / 64 * 64)); /* a multiple of 64 */
    if (!t->xq) return -1;
    t->dx = (float *)(t->xq + slots * QK); /* 32-byte aligned: slots * 32 bytes in */
    t->sx = t->dx + slots;
    t->xsum = (int32_t *)(t->sx + slots);
    return 0;
}

/* Tile `tile`'s first row and row count. */
static inline void int8_tile_rows(const int8_tiles *t, int64_t tile, int64_t *first, int64_t *rows) {
    const int64_t base = t->M / t->tiles, extra = t->M % t->tiles;
    *rows = base + (tile < extra);
    *first = tile * base + (tile < extra ? tile : extra);
}


/* Row tile t: its first row, its row count and where its activations start in each array. */
typedef struct {
    int64_t first, rows;
    const int8_t *xq;
    const float *dx, *sx;
    const int32_t *xsum;
} int8_tile;

static inline int8_tile int8_tile_at(const int8_tiles *a, int64_t t) {
    int8_tile v;
    int8_tile_rows(a, t, &v.first, &v.rows);
    const int64_t o = v.first * a->blocks;
    v.xq = a->xq + o * QK;
    v.dx = a->dx + o, v.sx = a->sx + o, v.xsum = a->xsum + o;
    return v;
}

/* What a kernel prefetches while row tile t multiplies an output tile's weights: the next output tile's weights
 * (`next_tile`) during the last of several row tiles, whose weights are already in L1; else nothing (NULL). */
static inline const uint8_t *int8_prefetch_during(const int8_tiles *a, int64_t t, const uint8_t *next_tile) {
    return t == a->tiles - 1 && t > 0 ? next_tile : NULL;
}

/* Prefetch `bytes` of weights into L1 (a VNNI kernel's next output tile, while it multiplies the current one's
 * weights from L1 by a later row tile; a prefetch past the matrix's end is harmless). */
static inline __attribute__((always_inline)) void prefetch_block(const uint8_t *p, int64_t bytes) {
    for (int64_t l = 0; l < bytes; l += 64) _mm_prefetch((const char *)(p + l), _MM_HINT_T0);
}

/* Quantize row m of x [M, K] into its slot; xsum is stored as sum_scale * sum(xq). */
static inline void int8_tiles_quantize(const int8_tiles *t, const uint16_t *x, int64_t m, int32_t sum_scale) {
    const int64_t base = t->M / t->tiles, extra = t->M % t->tiles, big = extra * (base + 1);
    const int64_t tile = m < big ? m / (base + 1) : extra + (m - big) / base;
    int64_t first, rows;
    int8_tile_rows(t, tile, &first, &rows);
    const int64_t r = m - first, K = t->blocks * QK;
    int8_t *xq = t->xq + first * K + r * QK;
    const int64_t p = first * t->blocks + r;
    x += m * K;
    const __m512 sign = _mm512_set1_ps(-0.0f);
    for (int64_t b = 0; b < t->blocks; b++) {
        const __m256i raw0 = _mm256_loadu_si256((const __m256i *)(x + b * QK));
        const __m256i raw1 = _mm256_loadu_si256((const __m256i *)(x + b * QK + 16));
        const __m512 v0 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw0), 16));
        const __m512 v1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw1), 16));
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_andnot_ps(sign, v0), _mm512_andnot_ps(sign, v1)));
        const int64_t i = p + b * rows;
        t->sx[i] = _mm512_reduce_add_ps(_mm512_add_ps(v0, v1));
        t->dx[i] = amax / 127.0f;
        const __m512 inv = _mm512_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
        const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, inv)); /* round to nearest even */
        const __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, inv));
        int8_t *out = xq + b * rows * QK;
        _mm_storeu_si128((__m128i *)out, _mm512_cvtsepi32_epi8(q0));
        _mm_storeu_si128((__m128i *)(out + 16), _mm512_cvtsepi32_epi8(q1));
        /* values are within +-127 after rounding */
        t->xsum[i] = sum_scale * _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
    }
}

#endif
