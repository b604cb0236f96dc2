/* y = x @ W^T with W in llama.cpp's Q4_1 groups, on a CPU, activations and output in float32.
 *
 * W has N rows of K inputs in groups of 32: per group an fp16 scale d, an fp16 minimum m and 32
 * four-bit codes q (w = d * q + m). Per output, with s_g the sum of the group's 32 inputs:
 *
 *     y[n] = sum_g ( d_g * sum_j q_gj x_gj  +  m_g * s_g )
 *
 * The weights are read once per call at 5 bits each and unpacked in registers. Two ways to form
 * sum_j q_gj x_gj, chosen when the library is built (edgecloud_q4_1_activation_bits says which):
 *
 *   8  (AVX-512 VNNI): the activations of each group are rounded to int8 with their own scale
 *      dx_g = max|x_g| / 127 (as llama.cpp does with its Q8 activations), and the 4-bit codes are
 *      multiplied with them in integers (vpdpbusd: 64 multiply-adds an instruction), four groups
 *      at a time; d_g * dx_g scales the integer sums. s_g stays the exact float32 sum (added as
 *      m_g * s_g / 4 in each of the group's four lanes, so one reduction ends an output).
 *   32 (elsewhere): the codes are converted to float32 and multiplied with x in float32: the
 *      dequantized fp32 product to float32 rounding.
 *
 * Layouts (contiguous):
 *   x      [M, K] float32, y [M, N] float32
 *   codes  [N, K / 32, 16] uint8: byte j of a group holds element j (low nibble) and j + 16 (high)
 *   scales [N, 2, K / 32] fp16 (IEEE half bits as uint16): a row's d for every group, then its m
 * Returns 0, -1 if scratch could not be allocated, -2 for a K that is not a positive multiple of 32.
 *
 * Rows of W are split between the threads in blocks of 4; each block's bytes are requested AHEAD
 * blocks before they are used, as they stream from memory once per call, and each block is unpacked
 * once for every tile of up to 4 activation rows (4 x 4 accumulators). Against torch's bf16 int4
 * kernel on this project's EPYC (2 threads): 0.6-0.8x its time at 1-4 rows, parity at 8-64. Built by edgecloud.llm.attention.cpu_kernels with -O3
 * -march=native -fopenmp (it shares torch's OpenMP pool).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef AHEAD
#define AHEAD 8 /* blocks of 4 weight rows requested ahead of the one being multiplied (4: 1.3x slower, 16, 32: no faster) */
#endif

