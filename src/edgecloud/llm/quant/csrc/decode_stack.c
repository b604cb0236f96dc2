/* One token through a stack of Llama decoder layers in one call (one-stream decode), with the
 * projections' weights in Q4_1 groups (int4) or dense float32.
 *
 * Built after q4_1_matmul.c in one translation unit (cpu_kernels.compiled joins the two files): int4
 * projections are its int8-activation products (q4_1_rows); float32 ones stream the [N, K] weight
 * once with 16-wide fused multiply-adds (f32_rows). Per layer, as the engine's modules compute it
 * (llm/models/llama.py):
 *
 *     x = rms_norm(h) * w_in;  q, k, v = qkv(x);  rotate q and k (half-split RoPE at the position);
 *     k, v -> the layer's paged cache at the token's slot;  a = softmax(q k^T * scale) v  (GQA);
 *     h += o(a);  x = rms_norm(h) * w_post;  g, u = gate_up(x);  h += down(silu(g) * u)
 *
 * The engine's path makes ~30 calls a layer (7 into the int4 kernel, the rest small torch ops),
 * each paying Python, dispatch and an OpenMP fork/join: at one token that overhead is as large as
 * the work. Here the whole range of layers runs inside one parallel region: the projections share
 * out their weight rows between the threads, attention its query heads, the small vector work runs
 * on one thread, and the threads meet at a barrier between phases.
 *
 * Layouts: hidden [H] float32, updated in place. Per layer (StackLayer) the norms' weights [H], each
 * projection's Q4_1 codes [N, K / 32, 16] and fp16 scales [N, 2, K / 32] (as Int4Linear keeps them)
 * or, with shape->dense set, its float32 weight [N, K] in `weights` (scales unused),
 * the K and V caches [blocks, block_size, kv_heads, head_dim] float32, and the index of its layer
 * group; per group (GroupStep) pointers to the token's cache slot, the sequence's block table row
 * and its context length (the token included). cos and sin: [head_dim / 2], the position's rows.
 * With `head`, the final norm and the LM head follow the last layer (hidden keeps the last layer's
 * output; the logits go to head->logits).
 *
 * Returns 0; -1 if scratch could not be allocated; -2 for shapes it does not take (head_dim not a
 * multiple of 16 or above 256, heads not a multiple of kv heads, H or I not multiples of 32); -3 where
 * it is not built (it needs AVX-512 with VNNI; the caller keeps the module-by-module path).
 */
#include <math.h>

typedef struct {
    const float *input_norm, *post_norm;
    const void *weights[4];    /* qkv, o, gate_up, down: Q4_1 codes (uint8) or float32 weights */
    const uint16_t *scales[4]; /* Q4_1 only */
    float *k_cache, *v_cache;
    int64_t group;
} StackLayer;

typedef struct {
    const int64_t *slot, *table, *context_len;
} GroupStep;

/* The final norm and the LM head, run after the last layer when given: logits [vocab] float32. */
typedef struct {
    const float *norm;
    const void *weights; /* Q4_1 codes or float32 [vocab, H] */
    const uint16_t *scales;
    float *logits;
    int64_t vocab, dense;
} StackHead;

typedef struct {
    int64_t hidden, intermediate, heads, kv_heads, head_dim, block_size;
    float eps, scale;
    int64_t dense; /* 1: float32 weights; 0: Q4_1 */
} LlamaShape;

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)

typedef float f16x __attribute__((vector_size(64), aligned(4))); /* 16 floats, unaligned loads */

static inline float sum16(f16x v) {
    return _mm512_reduce_add_ps((__m512)v);
}

static void rms_norm(const float *x, const float *w, float *y, int64_t n, float eps) {
    float squares = 0.0f;
    for (int64_t i = 0; i < n; i++) squares += x[i] * x[i];
    const float inv = 1.0f / sqrtf(squares / (float)n + eps);
    for (int64_t i = 0; i < n; i++) y[i] = x[i] * inv * w[i];
}

/* Half-split rotation of one head in place: pairs (i, i + D/2). */
static void rotate(float *x, const float *cos, const float *sin, int64_t half) {
    for (int64_t i = 0; i < half; i++) {
        const float a = x[i], b = x[i + half];
        x[i] = a * cos[i] - b * sin[i];
        x[i + half] = b * cos[i] + a * sin[i];
    }
}

