/* Paged decode attention on a CPU, reading K and V in place from the paged cache.
 *
 * One query token per sequence; a sequence is one work item. A token's K (and V) row holds all
 * KV heads side by side, so an item reads each block front to back (streaming, what the hardware
 * prefetcher serves best: a work item per KV head read a third of every row and ran 2-3x slower
 * from memory), and each row once for every query head that shares it (GQA). Scores for the whole
 * context are kept (heads x context floats), then softmax, then the weighted sum of V: K read
 * once and V once, no gathered copy.
 *
 * Layouts (contiguous, float32):
 *   q, out           [num_seqs, num_q_heads, head_dim]   head_dim a multiple of 8 up to 256, at most 256 heads
 *   k_cache, v_cache [num_blocks, block_size, num_kv_heads, head_dim]
 *   block_tables     [num_seqs, table_stride] int64 physical block ids
 *   context_lens     [num_seqs] int64 (the token being decoded included)
 *
 * Vectors are GCC vector extensions of 8 floats (AVX/AVX2/AVX-512 or NEON as -march=native
 * allows). Built by edgecloud.llm.attention.cpu_kernels with -O3 -march=native -fopenmp; it links
 * to the OpenMP runtime torch has loaded, so it shares torch's thread pool.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

typedef float v8 __attribute__((vector_size(32), aligned(4))); /* unaligned loads and stores */

#define MAX_CHUNKS 32 /* head_dim <= 256 */
#define MAX_HEADS 256 /* query heads */

/* Rows this many tokens ahead are requested early: blocks sit anywhere in the pool, so the hardware
 * prefetcher cannot follow a sequence from one block into the next. */
#define AHEAD 8

static inline void prefetch_row(const float *row, int64_t floats) {
    for (int64_t i = 0; i < floats; i += 16) __builtin_prefetch(row + i, 0, 3);
}

/* Token t's row (all KV heads) of a sequence, through its block table. */
static inline const float *token_row(const float *cache, const int64_t *table, int64_t t, int64_t block_size,
                                     int64_t token_stride) {
    return cache + (table[t / block_size] * block_size + t % block_size) * token_stride;
}

static inline float hsum(v8 x) {
    return ((x[0] + x[4]) + (x[1] + x[5])) + ((x[2] + x[6]) + (x[3] + x[7]));
}

int edgecloud_paged_decode_f32(const float *q, const float *k_cache, const float *v_cache,
                               const int64_t *block_tables, int64_t table_stride,
                               const int64_t *context_lens, float *out, int64_t num_seqs,
                               int64_t num_q_heads, int64_t num_kv_heads, int64_t head_dim,
                               int64_t block_size, int64_t max_context, float scale, int num_threads) {
    const int64_t group = num_q_heads / num_kv_heads;
    if (head_dim % 8 != 0 || head_dim / 8 > MAX_CHUNKS || num_q_heads > MAX_HEADS || group * num_kv_heads != num_q_heads)
        return -2;
    const int64_t chunks = head_dim / 8;
    const int64_t token_stride = num_kv_heads * head_dim; /* a token's K (or V) row, all heads: contiguous */
    int failed = 0;
#pragma omp parallel num_threads(num_threads)
    {
        float *scores = (float *)malloc(sizeof(float) * (size_t)(num_q_heads * (max_context > 0 ? max_context : 1)));
        v8 *acc = (v8 *)malloc(sizeof(v8) * (size_t)(num_q_heads * chunks));
        v8 *qv = (v8 *)malloc(sizeof(v8) * (size_t)(num_q_heads * chunks));
        if (scores == NULL || acc == NULL || qv == NULL) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t seq = 0; seq < num_seqs; seq++) {
            if (scores == NULL || acc == NULL || qv == NULL) continue;
            const int64_t len = context_lens[seq];
            if (len <= 0) { /* nothing cached: a zero output, never 0/0 */
                for (int64_t i = 0; i < num_q_heads * head_dim; i++) out[seq * num_q_heads * head_dim + i] = 0.0f;
                continue;
            }
            const int64_t *table = block_tables + seq * table_stride;
            const float *qs = q + seq * num_q_heads * head_dim;
            for (int64_t i = 0; i < num_q_heads * chunks; i++) qv[i] = *(const v8 *)(qs + i * 8) * scale;
            float best[MAX_HEADS], total[MAX_HEADS];
            for (int64_t h = 0; h < num_q_heads; h++) best[h] = -INFINITY;
            /* K pass: a token's row holds every KV head, so a block is read front to back */
            for (int64_t t = 0; t < len; t++) {
                const float *k = token_row(k_cache, table, t, block_size, token_stride);
                if (t + AHEAD < len) prefetch_row(token_row(k_cache, table, t + AHEAD, block_size, token_stride), token_stride);
                for (int64_t h = 0; h < num_q_heads; h++) {
                    const float *kh = k + (h / group) * head_dim;
                    const v8 *qh = qv + h * chunks;
                    v8 s = qh[0] * *(const v8 *)kh;
                    for (int64_t c = 1; c < chunks; c++) s += qh[c] * *(const v8 *)(kh + c * 8);
                    const float score = hsum(s);
                    scores[h * len + t] = score;
                    best[h] = score > best[h] ? score : best[h];
                }
            }
            for (int64_t h = 0; h < num_q_heads; h++) {
                float *s = scores + h * len, sum = 0.0f;
                for (int64_t t = 0; t < len; t++) {
                    s[t] = expf(s[t] - best[h]);
                    sum += s[t];
                }
                total[h] = sum;
            }
            for (int64_t i = 0; i < num_q_heads * chunks; i++) acc[i] = (v8){0};
            /* V pass, in the same order */
            for (int64_t t = 0; t < len; t++) {
                const float *v = token_row(v_cache, table, t, block_size, token_stride);
                if (t + AHEAD < len) prefetch_row(token_row(v_cache, table, t + AHEAD, block_size, token_stride), token_stride);
                for (int64_t h = 0; h < num_q_heads; h++) {
                    const float *vh = v + (h / group) * head_dim;
                    const float p = scores[h * len + t];
                    v8 *a = acc + h * chunks;
                    for (int64_t c = 0; c < chunks; c++) a[c] += p * *(const v8 *)(vh + c * 8);
                }
            }
            float *o = out + seq * num_q_heads * head_dim;
            for (int64_t h = 0; h < num_q_heads; h++) {
                const float inv = 1.0f / total[h];
                for (int64_t c = 0; c < chunks; c++) *(v8 *)(o + h * head_dim + c * 8) = acc[h * chunks + c] * inv;
            }
        }
        free(scores);
        free(acc);
        free(qv);
    }
    return failed ? -1 : 0;
}