/* Request the bytes of the block of weight rows starting at row n (if there is one). */
static inline void prefetch_block(const uint8_t *codes, const uint16_t *scales, int64_t n, int64_t N, int64_t G) {
    if (n >= N) return;
    const uint8_t *c = codes + n * 16 * G, *s = (const uint8_t *)(scales + n * 2 * G);
    const int64_t rows = N - n < 4 ? N - n : 4;
    for (int64_t i = 0; i < rows * 16 * G; i += 64) __builtin_prefetch(c + i, 0, 0);
    for (int64_t i = 0; i < rows * 4 * G; i += 64) __builtin_prefetch(s + i, 0, 0);
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#include <immintrin.h>

int edgecloud_q4_1_activation_bits(void) { return 8; }

/* A chunk is 4 groups: its activations as the codes' nibbles line up, the low nibbles' elements
 * (0..15 of each group) in the first 64 bytes and the high nibbles' (16..31) in the next 64. */
typedef struct {
    int8_t *q;    /* [M, chunks, 128] */
    float *scale; /* [M, chunks, 16]: dx of group i of the chunk in lanes 4i..4i+3 (vpdpbusd's lanes) */
    float *sum;   /* [M, chunks, 16]: s_g / 4 of group i of the chunk in lanes 4i..4i+3, 0 past the last group */
} Activations;

/* Scratch for M rows of K activations (free with activations_free). */
static int activations_alloc(int64_t M, int64_t K, Activations *a) {
    const int64_t chunks = (K / 32 + 3) / 4;
    a->q = (int8_t *)aligned_alloc(64, (size_t)(M * chunks * 128));
    a->scale = (float *)aligned_alloc(64, sizeof(float) * (size_t)(M * chunks * 16));
    a->sum = (float *)aligned_alloc(64, sizeof(float) * (size_t)(M * chunks * 16));
    return a->q == NULL || a->scale == NULL || a->sum == NULL ? -1 : 0;
}

static void activations_free(Activations *a) {
    free(a->q);
    free(a->scale);
    free(a->sum);
}

/* Rounds M rows of K activations to int8 groups (scratch from activations_alloc with K or more). */
static void quantize_activations(const float *x, int64_t M, int64_t K, Activations *a) {
    const int64_t G = K / 32, chunks = (G + 3) / 4;
    for (int64_t r = 0; r < M; r++)
        for (int64_t g = 0; g < chunks * 4; g++) {
            int8_t *q = a->q + (r * chunks + g / 4) * 128 + (g % 4) * 16;
            float *scale = a->scale + (r * chunks + g / 4) * 16 + (g % 4) * 4;
            if (g >= G) {
                memset(q, 0, 16);
                memset(q + 64, 0, 16);
                for (int i = 0; i < 4; i++) scale[i] = 0.0f;
                for (int i = 0; i < 4; i++) a->sum[(r * chunks + g / 4) * 16 + (g % 4) * 4 + i] = 0.0f;
                continue;
            }
            const float *xg = x + r * K + 32 * g;
            float amax = 0.0f, sum = 0.0f;
            for (int j = 0; j < 32; j++) {
                const float v = xg[j] < 0 ? -xg[j] : xg[j];
                amax = v > amax ? v : amax;
                sum += xg[j];
            }
            const float dx = amax / 127.0f;
            float inv = dx > 0.0f ? 1.0f / dx : 0.0f;
            if (!(inv <= 3.0e38f)) inv = 0.0f; /* a group of values below ~4e-37: 1/dx overflows; call it zero */
            for (int j = 0; j < 32; j++) {
                const float v = __builtin_nearbyintf(xg[j] * inv); /* half to even, as torch.round */
                q[j < 16 ? j : 64 + j - 16] = (int8_t)(v != v ? 0.0f : v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v);
            }
            for (int i = 0; i < 4; i++) scale[i] = dx;
            for (int i = 0; i < 4; i++) a->sum[(r * chunks + g / 4) * 16 + (g % 4) * 4 + i] = 0.25f * sum;
        }
}

/* W rows of the weights (W <= 4) against R activation rows r0.. (R <= 4): a tile of W x R outputs,
 * out[r * N + w]. Each weight chunk is unpacked once for the R rows; W x R accumulators. */
static inline __attribute__((always_inline)) void tile_int8(const uint8_t *codes, const uint16_t *scales,
                                                            const Activations *a, int64_t r0, int64_t G, float *out,
                                                            int64_t N, const int W, const int R) {
    const int64_t chunks = (G + 3) / 4, tail = G - 4 * (chunks - 1);
    const __mmask64 tail_bytes = tail == 4 ? ~(__mmask64)0 : (((__mmask64)1 << (16 * tail)) - 1);
    const __mmask8 tail_scales = (__mmask8)((1u << tail) - 1);
    const __m512i nibble = _mm512_set1_epi8(0x0F);
    const __m512i lanes = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    __m512 acc[4][4];
    for (int w = 0; w < W; w++)
        for (int r = 0; r < R; r++) acc[w][r] = _mm512_setzero_ps();
    for (int64_t c = 0; c < chunks; c++) {
        const __mmask64 bytes = c == chunks - 1 ? tail_bytes : ~(__mmask64)0;
        const __mmask8 four = c == chunks - 1 ? tail_scales : 0x0F;
        __m512i lo[4], hi[4];
        __m512 d16[4], m16[4];
        for (int w = 0; w < W; w++) {
            const __m512i raw = _mm512_maskz_loadu_epi8(bytes, codes + w * 16 * G + 64 * c);
            lo[w] = _mm512_and_si512(raw, nibble);
            hi[w] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), nibble);
            const __m128 d = _mm_cvtph_ps(_mm_maskz_loadu_epi16(four, scales + w * 2 * G + 4 * c));
            d16[w] = _mm512_permutexvar_ps(lanes, _mm512_castps128_ps512(d));
            const __m128 m = _mm_cvtph_ps(_mm_maskz_loadu_epi16(four, scales + w * 2 * G + G + 4 * c));
            m16[w] = _mm512_permutexvar_ps(lanes, _mm512_castps128_ps512(m));
        }
        for (int r = 0; r < R; r++) {
            const int8_t *q = a->q + ((r0 + r) * chunks + c) * 128;
            const __m512i x_lo = _mm512_load_si512(q), x_hi = _mm512_load_si512(q + 64);
            const __m512 x_scale = _mm512_load_ps(a->scale + ((r0 + r) * chunks + c) * 16);
            const __m512 x_sum = _mm512_load_ps(a->sum + ((r0 + r) * chunks + c) * 16); /* s_g / 4, 4 lanes a group */
            for (int w = 0; w < W; w++) {
                const __m512i dot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo[w], x_lo), hi[w], x_hi);
                acc[w][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(d16[w], x_scale), acc[w][r]);
                acc[w][r] = _mm512_fmadd_ps(m16[w], x_sum, acc[w][r]); /* + m_g * s_g over the group's 4 lanes */
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int w = 0; w < W; w++) out[r * N + w] = _mm512_reduce_add_ps(acc[w][r]);
}

/* Weight rows n.. (W of them) against activation rows r0.. (R of them, 1-4), W and R made constants. */
static inline void tile_any(const uint8_t *codes, const uint16_t *scales, const Activations *a, int64_t r0, int64_t R,
                            int64_t G, float *out, int64_t N, int64_t W) {
    if (W == 4) {
        switch (R) {
        case 4: tile_int8(codes, scales, a, r0, G, out, N, 4, 4); break;
        case 3: tile_int8(codes, scales, a, r0, G, out, N, 4, 3); break;
        case 2: tile_int8(codes, scales, a, r0, G, out, N, 4, 2); break;
        default: tile_int8(codes, scales, a, r0, G, out, N, 4, 1); break;
        }
        return;
    }
    for (int64_t w = 0; w < W; w++)
        for (int64_t r = 0; r < R; r++)
            tile_int8(codes + w * 16 * G, scales + w * 2 * G, a, r0 + r, G, out + r * N + w, N, 1, 1);
}