/* One row of a float32 W (K a multiple of 16) against x: the row read front to back, four
 * accumulators so the fused multiply-adds do not wait on each other. */
static inline float f32_row(const float *w, const float *x, int64_t K) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t k = 0;
    for (; k + 64 <= K; k += 64) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + k), _mm512_loadu_ps(x + k), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w + k + 16), _mm512_loadu_ps(x + k + 16), a1);
        a2 = _mm512_fmadd_ps(_mm512_loadu_ps(w + k + 32), _mm512_loadu_ps(x + k + 32), a2);
        a3 = _mm512_fmadd_ps(_mm512_loadu_ps(w + k + 48), _mm512_loadu_ps(x + k + 48), a3);
    }
    for (; k < K; k += 16) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + k), _mm512_loadu_ps(x + k), a0);
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

/* y[N] = W x for a float32 W [N, K]; rows shared out between the threads of the enclosing parallel
 * region in contiguous runs (every thread must call it), each thread reading its run of W front to back
 * as one stream. Measured here (2 threads, [49152, 576], the tied LM head): one row at a time 35 GB/s,
 * a plain read of the same bytes 35 GB/s; four rows side by side (four streams 2.3 KB apart, this
 * function's first form) 25 GB/s; with software prefetch 32 GB/s. */
static void f32_rows(const float *w, const float *x, float *y, int64_t N, int64_t K) {
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; n++) y[n] = f32_row(w + n * K, x, K);
}

/* One projection, y[N] = W x over K inputs: int4 products of x's int8 rounding (made here on one
 * thread, into a), or the float32 product. Every thread of the region calls it. */
static void project(const void *weights, const uint16_t *scales, const float *x, Activations *a, float *y, int64_t N,
                    int64_t K, int64_t dense) {
    if (dense) {
        f32_rows((const float *)weights, x, y, N, K);
        return;
    }
#pragma omp single
    quantize_activations(x, 1, K, a);
    q4_1_rows((const uint8_t *)weights, scales, a, y, 1, N, K / 32);
}

/* One query head against its KV head's context, through the block table; scores: [len] scratch. */
static void attend(const float *q, const float *k_cache, const float *v_cache, const int64_t *table, int64_t len,
                   int64_t block_size, int64_t token_stride, int64_t kv_offset, int64_t head_dim, float scale,
                   float *scores, float *out) {
    const int64_t chunks = head_dim / 16;
    f16x qv[16], acc[16];
    for (int64_t c = 0; c < chunks; c++) qv[c] = *(const f16x *)(q + 16 * c) * scale;
    float best = -INFINITY;
    for (int64_t t = 0; t < len; t++) {
        const float *k = k_cache + (table[t / block_size] * block_size + t % block_size) * token_stride + kv_offset;
        f16x s = qv[0] * *(const f16x *)k;
        for (int64_t c = 1; c < chunks; c++) s += qv[c] * *(const f16x *)(k + 16 * c);
        scores[t] = sum16(s);
        best = scores[t] > best ? scores[t] : best;
    }
    float total = 0.0f;
    for (int64_t t = 0; t < len; t++) {
        scores[t] = expf(scores[t] - best);
        total += scores[t];
    }
    for (int64_t c = 0; c < chunks; c++) acc[c] = (f16x){0};
    for (int64_t t = 0; t < len; t++) {
        const float *v = v_cache + (table[t / block_size] * block_size + t % block_size) * token_stride + kv_offset;
        for (int64_t c = 0; c < chunks; c++) acc[c] += scores[t] * *(const f16x *)(v + 16 * c);
    }
    const float inv = 1.0f / total;
    for (int64_t c = 0; c < chunks; c++) *(f16x *)(out + 16 * c) = acc[c] * inv;
}

