/* tokenleap's CPU kernel for int8 weights (weight-only, one scale per output channel).

   y[m, n] = scale[n] * sum_k w[n, k] x[m, k], x and y fp32, for any number of rows m.

   Why our own: PyTorch's `_weight_int8pack_mm` reads the weight rows one at a time and runs at
   about half the machine's memory bandwidth for one row (a decoding step is a read of every
   weight). Here the weights are packed so that a block of 4 output channels is one contiguous
   stream, [N/4][K/8][4][8] (`native.pack_int8`), and each block is read once for every row of
   x, so one row runs at the memory bandwidth and more rows cost only their multiply-adds.

   Exactness: every output is summed by one thread, in one order (8 lanes along k, then the
   lanes in a fixed tree), whatever the number of rows or threads. So a row gives the same bits
   alone and inside a batch: the methods that verify several rows stay equal to plain decoding.

   The fused entry points also do the step before the matmul (an RMSNorm; SwiGLU's
   silu(gate) * up), one row at a time into `tmp`: on a small model each PyTorch op costs a few
   microseconds however little it computes, and a decoding step is ~600 of them.

   AVX2 and FMA only, so that it runs on every x86 CPU of this decade; built by `native.py`
   with -mavx2 -mfma -fopenmp and loaded into the process that has imported torch, so its
   OpenMP runtime is torch's own (one thread pool, torch.set_num_threads applies). */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

static inline float hsum(__m256 v) {
    __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

/* One block of 4 output channels (wb: its packed weights) over R rows of x. */
#define BLOCK(R)                                                                               \
static void block_4x##R(const float *x, const int8_t *wb, const float *scale, float *y,        \
                        int64_t N, int64_t K, int64_t n) {                                      \
    __m256 acc[4][R];                                                                          \
    for (int j = 0; j < 4; j++)                                                                \
        for (int r = 0; r < R; r++) acc[j][r] = _mm256_setzero_ps();                           \
    for (int64_t k = 0; k < K; k += 8, wb += 32) {                                             \
        _mm_prefetch((const char *)(wb + 512), _MM_HINT_T0);                                   \
        __m256i w4 = _mm256_loadu_si256((const __m256i *)wb);  /* 8 k's of 4 channels */       \
        __m128i lo = _mm256_castsi256_si128(w4), hi = _mm256_extracti128_si256(w4, 1);         \
        __m256 w[4] = {_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo)),                           \
                       _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8))),        \
                       _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi)),                           \
                       _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)))};       \
        for (int r = 0; r < R; r++) {                                                          \
            __m256 xr = _mm256_loadu_ps(x + r * K + k);                                        \
            for (int j = 0; j < 4; j++) acc[j][r] = _mm256_fmadd_ps(w[j], xr, acc[j][r]);      \
        }                                                                                      \
    }                                                                                          \
    for (int j = 0; j < 4; j++)                                                                \
        for (int r = 0; r < R; r++) y[r * N + n + j] = hsum(acc[j][r]) * scale[n + j];          \
}
BLOCK(1)
BLOCK(2)
BLOCK(4)

/* x [M, K], w packed [N/4][K/8][4][8], scale [N], y [M, N]; N % 4 == 0 and K % 8 == 0. */
void tokenleap_int8_linear(const float *x, const int8_t *w, const float *scale, float *y,
                           int64_t M, int64_t N, int64_t K) {
    #pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n += 4) {
        const int8_t *wb = w + n * K;
        int64_t m = 0;
        for (; m + 4 <= M; m += 4) block_4x4(x + m * K, wb, scale, y + m * N, N, K, n);
        for (; m + 2 <= M; m += 2) block_4x2(x + m * K, wb, scale, y + m * N, N, K, n);
        if (m < M) block_4x1(x + m * K, wb, scale, y + m * N, N, K, n);
    }
}

/* tmp[m] = norm_w * (x[m] / sqrt(mean(x[m]^2) + eps)), each row summed in one fixed order. */
static void rms_norm_rows(const float *x, const float *norm_w, float eps, float *tmp, int64_t M, int64_t K) {
    for (int64_t m = 0; m < M; m++) {
        const float *xm = x + m * K;
        __m256 acc = _mm256_setzero_ps();
        for (int64_t k = 0; k < K; k += 8) {
            __m256 v = _mm256_loadu_ps(xm + k);
            acc = _mm256_fmadd_ps(v, v, acc);
        }
        __m256 r = _mm256_set1_ps(1.0f / sqrtf(hsum(acc) / (float)K + eps));
        for (int64_t k = 0; k < K; k += 8)
            _mm256_storeu_ps(tmp + m * K + k,
                             _mm256_mul_ps(_mm256_loadu_ps(norm_w + k), _mm256_mul_ps(_mm256_loadu_ps(xm + k), r)));
    }
}

/* The RMSNorm of x's rows, then the int8 matmul: tmp is [M, K]. */
void tokenleap_int8_rms_norm_linear(const float *x, const float *norm_w, float eps, const int8_t *w,
                                    const float *scale, float *y, float *tmp, int64_t M, int64_t N, int64_t K) {
    rms_norm_rows(x, norm_w, eps, tmp, M, K);
    tokenleap_int8_linear(tmp, w, scale, y, M, N, K);
}

/* gate_up [M, 2K] (gate, then up) -> tmp = silu(gate) * up [M, K], then the int8 matmul. */
void tokenleap_int8_swiglu_linear(const float *gate_up, const int8_t *w, const float *scale, float *y,
                                  float *tmp, int64_t M, int64_t N, int64_t K) {
    for (int64_t m = 0; m < M; m++)
        for (int64_t k = 0; k < K; k++) {
            float g = gate_up[m * 2 * K + k], u = gate_up[m * 2 * K + K + k];
            tmp[m * K + k] = g / (1.0f + expf(-g)) * u;
        }
    tokenleap_int8_linear(tmp, w, scale, y, M, N, K);
}