/* y[M, N] = the M quantized activation rows times W; the rows of W are shared out between the
 * threads of the enclosing parallel region (an orphaned `omp for`: every thread must call it). Each
 * block of 4 weight rows stays in L1 while tiles of 4 activation rows pass over it. */
static void q4_1_rows(const uint8_t *codes, const uint16_t *scales, const Activations *a, float *y, int64_t M,
                      int64_t N, int64_t G) {
    const int64_t blocks = (N + 3) / 4;
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; b++) {
        const int64_t n = 4 * b;
        prefetch_block(codes, scales, n + 4 * AHEAD, N, G);
        for (int64_t r0 = 0; r0 < M; r0 += 4)
            tile_any(codes + n * 16 * G, scales + n * 2 * G, a, r0, M - r0 < 4 ? M - r0 : 4, G, y + r0 * N + n, N,
                     N - n < 4 ? N - n : 4);
    }
}

int edgecloud_q4_1_matmul_f32(const float *x, const uint8_t *codes, const uint16_t *scales, float *y, int64_t M,
                              int64_t N, int64_t K, int num_threads) {
    if (K % 32 != 0 || K <= 0) return -2;
    Activations a;
    const int status = activations_alloc(M, K, &a);
    if (status == 0) {
        quantize_activations(x, M, K, &a);
#pragma omp parallel num_threads(num_threads)
        q4_1_rows(codes, scales, &a, y, M, N, K / 32);
    }
    activations_free(&a);
    return status;
}

#else /* float32 activations */

typedef float v16 __attribute__((vector_size(64), aligned(4)));

int edgecloud_q4_1_activation_bits(void) { return 32; }

#ifdef __FLT16_MAX__
static inline float half_to_float(uint16_t h) {
    _Float16 f;
    memcpy(&f, &h, sizeof f);
    return (float)f;
}
#else
static inline float half_to_float(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ffu, bits;
    if (exponent == 0x1f) {
        bits = sign | 0x7f800000u | (mantissa << 13); /* inf, nan */
    } else if (exponent != 0) {
        bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
    } else if (mantissa == 0) {
        bits = sign;
    } else { /* subnormal: normalise */
        exponent = 113;
        while (!(mantissa & 0x400u)) {
            mantissa <<= 1;
            exponent--;
        }
        bits = sign | (exponent << 23) | ((mantissa & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}
#endif

static inline float hsum(v16 v) {
    float s = 0.0f;
    for (int i = 0; i < 16; i++) s += v[i];
    return s;
}

static inline v16 load16(const float *p) {
    v16 v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void unpack(const uint8_t *codes, v16 *lo, v16 *hi) {
    for (int i = 0; i < 16; i++) {
        (*lo)[i] = (float)(codes[i] & 15);
        (*hi)[i] = (float)(codes[i] >> 4);
    }
}

/* One weight row against activation row x. */
static float row_f32(const uint8_t *codes, const uint16_t *scales, const float *x, const float *sum, int64_t G) {
    v16 acc = {0};
    float offset = 0.0f;
    for (int64_t g = 0; g < G; g++) {
        v16 lo, hi;
        unpack(codes + 16 * g, &lo, &hi);
        acc += (lo * load16(x + 32 * g) + hi * load16(x + 32 * g + 16)) * half_to_float(scales[g]);
        offset += half_to_float(scales[G + g]) * sum[g];
    }
    return hsum(acc) + offset;
}

int edgecloud_q4_1_matmul_f32(const float *x, const uint8_t *codes, const uint16_t *scales, float *y, int64_t M,
                              int64_t N, int64_t K, int num_threads) {
    if (K % 32 != 0 || K <= 0) return -2;
    const int64_t G = K / 32, blocks = (N + 3) / 4;
    float *sum = (float *)malloc(sizeof(float) * (size_t)(M * G));
    if (sum == NULL) return -1;
    for (int64_t r = 0; r < M; r++)
        for (int64_t g = 0; g < G; g++) {
            float s = 0.0f;
            for (int j = 0; j < 32; j++) s += x[r * K + 32 * g + j];
            sum[r * G + g] = s;
        }
#pragma omp parallel for num_threads(num_threads) schedule(static)
    for (int64_t b = 0; b < blocks; b++) {
        prefetch_block(codes, scales, 4 * b + 4 * AHEAD, N, G);
        for (int64_t n = 4 * b; n < N && n < 4 * b + 4; n++)
            for (int64_t r = 0; r < M; r++)
                y[r * N + n] = row_f32(codes + n * 16 * G, scales + n * 2 * G, x + r * K, sum + r * G, G);
    }
    free(sum);
    return 0;
}
#endif