int edgecloud_llama_decode_stack(float *hidden, const StackLayer *layers, int64_t first, int64_t last,
                                const GroupStep *groups, const float *cos, const float *sin, const LlamaShape *shape,
                                const StackHead *head, int num_threads) {
    const int64_t H = shape->hidden, I = shape->intermediate, D = shape->head_dim;
    const int64_t heads = shape->heads, kv_heads = shape->kv_heads, dense = shape->dense;
    if (D % 16 != 0 || D > 256 || kv_heads <= 0 || heads % kv_heads != 0 || H % 32 != 0 || I % 32 != 0 ||
        (heads * D) % 32 != 0)
        return -2;
    const int64_t q_size = heads * D, kv_size = kv_heads * D, qkv_rows = q_size + 2 * kv_size, group = heads / kv_heads;
    int64_t longest = 1;
    for (int64_t l = first; l < last; l++) {
        const int64_t len = *groups[layers[l].group].context_len;
        longest = len > longest ? len : longest;
    }
    const int64_t widest = I > H ? (I > q_size ? I : q_size) : (H > q_size ? H : q_size);
    float *x = (float *)malloc(sizeof(float) * (size_t)(H + qkv_rows + q_size + H + 2 * I + I));
    float *scores = (float *)malloc(sizeof(float) * (size_t)(heads * longest));
    Activations a;
    const int status = activations_alloc(1, widest, &a);
    if (x == NULL || scores == NULL || status != 0) {
        free(x);
        free(scores);
        activations_free(&a);
        return -1;
    }
    float *qkv = x + H, *attn = qkv + qkv_rows, *proj = attn + q_size, *gate_up = proj + H, *act = gate_up + 2 * I;

#pragma omp parallel num_threads(num_threads)
    {
        for (int64_t l = first; l < last; l++) {
            const StackLayer *layer = layers + l;
            const GroupStep *step = groups + layer->group;
            const int64_t len = *step->context_len;
#pragma omp single
            rms_norm(hidden, layer->input_norm, x, H, shape->eps);
            project(layer->weights[0], layer->scales[0], x, &a, qkv, qkv_rows, H, dense);
#pragma omp single
            {
                for (int64_t h = 0; h < heads + kv_heads; h++) rotate(qkv + h * D, cos, sin, D / 2);
                const int64_t slot = *step->slot;
                memcpy(layer->k_cache + slot * kv_size, qkv + q_size, sizeof(float) * (size_t)kv_size);
                memcpy(layer->v_cache + slot * kv_size, qkv + q_size + kv_size, sizeof(float) * (size_t)kv_size);
            }
#pragma omp for schedule(static)
            for (int64_t h = 0; h < heads; h++)
                attend(qkv + h * D, layer->k_cache, layer->v_cache, step->table, len, shape->block_size, kv_size,
                       (h / group) * D, D, shape->scale, scores + h * longest, attn + h * D);
            project(layer->weights[1], layer->scales[1], attn, &a, proj, H, q_size, dense);
#pragma omp single
            {
                for (int64_t i = 0; i < H; i++) hidden[i] += proj[i];
                rms_norm(hidden, layer->post_norm, x, H, shape->eps);
            }
            project(layer->weights[2], layer->scales[2], x, &a, gate_up, 2 * I, H, dense);
#pragma omp single
            for (int64_t i = 0; i < I; i++) {
                const float g = gate_up[i];
                act[i] = g / (1.0f + expf(-g)) * gate_up[I + i];
            }
            project(layer->weights[3], layer->scales[3], act, &a, proj, H, I, dense);
#pragma omp single
            for (int64_t i = 0; i < H; i++) hidden[i] += proj[i];
        }
        if (head != NULL) {
#pragma omp single
            rms_norm(hidden, head->norm, x, H, shape->eps);
            project(head->weights, head->scales, x, &a, head->logits, head->vocab, H, head->dense);
        }
    }
    free(x);
    free(scores);
    activations_free(&a);
    return 0;
}

#else

int edgecloud_llama_decode_stack(float *hidden, const StackLayer *layers, int64_t first, int64_t last,
                                const GroupStep *groups, const float *cos, const float *sin, const LlamaShape *shape,
                                const StackHead *head, int num_threads) {
    (void)hidden, (void)layers, (void)first, (void)last, (void)groups, (void)cos, (void)sin, (void)shape, (void)head,
        (void)num_threads;
    return -3;
}

#endif
