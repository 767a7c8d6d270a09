// Matrix-vector products for decoding on a CPU, as an XLA FFI custom call.
//
// At one token per row a decode step is a chain of products y[M, N] = x[M, K] @ W whose cost is
// reading W once from memory. XLA's CPU dot reads float32 weights at about half the memory
// bandwidth of this machine class and reads int8, float16 and bfloat16 weights slower than
// float32 (it widens the whole matrix before multiplying). This kernel streams W once, widens
// eight weights at a time in registers, and splits the output columns (or rows) across XLA's own
// intra-op thread pool, so it never competes with XLA for cores.
//
//   x      [M, K]  float32, bfloat16 or float16 (small M: the batch at decode)
//   w      [K, N]  float32, bfloat16, float16 or int8; [N, K] when `transposed` is 1 (a tied
//                  embedding table [vocabulary, hidden] read as the output projection)
//   scale  [N]     float32 multiplier per output (int8 weights), or [0] for none
//   y      [M, N]  float32, bfloat16 or float16: float32 accumulation, rounded once at the end
//
// int8 weights stored [N, K] are multiplied in integers: x is quantized to int8 per row first
// (absolute maximum to 127, as Keras' int8 Dense quantizes its inputs), so each step multiplies
// 32 weights. int8 weights stored [K, N] are widened to float32 instead (x stays exact).
//
// A prompt (more than 8 rows) times weights stored [K, N] is a GEMM (see "prompts" below); with
// bfloat16 rows and weights on a CPU with AMX it runs on the tile registers.
//
// Built by kerasllm_widget/kernels/cpu.py with the machine's C++ compiler on first use, for the
// machine's own instruction set (-march=native): AVX2, AVX-512 (16 lanes) and AMX paths are
// compiled where the CPU has them, a portable loop elsewhere.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define KLW_AVX2 1
#endif
// AVX-512 paths (16 lanes) where the compiler targets them (-march=native on such a CPU); the
// AVX2 paths stay for every other x86 CPU.
#if defined(KLW_AVX2) && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define KLW_AVX512 1
#endif

// AMX tiles (Sapphire Rapids and later): a prompt's bfloat16 rows times bfloat16 weights.
#if defined(KLW_AVX512) && defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__linux__)
#define KLW_AMX 1
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kMaxRowsPerPass = 8;  // rows of x per pass over W
constexpr int64_t kMaxTileFloats = 16384;  // partial sums per task ([K, N] layout): in L2
constexpr int64_t kMaxChunkRows = 256;  // outputs per task ([N, K] layout)
// Tasks per thread: a helper thread that wakes late still finds work, and the caller is never
// left waiting on one large task (decode steps are a few hundred microseconds each).
constexpr int64_t kTasksPerThread = 4;
// [N, K] layout: rows of W are read in memory order with a software prefetch this far ahead
// (the hardware prefetcher alone reads ~20% slower from memory on Zen 3).
constexpr int64_t kPrefetchBytes = 4096;

// ---------------------------------------------------------------------------- element types

inline float half_to_float(uint16_t h) {
#ifdef KLW_AVX2
  return _cvtsh_ss(h);
#else
  const uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int e = -1;
      uint32_t m = mant;
      do { ++e; m <<= 1; } while ((m & 0x400) == 0);
      bits = sign | ((112 - e) << 23) | ((m & 0x3ff) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
#endif
}

inline uint16_t float_to_half(float f) {
#ifdef KLW_AVX2
  return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
#else
  // Round to nearest even through float arithmetic is long; this path is only taken on CPUs
  // without F16C, where a plain truncating conversion of the final output is acceptable.
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  int32_t exp = static_cast<int32_t>((x >> 23) & 0xff) - 127 + 15;
  const uint32_t mant = x & 0x7fffffu;
  if (((x >> 23) & 0xff) == 0xff) return static_cast<uint16_t>(sign | 0x7c00u | (mant ? 0x200u : 0));
  if (exp >= 31) return static_cast<uint16_t>(sign | 0x7c00u);
  if (exp <= 0) return static_cast<uint16_t>(sign);
  return static_cast<uint16_t>(sign | (exp << 10) | (mant >> 13));
#endif
}

inline float bf16_to_float(uint16_t b) {
  const uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t float_to_bf16(float f) {  // round to nearest even, NaN kept quiet
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if (std::isnan(f)) return static_cast<uint16_t>((x >> 16) | 0x40);
  x += 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(x >> 16);
}

struct F32 {
  using T = float;
  static float one(const T* p) { return *p; }
#ifdef KLW_AVX2
  static __m256 eight(const T* p) { return _mm256_loadu_ps(p); }
#endif
#ifdef KLW_AVX512
  static __m512 sixteen(const T* p) { return _mm512_loadu_ps(p); }
#endif
};
struct F16 {
  using T = uint16_t;
  static float one(const T* p) { return half_to_float(*p); }
#ifdef KLW_AVX2
  static __m256 eight(const T* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
#endif
#ifdef KLW_AVX512
  static __m512 sixteen(const T* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
#endif
};
struct BF16 {
  using T = uint16_t;
  static float one(const T* p) { return bf16_to_float(*p); }
#ifdef KLW_AVX2
  static __m256 eight(const T* p) {
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
#endif
#ifdef KLW_AVX512
  static __m512 sixteen(const T* p) {
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
  }
#endif
};
struct I8 {
  using T = int8_t;
  static float one(const T* p) { return static_cast<float>(*p); }
#ifdef KLW_AVX2
  static __m256 eight(const T* p) {
    const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
  }
#endif
#ifdef KLW_AVX512
  static __m512 sixteen(const T* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
#endif
};

// Element `index` of a float32, bfloat16 or float16 buffer, read or written as float32.
inline float load(const void* data, ffi::DataType type, int64_t index) {
  switch (type) {
    case ffi::DataType::F32: return static_cast<const float*>(data)[index];
    case ffi::DataType::BF16: return bf16_to_float(static_cast<const uint16_t*>(data)[index]);
    default: return half_to_float(static_cast<const uint16_t*>(data)[index]);
  }
}

inline void store(void* data, ffi::DataType type, int64_t index, float v) {
  switch (type) {
    case ffi::DataType::F32: static_cast<float*>(data)[index] = v; break;
    case ffi::DataType::BF16: static_cast<uint16_t*>(data)[index] = float_to_bf16(v); break;
    default: static_cast<uint16_t*>(data)[index] = float_to_half(v); break;
  }
}

#ifdef KLW_AVX2
inline float horizontal_sum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}
#endif

// ---------------------------------------------------------------------------- the products

// acc[m, 0:n1-n0] += x[m, k0:k1] @ W[k0:k1, n0:n1] for m in [0, rows), W stored [K, N]: four
// rows of W per pass, each read start to end (whole rows when the tile is all of N), so the
// weights stream through memory in order. `acc` rows are `stride` floats apart.
template <typename W>
void columns_kn(const float* x, int64_t rows, int64_t K, const typename W::T* w, int64_t N,
                int64_t k0, int64_t k1, int64_t n0, int64_t n1, float* acc, int64_t stride) {
  const int64_t width = n1 - n0;
  for (int64_t m = 0; m < rows; ++m) std::fill(acc + m * stride, acc + m * stride + width, 0.0f);
  int64_t k = k0;
#ifdef KLW_AVX2
  const int64_t row_bytes = N * static_cast<int64_t>(sizeof(typename W::T));
  // The next four rows of W, from column j on, on the first row of x.
  auto prefetch_next = [&](const typename W::T* w0, int64_t j) {
    if (((j * sizeof(typename W::T)) & 63) == 0) {
      const char* next = reinterpret_cast<const char*>(w0 + 4 * N + j);
      _mm_prefetch(next, _MM_HINT_T0);
      _mm_prefetch(next + row_bytes, _MM_HINT_T0);
      _mm_prefetch(next + 2 * row_bytes, _MM_HINT_T0);
      _mm_prefetch(next + 3 * row_bytes, _MM_HINT_T0);
    }
  };
  for (; k + 4 <= k1; k += 4) {
    const typename W::T* w0 = w + k * N + n0;
    for (int64_t m = 0; m < rows; ++m) {
      const float* xm = x + m * K + k;
      float* a = acc + m * stride;
      int64_t j = 0;
#ifdef KLW_AVX512
      const __m512 y0 = _mm512_set1_ps(xm[0]), y1 = _mm512_set1_ps(xm[1]);
      const __m512 y2 = _mm512_set1_ps(xm[2]), y3 = _mm512_set1_ps(xm[3]);
      for (; j + 16 <= width; j += 16) {
        if (m == 0) prefetch_next(w0, j);
        __m512 s = _mm512_loadu_ps(a + j);
        s = _mm512_fmadd_ps(W::sixteen(w0 + j), y0, s);
        s = _mm512_fmadd_ps(W::sixteen(w0 + N + j), y1, s);
        s = _mm512_fmadd_ps(W::sixteen(w0 + 2 * N + j), y2, s);
        s = _mm512_fmadd_ps(W::sixteen(w0 + 3 * N + j), y3, s);
        _mm512_storeu_ps(a + j, s);
      }
#endif
      const __m256 x0 = _mm256_set1_ps(xm[0]), x1 = _mm256_set1_ps(xm[1]);
      const __m256 x2 = _mm256_set1_ps(xm[2]), x3 = _mm256_set1_ps(xm[3]);
      for (; j + 8 <= width; j += 8) {
        if (m == 0) prefetch_next(w0, j);
        __m256 s = _mm256_loadu_ps(a + j);
        s = _mm256_fmadd_ps(W::eight(w0 + j), x0, s);
        s = _mm256_fmadd_ps(W::eight(w0 + N + j), x1, s);
        s = _mm256_fmadd_ps(W::eight(w0 + 2 * N + j), x2, s);
        s = _mm256_fmadd_ps(W::eight(w0 + 3 * N + j), x3, s);
        _mm256_storeu_ps(a + j, s);
      }
      for (; j < width; ++j) {
        a[j] += W::one(w0 + j) * xm[0] + W::one(w0 + N + j) * xm[1] +
                W::one(w0 + 2 * N + j) * xm[2] + W::one(w0 + 3 * N + j) * xm[3];
      }
    }
  }
#endif
  for (; k < k1; ++k) {
    const typename W::T* wk = w + k * N + n0;
    for (int64_t m = 0; m < rows; ++m) {
      const float xk = x[m * K + k];
      float* a = acc + m * stride;
      for (int64_t j = 0; j < width; ++j) a[j] += W::one(wk + j) * xk;
    }
  }
}

// y[m, n] for n in [n0, n1) and W stored [N, K]: a dot product per output, the rows of W in
// memory order (one sequential stream: four rows side by side read ~30% slower from memory on
// Zen 3), each row read from memory once and from L1 for the other rows of x.
template <typename W>
void rows_nk(const float* x, int64_t rows, int64_t K, const typename W::T* w, int64_t n0,
             int64_t n1, float* out /* [rows, n1 - n0] */) {
  const int64_t width = n1 - n0;
  for (int64_t n = n0; n < n1; ++n) {
    const typename W::T* r = w + n * K;
    for (int64_t m = 0; m < rows; ++m) {
      const float* xm = x + m * K;
      int64_t k = 0;
      float total = 0.0f;
#ifdef KLW_AVX512
      __m512 z0 = _mm512_setzero_ps(), z1 = _mm512_setzero_ps();
      for (; k + 32 <= K; k += 32) {
        if (m == 0 && ((k * sizeof(typename W::T)) & 63) == 0) {
          _mm_prefetch(reinterpret_cast<const char*>(r + k) + kPrefetchBytes, _MM_HINT_T0);
        }
        z0 = _mm512_fmadd_ps(W::sixteen(r + k), _mm512_loadu_ps(xm + k), z0);
        z1 = _mm512_fmadd_ps(W::sixteen(r + k + 16), _mm512_loadu_ps(xm + k + 16), z1);
      }
      total = _mm512_reduce_add_ps(_mm512_add_ps(z0, z1));
#endif
#ifdef KLW_AVX2
      __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
      for (; k + 16 <= K; k += 16) {
        if (m == 0 && ((k * sizeof(typename W::T)) & 63) == 0) {
          _mm_prefetch(reinterpret_cast<const char*>(r + k) + kPrefetchBytes, _MM_HINT_T0);
        }
        s0 = _mm256_fmadd_ps(W::eight(r + k), _mm256_loadu_ps(xm + k), s0);
        s1 = _mm256_fmadd_ps(W::eight(r + k + 8), _mm256_loadu_ps(xm + k + 8), s1);
      }
      total += horizontal_sum(_mm256_add_ps(s0, s1));
#endif
      for (; k < K; ++k) total += W::one(r + k) * xm[k];
      out[m * width + (n - n0)] = total;
    }
  }
}

// int8 weights stored [N, K] times x quantized to int8 per row (`xq`, scale `xs`), as Keras'
// int8 Dense quantizes its inputs: integer dot products, 32 weights per step (unsigned |w| times
// x with w's sign, pairs added into int16 without overflow: 2 * 128 * 127 < 2^15, then int32).
// out[m, n - n0] = xs[m] * sum_k xq[m, k] * w[n, k].
void rows_nk_q8(const int8_t* xq, const float* xs, int64_t rows, int64_t K, const int8_t* w,
                int64_t n0, int64_t n1, float* out) {
  const int64_t width = n1 - n0;
  for (int64_t n = n0; n < n1; ++n) {
    const int8_t* r = w + n * K;
    for (int64_t m = 0; m < rows; ++m) {
      const int8_t* xm = xq + m * K;
      int64_t k = 0;
      int32_t total = 0;
#if defined(KLW_AVX512) && defined(__AVX512VNNI__)
      // VPDPBUSD: 64 unsigned |w| times x with w's sign, four at a time into int32 lanes.
      __m512i z0 = _mm512_setzero_si512(), z1 = _mm512_setzero_si512();
      const __m512i zero = _mm512_setzero_si512();
      for (; k + 128 <= K; k += 128) {
        if (m == 0) {
          _mm_prefetch(reinterpret_cast<const char*>(r + k) + kPrefetchBytes, _MM_HINT_T0);
          _mm_prefetch(reinterpret_cast<const char*>(r + k) + kPrefetchBytes + 64, _MM_HINT_T0);
        }
        const __m512i w0 = _mm512_loadu_si512(r + k), w1 = _mm512_loadu_si512(r + k + 64);
        const __m512i x0 = _mm512_loadu_si512(xm + k), x1 = _mm512_loadu_si512(xm + k + 64);
        z0 = _mm512_dpbusd_epi32(
            z0, _mm512_abs_epi8(w0), _mm512_mask_sub_epi8(x0, _mm512_movepi8_mask(w0), zero, x0));
        z1 = _mm512_dpbusd_epi32(
            z1, _mm512_abs_epi8(w1), _mm512_mask_sub_epi8(x1, _mm512_movepi8_mask(w1), zero, x1));
      }
      total = _mm512_reduce_add_epi32(_mm512_add_epi32(z0, z1));
#endif
#ifdef KLW_AVX2
      const __m256i ones = _mm256_set1_epi16(1);
      __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
      for (; k + 64 <= K; k += 64) {
        if (m == 0) {
          _mm_prefetch(reinterpret_cast<const char*>(r + k) + kPrefetchBytes, _MM_HINT_T0);
        }
        const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(r + k));
        const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(r + k + 32));
        const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xm + k));
        const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xm + k + 32));
        s0 = _mm256_add_epi32(s0, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(w0, w0),
                                                                         _mm256_sign_epi8(x0, w0)),
                                                    ones));
        s1 = _mm256_add_epi32(s1, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(w1, w1),
                                                                         _mm256_sign_epi8(x1, w1)),
                                                    ones));
      }
      for (; k + 32 <= K; k += 32) {
        const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(r + k));
        const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xm + k));
        s0 = _mm256_add_epi32(s0, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(w0, w0),
                                                                         _mm256_sign_epi8(x0, w0)),
                                                    ones));
      }
      const __m256i s = _mm256_add_epi32(s0, s1);
      const __m128i h = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
      const __m128i q = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0x4e));
      total += _mm_cvtsi128_si32(_mm_add_epi32(q, _mm_shuffle_epi32(q, 0xb1)));
#endif
      for (; k < K; ++k) total += int32_t{r[k]} * xm[k];
      out[m * width + (n - n0)] = xs[m] * static_cast<float>(total);
    }
  }
}

// ---------------------------------------------------------------------------- the call

// One product, split into tasks that threads claim in turn. [K, N]: the rows of W in
// `row_blocks` contiguous blocks (one per thread) times column tiles, each task adding into its
// block's partial sums, which the caller adds up at the end. [N, K]: blocks of output rows.
struct Job {
  const float* x;  // [M, K] float32
  int64_t M, K, N;
  const void* w;
  ffi::DataType w_type;
  bool transposed;
  int64_t tasks;
  int64_t row_blocks, tile;  // [K, N]
  int64_t chunk_rows;  // [N, K]
  float* partial = nullptr;  // [K, N]: [row_blocks, M, N], the calling thread's scratch
  // [N, K]: outputs go straight to y. int8 weights there use x quantized per row.
  bool q8 = false;
  std::vector<int8_t> xq;
  std::vector<float> xs;
  const float* scale;  // [N] or null
  void* y;
  ffi::DataType y_type;
  std::atomic<int64_t> next{0}, done{0};
};

template <typename W>
void run_task_typed(Job& job, int64_t t, std::vector<float>& scratch) {
  const auto* w = static_cast<const typename W::T*>(job.w);
  if (!job.transposed) {
    const int64_t block = t % job.row_blocks, tile = t / job.row_blocks;
    // Row blocks in multiples of 4 rows (the unrolled step).
    const int64_t per_block = ((job.K + job.row_blocks - 1) / job.row_blocks + 3) / 4 * 4;
    const int64_t k0 = std::min(job.K, block * per_block);
    const int64_t k1 = std::min(job.K, k0 + per_block);
    const int64_t n0 = tile * job.tile, n1 = std::min(job.N, n0 + job.tile);
    float* acc = job.partial + block * job.M * job.N + n0;
    for (int64_t m0 = 0; m0 < job.M; m0 += kMaxRowsPerPass) {
      const int64_t rows = std::min(kMaxRowsPerPass, job.M - m0);
      columns_kn<W>(job.x + m0 * job.K, rows, job.K, w, job.N, k0, k1, n0, n1,
                    acc + m0 * job.N, job.N);
    }
    return;
  }
  const int64_t n0 = t * job.chunk_rows, n1 = std::min(job.N, n0 + job.chunk_rows);
  const int64_t width = n1 - n0;
  if (static_cast<int64_t>(scratch.size()) < kMaxRowsPerPass * width) {
    scratch.resize(kMaxRowsPerPass * width);
  }
  for (int64_t m0 = 0; m0 < job.M; m0 += kMaxRowsPerPass) {
    const int64_t rows = std::min(kMaxRowsPerPass, job.M - m0);
    if constexpr (std::is_same_v<W, I8>) {
      if (job.q8) {
        rows_nk_q8(job.xq.data() + m0 * job.K, job.xs.data() + m0, rows, job.K, w, n0, n1,
                   scratch.data());
      } else {
        rows_nk<W>(job.x + m0 * job.K, rows, job.K, w, n0, n1, scratch.data());
      }
    } else {
      rows_nk<W>(job.x + m0 * job.K, rows, job.K, w, n0, n1, scratch.data());
    }
    for (int64_t m = 0; m < rows; ++m) {
      for (int64_t j = 0; j < width; ++j) {
        const float v = scratch[m * width + j];
        store(job.y, job.y_type, (m0 + m) * job.N + n0 + j,
              job.scale ? v * job.scale[n0 + j] : v);
      }
    }
  }
}

void run_task(Job& job, int64_t t, std::vector<float>& scratch) {
  switch (job.w_type) {
    case ffi::DataType::F32: run_task_typed<F32>(job, t, scratch); break;
    case ffi::DataType::F16: run_task_typed<F16>(job, t, scratch); break;
    case ffi::DataType::BF16: run_task_typed<BF16>(job, t, scratch); break;
    default: run_task_typed<I8>(job, t, scratch); break;
  }
}

void run(Job& job, int64_t t) {
  thread_local std::vector<float> scratch;
  run_task(job, t, scratch);
}

// Tasks [0, tasks) of `job` (`run(*job, t)` each), claimed in turn by the calling thread and
// `helpers` threads of XLA's pool; returns when all are done. A helper that starts late finds
// none left and returns without touching the buffers (the job outlives it through the shared
// pointer).
template <typename J>
void run_tasks(ffi::ThreadPool& pool, const std::shared_ptr<J>& job, int64_t tasks,
               int64_t helpers) {
  auto work = [job, tasks] {
    for (int64_t t = job->next.fetch_add(1); t < tasks; t = job->next.fetch_add(1)) {
      run(*job, t);
      job->done.fetch_add(1, std::memory_order_release);
    }
  };
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([work] { work(); });
  work();
  while (job->done.load(std::memory_order_acquire) < tasks) {
#ifdef KLW_AVX2
    _mm_pause();
#endif
  }
}

bool is_float(ffi::DataType t) {
  return t == ffi::DataType::F32 || t == ffi::DataType::BF16 || t == ffi::DataType::F16;
}

// ---------------------------------------------------------------------------- prompts (GEMM)

// y[M, N] = x[M, K] @ W[K, N] for many rows (a prompt), W stored [K, N] in any weight type.
// Each task takes panels of `kPanel` columns: a panel is widened to float32 once into a contiguous
// [K, kPanel] buffer, and x is packed once per product into blocks of `kRowsPerBlock` rows laid
// out [K, kRowsPerBlock] (one pointer walks a block); every block is then multiplied through the
// panel with its accumulators in registers (AVX2: 6 x 16 in 12 registers; AVX-512: 12 x 32 in
// 24), bound by the FMA units rather than by loads. XLA on a CPU widens 16-bit weights to float32
// in a separate pass over the whole matrix first.

#ifdef KLW_AVX512
constexpr int64_t kPanel = 32, kRowsPerBlock = 12;
#else
constexpr int64_t kPanel = 16, kRowsPerBlock = 6;
#endif

struct GemmJob {
  const float* xp;  // [blocks, K, kRowsPerBlock]: x packed (rows past M are zeros)
  int64_t M, K, N;
  // AMX: x in bfloat16, [padded_rows, depth] with zeros past M and K; else null.
  const uint16_t* xb = nullptr;
  int64_t padded_rows = 0, depth = 0;
  const void* w;
  ffi::DataType w_type;
  const float* scale;  // [N] or null
  void* y;
  ffi::DataType y_type;
  int64_t panels, panels_per_task, tasks;
  std::atomic<int64_t> next{0}, done{0};
};

// out[i, 0:kPanel] (+)= x_i @ panel over `K` inputs for the block's rows (`a`: [K,
// kRowsPerBlock]); `accumulate`: add to `out` (a later slice of the inputs) rather than set it.
void micro_kernel(const float* a, int64_t K, const float* panel, float* out, bool accumulate) {
#if defined(KLW_AVX512)
  __m512 c[kRowsPerBlock][2];
#pragma GCC unroll 12
  for (int i = 0; i < kRowsPerBlock; ++i) {
    c[i][0] = accumulate ? _mm512_loadu_ps(out + i * kPanel) : _mm512_setzero_ps();
    c[i][1] = accumulate ? _mm512_loadu_ps(out + i * kPanel + 16) : _mm512_setzero_ps();
  }
  for (int64_t k = 0; k < K; ++k) {
    const __m512 b0 = _mm512_loadu_ps(panel + k * kPanel);
    const __m512 b1 = _mm512_loadu_ps(panel + k * kPanel + 16);
    const float* ak = a + k * kRowsPerBlock;
#pragma GCC unroll 12
    for (int i = 0; i < kRowsPerBlock; ++i) {
      const __m512 x = _mm512_set1_ps(ak[i]);
      c[i][0] = _mm512_fmadd_ps(x, b0, c[i][0]);
      c[i][1] = _mm512_fmadd_ps(x, b1, c[i][1]);
    }
  }
#pragma GCC unroll 12
  for (int i = 0; i < kRowsPerBlock; ++i) {
    _mm512_storeu_ps(out + i * kPanel, c[i][0]);
    _mm512_storeu_ps(out + i * kPanel + 16, c[i][1]);
  }
#elif defined(KLW_AVX2)
  // The twelve accumulators named one by one so that they stay in registers.
  auto start = [&](int i, int half) {
    return accumulate ? _mm256_loadu_ps(out + i * kPanel + 8 * half) : _mm256_setzero_ps();
  };
  __m256 c00 = start(0, 0), c01 = start(0, 1), c10 = start(1, 0), c11 = start(1, 1);
  __m256 c20 = start(2, 0), c21 = start(2, 1), c30 = start(3, 0), c31 = start(3, 1);
  __m256 c40 = start(4, 0), c41 = start(4, 1), c50 = start(5, 0), c51 = start(5, 1);
  for (int64_t k = 0; k < K; ++k) {
    const __m256 b0 = _mm256_loadu_ps(panel + k * kPanel);
    const __m256 b1 = _mm256_loadu_ps(panel + k * kPanel + 8);
    const float* ak = a + k * kRowsPerBlock;
    __m256 x = _mm256_broadcast_ss(ak);
    c00 = _mm256_fmadd_ps(x, b0, c00);
    c01 = _mm256_fmadd_ps(x, b1, c01);
    x = _mm256_broadcast_ss(ak + 1);
    c10 = _mm256_fmadd_ps(x, b0, c10);
    c11 = _mm256_fmadd_ps(x, b1, c11);
    x = _mm256_broadcast_ss(ak + 2);
    c20 = _mm256_fmadd_ps(x, b0, c20);
    c21 = _mm256_fmadd_ps(x, b1, c21);
    x = _mm256_broadcast_ss(ak + 3);
    c30 = _mm256_fmadd_ps(x, b0, c30);
    c31 = _mm256_fmadd_ps(x, b1, c31);
    x = _mm256_broadcast_ss(ak + 4);
    c40 = _mm256_fmadd_ps(x, b0, c40);
    c41 = _mm256_fmadd_ps(x, b1, c41);
    x = _mm256_broadcast_ss(ak + 5);
    c50 = _mm256_fmadd_ps(x, b0, c50);
    c51 = _mm256_fmadd_ps(x, b1, c51);
  }
  const __m256 c[kRowsPerBlock][2] = {{c00, c01}, {c10, c11}, {c20, c21},
                                      {c30, c31}, {c40, c41}, {c50, c51}};
  for (int i = 0; i < kRowsPerBlock; ++i) {
    _mm256_storeu_ps(out + i * kPanel, c[i][0]);
    _mm256_storeu_ps(out + i * kPanel + 8, c[i][1]);
  }
#else
  for (int i = 0; i < kRowsPerBlock; ++i) {
    for (int64_t j = 0; j < kPanel; ++j) {
      float total = accumulate ? out[i * kPanel + j] : 0.0f;
      for (int64_t k = 0; k < K; ++k) total += a[k * kRowsPerBlock + i] * panel[k * kPanel + j];
      out[i * kPanel + j] = total;
    }
  }
#endif
}

// Panels [n0, n0 + count * kPanel) of W, each widened into its own [K, kPanel] block of `panels`
// (the matrix's last panel may be narrower: padded with zeros): one pass down the rows, each
// row's segment read start to end (a column panel alone would read 64 bytes per row, which
// memory serves slowly), with the rows ahead prefetched.
template <typename W>
void pack_panels(const typename W::T* w, int64_t K, int64_t N, int64_t n0, int64_t count,
                 float* panels) {
  constexpr int64_t kRowsAhead = 4;
  const int64_t columns = std::min(count * kPanel, N - n0);
  for (int64_t k = 0; k < K; ++k) {
    const typename W::T* row = w + k * N + n0;
#ifdef KLW_AVX2
    if (k + kRowsAhead < K) {
      const char* ahead = reinterpret_cast<const char*>(row + kRowsAhead * N);
      const int64_t bytes = columns * static_cast<int64_t>(sizeof(typename W::T));
      for (int64_t b = 0; b < bytes; b += 64) _mm_prefetch(ahead + b, _MM_HINT_T0);
    }
#endif
    const int64_t whole = columns / kPanel;
    for (int64_t c = 0; c < whole; ++c) {
      float* out = panels + c * K * kPanel + k * kPanel;
      const typename W::T* in = row + c * kPanel;
#if defined(KLW_AVX512)
      _mm512_storeu_ps(out, W::sixteen(in));
      _mm512_storeu_ps(out + 16, W::sixteen(in + 16));
#elif defined(KLW_AVX2)
      _mm256_storeu_ps(out, W::eight(in));
      _mm256_storeu_ps(out + 8, W::eight(in + 8));
#else
      for (int64_t j = 0; j < kPanel; ++j) out[j] = W::one(in + j);
#endif
    }
    if (whole < count) {  // the narrower last panel
      float* out = panels + whole * K * kPanel + k * kPanel;
      const int64_t width = columns - whole * kPanel;
      for (int64_t j = 0; j < width; ++j) out[j] = W::one(row + whole * kPanel + j);
      for (int64_t j = width; j < kPanel; ++j) out[j] = 0.0f;
    }
  }
}

// Rows [0, M) and columns [n0, n0 + width) of y, from `sums` ([M, kPanel]) times the scale.
void store_panel(GemmJob& job, float* sums, int64_t n0, int64_t width) {
  if (job.scale) {
    for (int64_t i = 0; i < job.M; ++i) {
      for (int64_t j = 0; j < width; ++j) sums[i * kPanel + j] *= job.scale[n0 + j];
    }
  }
  for (int64_t i = 0; i < job.M; ++i) {
    const float* row = sums + i * kPanel;
    if (job.y_type == ffi::DataType::F32) {
      std::memcpy(static_cast<float*>(job.y) + i * job.N + n0, row, width * sizeof(float));
    } else {
      for (int64_t j = 0; j < width; ++j) store(job.y, job.y_type, i * job.N + n0 + j, row[j]);
    }
  }
}

// Inputs per pass over a panel: a slice of the panel (192 x 32 floats, 24 KB) and of a block of
// x (9 KB) stay in L1 while every block of x goes through it.
constexpr int64_t kDepth = 192;

template <typename W>
void gemm_task(GemmJob& job, int64_t t) {
  const int64_t first = t * job.panels_per_task;
  const int64_t last = std::min(job.panels, first + job.panels_per_task);
  const int64_t blocks = (job.M + kRowsPerBlock - 1) / kRowsPerBlock;
  thread_local std::vector<float> panels, sums;
  sums.resize(blocks * kRowsPerBlock * kPanel);
  panels.resize((last - first) * job.K * kPanel);
  pack_panels<W>(static_cast<const typename W::T*>(job.w), job.K, job.N, first * kPanel,
                 last - first, panels.data());
  for (int64_t p = first; p < last; ++p) {
    const int64_t n0 = p * kPanel, width = std::min(kPanel, job.N - n0);
    const float* panel = panels.data() + (p - first) * job.K * kPanel;
    for (int64_t k0 = 0; k0 < job.K; k0 += kDepth) {
      const int64_t depth = std::min(kDepth, job.K - k0);
      for (int64_t b = 0; b < blocks; ++b) {
        micro_kernel(job.xp + (b * job.K + k0) * kRowsPerBlock, depth, panel + k0 * kPanel,
                     sums.data() + b * kRowsPerBlock * kPanel, k0 > 0);
      }
    }
    store_panel(job, sums.data(), n0, width);
  }
}

#ifdef KLW_AMX
// With AMX a bfloat16 prompt is multiplied in tiles: x in blocks of 32 rows by 32 inputs (two
// 16 x 32 tiles), the weights as pairs of consecutive rows side by side (two 16-column tiles of
// 16 pairs), four 16 x 16 float32 tiles of sums. One TDPBF16PS is 8,192 multiply-adds; the
// products of bfloat16 values are exact and summed in float32, as the float32 path sums them.
constexpr int64_t kTileRows = 16, kTileDepth = 32;

// Whether this process may use the tile registers: Linux grants them on request, once per
// process (arch_prctl ARCH_REQ_XCOMP_PERM for XTILEDATA); where it refuses, the float32 path.
bool amx_ready() {
  static const bool ready = [] {
    constexpr long kRequestPermission = 0x1023, kTileData = 18;
    return syscall(SYS_arch_prctl, kRequestPermission, kTileData) == 0;
  }();
  return ready;
}

// Columns [n0, n0 + 32) of bfloat16 W as pairs: element 2j of pair p's row is W[2p, n0 + j],
// element 2j + 1 is W[2p + 1, n0 + j]; zeros past K and N. `panel`: [pairs, 64].
void pack_pairs(const uint16_t* w, int64_t K, int64_t N, int64_t n0, int64_t pairs,
                uint16_t* panel) {
  alignas(64) static const uint16_t kLow[32] = {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5,
                                                37, 6, 38, 7, 39, 8, 40, 9, 41, 10, 42,
                                                11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  alignas(64) static const uint16_t kHigh[32] = {16, 48, 17, 49, 18, 50, 19, 51, 20, 52, 21,
                                                 53, 22, 54, 23, 55, 24, 56, 25, 57, 26, 58,
                                                 27, 59, 28, 60, 29, 61, 30, 62, 31, 63};
  const __m512i low = _mm512_load_si512(kLow), high = _mm512_load_si512(kHigh);
  const int64_t width = std::min(kPanel, N - n0);
  const __mmask32 mask = width >= 32 ? ~__mmask32{0} : (__mmask32{1} << width) - 1;
  for (int64_t p = 0; p < pairs; ++p) {
    const uint16_t* first = w + 2 * p * N + n0;
    if (2 * p + 8 < K) _mm_prefetch(reinterpret_cast<const char*>(first + 8 * N), _MM_HINT_T0);
    const __m512i a = 2 * p < K ? _mm512_maskz_loadu_epi16(mask, first) : _mm512_setzero_si512();
    const __m512i b =
        2 * p + 1 < K ? _mm512_maskz_loadu_epi16(mask, first + N) : _mm512_setzero_si512();
    _mm512_storeu_si512(panel + p * 2 * kPanel, _mm512_permutex2var_epi16(a, low, b));
    _mm512_storeu_si512(panel + p * 2 * kPanel + kPanel, _mm512_permutex2var_epi16(a, high, b));
  }
}

struct TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
};

void amx_task(GemmJob& job, int64_t t) {
  const int64_t first = t * job.panels_per_task;
  const int64_t last = std::min(job.panels, first + job.panels_per_task);
  const int64_t pairs = job.depth / 2, stride = job.depth * 2;
  thread_local std::vector<uint16_t> panel;
  thread_local std::vector<float> sums;
  panel.resize(pairs * 2 * kPanel);
  sums.resize(job.padded_rows * kPanel);
  // Tiles 0-3: sums; 4, 5: x; 6, 7: weights. Set for each task: other code on this thread
  // may configure the tiles its own way between two calls.
  TileConfig config;
  for (int i = 0; i < 8; ++i) config.rows[i] = kTileRows, config.bytes_per_row[i] = 64;
  _tile_loadconfig(&config);
  for (int64_t p = first; p < last; ++p) {
    const int64_t n0 = p * kPanel;
    pack_pairs(static_cast<const uint16_t*>(job.w), job.K, job.N, n0, pairs, panel.data());
    for (int64_t r = 0; r < job.padded_rows; r += 2 * kTileRows) {
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      const uint16_t* x = job.xb + r * job.depth;
      for (int64_t k = 0; k < job.depth; k += kTileDepth) {
        _tile_loadd(4, x + k, stride);
        _tile_loadd(5, x + kTileRows * job.depth + k, stride);
        _tile_loadd(6, panel.data() + k * kPanel, 4 * kPanel);
        _tile_loadd(7, panel.data() + k * kPanel + kPanel, 4 * kPanel);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
      }
      float* out = sums.data() + r * kPanel;
      _tile_stored(0, out, 4 * kPanel);
      _tile_stored(1, out + 16, 4 * kPanel);
      _tile_stored(2, out + kTileRows * kPanel, 4 * kPanel);
      _tile_stored(3, out + kTileRows * kPanel + 16, 4 * kPanel);
    }
    store_panel(job, sums.data(), n0, std::min(kPanel, job.N - n0));
  }
  _tile_release();
}
#endif

void run(GemmJob& job, int64_t t) {
#ifdef KLW_AMX
  if (job.xb) return amx_task(job, t);
#endif
  switch (job.w_type) {
    case ffi::DataType::F32: gemm_task<F32>(job, t); break;
    case ffi::DataType::F16: gemm_task<F16>(job, t); break;
    case ffi::DataType::BF16: gemm_task<BF16>(job, t); break;
    default: gemm_task<I8>(job, t); break;
  }
}

// `xb`: the rows as given when they are bfloat16 (else null): with bfloat16 weights on a CPU
// with AMX, the product is taken in tiles.
void gemm(ffi::ThreadPool& pool, const float* x, const uint16_t* xb, int64_t M, int64_t K,
          int64_t N, const void* w, ffi::DataType w_type, const float* scale, void* y,
          ffi::DataType y_type) {
  auto job = std::make_shared<GemmJob>();
  job->M = M, job->K = K, job->N = N;
  job->w = w, job->w_type = w_type, job->scale = scale, job->y = y, job->y_type = y_type;
  // x packed for the tasks, which share it (rows past M and inputs past K are zeros).
  std::vector<float> xp;
  std::vector<uint16_t> padded;
#ifdef KLW_AMX
  if (xb && w_type == ffi::DataType::BF16 && amx_ready()) {
    job->padded_rows = (M + 2 * kTileRows - 1) / (2 * kTileRows) * (2 * kTileRows);
    job->depth = (K + kTileDepth - 1) / kTileDepth * kTileDepth;
    padded.assign(job->padded_rows * job->depth, 0);
    for (int64_t m = 0; m < M; ++m) {
      std::memcpy(padded.data() + m * job->depth, xb + m * K, K * sizeof(uint16_t));
    }
    job->xb = padded.data();
  }
#endif
  if (!job->xb) {
    const int64_t blocks = (M + kRowsPerBlock - 1) / kRowsPerBlock;
    xp.assign(blocks * K * kRowsPerBlock, 0.0f);
    for (int64_t m = 0; m < M; ++m) {
      float* out = xp.data() + (m / kRowsPerBlock) * K * kRowsPerBlock + m % kRowsPerBlock;
      for (int64_t k = 0; k < K; ++k) out[k * kRowsPerBlock] = x[m * K + k];
    }
    job->xp = xp.data();
  }
  job->panels = (N + kPanel - 1) / kPanel;
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  // Several panels per task (packed in one pass), as many as keep the packed block within
  // about 256 KB (L2), while leaving about four tasks per thread.
  const int64_t fit = std::max<int64_t>(1, 65536 / (K * kPanel));
  job->panels_per_task =
      std::clamp<int64_t>(job->panels / (threads * kTasksPerThread), 1, fit);
  job->tasks = (job->panels + job->panels_per_task - 1) / job->panels_per_task;
  run_tasks(pool, job, job->tasks, std::min(threads, job->tasks) - 1);
}

ffi::Error MatVec(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::AnyBuffer scale,
                  ffi::Result<ffi::AnyBuffer> y, int64_t transposed) {
  const auto xd = x.dimensions(), wd = w.dimensions(), yd = y->dimensions();
  if (xd.size() != 2 || wd.size() != 2 || yd.size() != 2) {
    return ffi::Error::InvalidArgument("matvec: x, w and y must be 2-D");
  }
  const int64_t M = xd[0], K = xd[1];
  const int64_t N = transposed ? wd[0] : wd[1];
  if ((transposed ? wd[1] : wd[0]) != K || yd[0] != M || yd[1] != N) {
    return ffi::Error::InvalidArgument("matvec: shapes of x, w and y do not agree");
  }
  const auto wt = w.element_type(), xt = x.element_type(), yt = y->element_type();
  if (!(is_float(wt) || wt == ffi::DataType::S8) || !is_float(xt) || !is_float(yt)) {
    return ffi::Error::InvalidArgument("matvec: unsupported element type");
  }
  const int64_t scale_count = static_cast<int64_t>(scale.element_count());
  if (scale_count != 0 && (scale_count != N || scale.element_type() != ffi::DataType::F32)) {
    return ffi::Error::InvalidArgument("matvec: scale must be float32 [N] or empty");
  }
  if (M == 0 || N == 0) return ffi::Error::Success();

  // x widened to float32 once (it is small: M * K).
  thread_local std::vector<float> x32;
  const float* xf;
  if (xt == ffi::DataType::F32) {
    xf = static_cast<const float*>(x.untyped_data());
  } else {
    x32.resize(M * K);
    for (int64_t i = 0; i < M * K; ++i) x32[i] = load(x.untyped_data(), xt, i);
    xf = x32.data();
  }

  const float* scale_data = scale_count ? static_cast<const float*>(scale.untyped_data()) : nullptr;
  if (M > kMaxRowsPerPass && !transposed) {  // a prompt: many rows
    const auto* xb = xt == ffi::DataType::BF16 ? static_cast<const uint16_t*>(x.untyped_data())
                                               : nullptr;
    gemm(pool, xf, xb, M, K, N, w.untyped_data(), wt, scale_data, y->untyped_data(), yt);
    return ffi::Error::Success();
  }

  auto job = std::make_shared<Job>();
  job->x = xf;
  job->M = M;
  job->K = K;
  job->N = N;
  job->w = w.untyped_data();
  job->w_type = wt;
  job->transposed = transposed != 0;
  job->scale = scale_data;
  job->y = y->untyped_data();
  job->y_type = yt;

  if (job->transposed && wt == ffi::DataType::S8) {
    job->q8 = true;
    job->xq.resize(M * K);
    job->xs.resize(M);
    for (int64_t m = 0; m < M; ++m) {
      const float* row = xf + m * K;
      float most = 0.0f;
      for (int64_t k = 0; k < K; ++k) most = std::max(most, std::fabs(row[k]));
      const float step = most / 127.0f, inverse = most > 0.0f ? 127.0f / most : 0.0f;
      job->xs[m] = step;
      for (int64_t k = 0; k < K; ++k) {
        job->xq[m * K + k] = static_cast<int8_t>(std::nearbyint(row[k] * inverse));
      }
    }
  }

  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  if (job->transposed) {
    const int64_t wanted = threads * kTasksPerThread;
    job->chunk_rows = std::clamp<int64_t>((N + wanted - 1) / wanted, 4, kMaxChunkRows);
    job->tasks = (N + job->chunk_rows - 1) / job->chunk_rows;
  } else {
    job->row_blocks = std::max<int64_t>(1, std::min(threads * kTasksPerThread, K / 16));
    const int64_t rows_per_pass = std::min(M, kMaxRowsPerPass);
    job->tile = std::min(N, std::max<int64_t>(64, kMaxTileFloats / rows_per_pass / 8 * 8));
    job->tasks = job->row_blocks * ((N + job->tile - 1) / job->tile);
    // Scratch kept by the calling thread between calls (every element is written by a task
    // before it is read): allocating and zeroing it per call cost as much as a small product.
    thread_local std::unique_ptr<float[]> scratch;
    thread_local int64_t scratch_size = 0;
    if (scratch_size < job->row_blocks * M * N) {
      scratch_size = job->row_blocks * M * N;
      scratch.reset(new float[scratch_size]);
    }
    job->partial = scratch.get();
  }

  run_tasks(pool, job, job->tasks, std::min(threads, job->tasks) - 1);
  if (!job->transposed) {  // add up the row blocks' partial sums
    const float* p = job->partial;
    for (int64_t i = 0; i < M * N; ++i) {
      float v = p[i];
      for (int64_t b = 1; b < job->row_blocks; ++b) v += p[b * M * N + i];
      store(job->y, job->y_type, i, job->scale ? v * job->scale[i % N] : v);
    }
  }
  return ffi::Error::Success();
}

// ---------------------------------------------------------------------------- attention

// One query per sequence against a key/value cache laid out [B, S, kv_heads, D] (grouped-query:
// query head h reads kv head h / (H / kv_heads)). Slots where `valid` is false get no weight.
// XLA on a CPU computes this as tiny matmuls behind per-layer transposes of the cache, or as
// slow loop fusions. Here the cache is read in memory order (a slot's keys for every kv head
// are one contiguous row), in chunks of slots that threads claim; each chunk keeps its own
// softmax maximum and sum, and the chunks are merged at the end (as flash-decoding does).

constexpr int64_t kSlotsPerChunk = 256;

// sum_d a[d] * b[d]: eight lanes and two accumulators (a scalar loop is one dependent add per
// element: the compiler may not reorder a float sum).
template <typename T>
inline float dot(const float* a, const typename T::T* b, int64_t D) {
  int64_t d = 0;
  float total = 0.0f;
#ifdef KLW_AVX2
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  for (; d + 16 <= D; d += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d), T::eight(b + d), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d + 8), T::eight(b + d + 8), s1);
  }
  for (; d + 8 <= D; d += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d), T::eight(b + d), s0);
  total = horizontal_sum(_mm256_add_ps(s0, s1));
#endif
  for (; d < D; ++d) total += a[d] * T::one(b + d);
  return total;
}

// out[d] += p * b[d]
template <typename T>
inline void add_scaled(float* out, float p, const typename T::T* b, int64_t D) {
  int64_t d = 0;
#ifdef KLW_AVX2
  const __m256 pv = _mm256_set1_ps(p);
  for (; d + 8 <= D; d += 8) {
    _mm256_storeu_ps(out + d, _mm256_fmadd_ps(pv, T::eight(b + d), _mm256_loadu_ps(out + d)));
  }
#endif
  for (; d < D; ++d) out[d] += p * T::one(b + d);
}

struct AttentionJob {
  const float* q;  // [B, H, D], scaled
  const void* keys;
  const void* values;
  ffi::DataType cache_type;
  const bool* valid;  // [B, S]
  int64_t B, H, KV, D, S, chunks;
  std::vector<float> out;  // [B, chunks, H, D]: each chunk's softmax-weighted values
  std::vector<float> most, total;  // [B, chunks, H]: each chunk's maximum score and weight sum
  std::atomic<int64_t> next{0}, done{0};
};

// Chunk `c` of sequence `b`: for slots [s0, s1), scores of every query head, then the values
// weighted by exp(score - the chunk's maximum).
template <typename T>
void attend_chunk(AttentionJob& job, int64_t b, int64_t c) {
  const int64_t H = job.H, KV = job.KV, D = job.D, S = job.S, G = H / KV;
  const int64_t s0 = c * kSlotsPerChunk, s1 = std::min(S, s0 + kSlotsPerChunk);
  const auto* keys = static_cast<const typename T::T*>(job.keys) + b * S * KV * D;
  const auto* values = static_cast<const typename T::T*>(job.values) + b * S * KV * D;
  const bool* valid = job.valid + b * S;
  const float* q = job.q + b * H * D;
  const int64_t at = b * job.chunks + c;
  float* most = job.most.data() + at * H;
  float* total = job.total.data() + at * H;
  float* out = job.out.data() + at * H * D;
  thread_local std::vector<float> scores;  // [slots, H]
  scores.resize(kSlotsPerChunk * H);
  std::fill(most, most + H, -INFINITY);
  std::fill(total, total + H, 0.0f);
  std::fill(out, out + H * D, 0.0f);
  for (int64_t s = s0; s < s1; ++s) {
    if (!valid[s]) continue;
    const typename T::T* row = keys + s * KV * D;
    float* sc = scores.data() + (s - s0) * H;
    for (int64_t h = 0; h < H; ++h) {
      sc[h] = dot<T>(q + h * D, row + (h / G) * D, D);
      most[h] = std::max(most[h], sc[h]);
    }
  }
  if (most[0] == -INFINITY) return;  // no valid slot in this chunk
  for (int64_t s = s0; s < s1; ++s) {
    if (!valid[s]) continue;
    const typename T::T* row = values + s * KV * D;
    const float* sc = scores.data() + (s - s0) * H;
    for (int64_t h = 0; h < H; ++h) {
      const float p = std::exp(sc[h] - most[h]);
      total[h] += p;
      add_scaled<T>(out + h * D, p, row + (h / G) * D, D);
    }
  }
}

void run(AttentionJob& job, int64_t t) {
  const int64_t b = t / job.chunks, c = t % job.chunks;
  switch (job.cache_type) {
    case ffi::DataType::F32: attend_chunk<F32>(job, b, c); break;
    case ffi::DataType::BF16: attend_chunk<BF16>(job, b, c); break;
    default: attend_chunk<F16>(job, b, c); break;
  }
}

ffi::Error Attention(ffi::ThreadPool pool, ffi::AnyBuffer query, ffi::AnyBuffer keys,
                     ffi::AnyBuffer values, ffi::Buffer<ffi::PRED> valid,
                     ffi::Result<ffi::AnyBuffer> out, float scale) {
  const auto qd = query.dimensions(), kd = keys.dimensions(), vd = valid.dimensions();
  if (qd.size() != 3 || kd.size() != 4 || vd.size() != 2) {
    return ffi::Error::InvalidArgument("attention: query [B, H, D], cache [B, S, K, D], valid [B, S]");
  }
  const int64_t B = qd[0], H = qd[1], D = qd[2], S = kd[1], KV = kd[2];
  if (kd[0] != B || kd[3] != D || KV == 0 || H % KV != 0 || vd[0] != B || vd[1] != S) {
    return ffi::Error::InvalidArgument("attention: shapes do not agree");
  }
  const auto qt = query.element_type(), ct = keys.element_type();
  if (!is_float(qt) || !is_float(ct) || values.element_type() != ct ||
      out->element_type() != qt) {
    return ffi::Error::InvalidArgument("attention: unsupported element types");
  }
  if (B == 0 || H == 0 || D == 0) return ffi::Error::Success();
  // The query, scaled, in float32: [B, H, D].
  std::vector<float> q(B * H * D);
  for (int64_t i = 0; i < B * H * D; ++i) q[i] = load(query.untyped_data(), qt, i) * scale;
  auto job = std::make_shared<AttentionJob>();
  job->q = q.data();
  job->keys = keys.untyped_data();
  job->values = values.untyped_data();
  job->cache_type = ct;
  job->valid = valid.typed_data();
  job->B = B, job->H = H, job->KV = KV, job->D = D, job->S = S;
  job->chunks = std::max<int64_t>(1, (S + kSlotsPerChunk - 1) / kSlotsPerChunk);
  job->out.resize(B * job->chunks * H * D);
  job->most.resize(B * job->chunks * H);
  job->total.resize(B * job->chunks * H);

  // Helpers only when there is enough work to pay for a wake-up.
  const int64_t tasks = B * job->chunks;
  const int64_t helpers = B * S * KV * D >= (1 << 16)
                              ? std::min<int64_t>(pool.num_threads(), tasks) - 1
                              : 0;
  run_tasks(pool, job, tasks, helpers);

  // Merge the chunks: weights rescaled to the overall maximum (no valid slot at all: zeros).
  std::vector<float> merged(D);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      float most = -INFINITY;
      for (int64_t c = 0; c < job->chunks; ++c) {
        most = std::max(most, job->most[(b * job->chunks + c) * H + h]);
      }
      std::fill(merged.begin(), merged.end(), 0.0f);
      float total = 0.0f;
      if (most != -INFINITY) {
        for (int64_t c = 0; c < job->chunks; ++c) {
          const int64_t at = (b * job->chunks + c) * H + h;
          if (job->most[at] == -INFINITY) continue;
          const float weight = std::exp(job->most[at] - most);
          total += weight * job->total[at];
          const float* part = job->out.data() + at * D;
          for (int64_t d = 0; d < D; ++d) merged[d] += weight * part[d];
        }
        for (int64_t d = 0; d < D; ++d) merged[d] /= total;
      }
      for (int64_t d = 0; d < D; ++d) {
        store(out->untyped_data(), qt, (b * H + h) * D + d, merged[d]);
      }
    }
  }
  return ffi::Error::Success();
}

// ---------------------------------------------------------------------------- row gather

// rows[i] = table[ids[i]] (an id outside the table is clamped to it), copied as bytes: XLA on a
// CPU widens a 16-bit table to float32 for a gather, or materialises a bit-cast copy of it, once
// per decode call (the whole embedding table, for one row per sequence).
ffi::Error TakeRows(ffi::AnyBuffer table, ffi::Buffer<ffi::S32> ids,
                    ffi::Result<ffi::AnyBuffer> rows) {
  const auto td = table.dimensions(), rd = rows->dimensions();
  if (td.size() != 2 || rd.size() != 2 || rd[0] != static_cast<int64_t>(ids.element_count()) ||
      rd[1] != td[1] || rows->element_type() != table.element_type()) {
    return ffi::Error::InvalidArgument("take_rows: table [V, D], ids [N] and rows [N, D]");
  }
  const int64_t V = td[0], N = rd[0];
  if (N > 0 && V == 0) return ffi::Error::InvalidArgument("take_rows: the table is empty");
  const size_t row_bytes = table.size_bytes() / std::max<int64_t>(V, 1);
  const auto* src = static_cast<const char*>(table.untyped_data());
  auto* dst = static_cast<char*>(rows->untyped_data());
  const int32_t* index = ids.typed_data();
  for (int64_t i = 0; i < N; ++i) {
    const int64_t row = std::clamp<int64_t>(index[i], 0, V - 1);
    std::memcpy(dst + i * row_bytes, src + row * row_bytes, row_bytes);
  }
  return ffi::Error::Success();
}

// ---------------------------------------------------------------------------- top-k

// The k largest values of each row of x [B, V] (float32) and their ids, best first, ties to the
// lower id (as lax.top_k orders them). XLA on a CPU sorts for a top-k of more than a few
// elements (about 12 ms for k = 64 over a 49,152-token vocabulary); here one pass keeps a heap
// of the k best, and eight values at a time are compared with the heap's worst first, so most
// of the row costs one vector comparison.
struct Candidate {
  float value;
  int32_t id;
};

// a is worse than b: a lower value, or an equal value at a higher id.
inline bool worse(const Candidate& a, const Candidate& b) {
  return a.value < b.value || (a.value == b.value && a.id > b.id);
}

void top_k_row(const float* x, int64_t V, int64_t k, float* values, int32_t* ids,
               std::vector<Candidate>& heap) {
  // A min-heap on `worse`: heap.front() is the worst of the k kept so far.
  auto better_first = [](const Candidate& a, const Candidate& b) { return worse(b, a); };
  heap.clear();
  for (int64_t i = 0; i < k; ++i) heap.push_back({x[i], static_cast<int32_t>(i)});
  std::make_heap(heap.begin(), heap.end(), better_first);
  auto offer = [&](int64_t i) {
    // Later ids lose ties, so only a strictly larger value can enter.
    if (x[i] > heap.front().value) {
      std::pop_heap(heap.begin(), heap.end(), better_first);
      heap.back() = {x[i], static_cast<int32_t>(i)};
      std::push_heap(heap.begin(), heap.end(), better_first);
    }
  };
  int64_t i = k;
#ifdef KLW_AVX2
  for (; i + 8 <= V; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    const __m256 worst = _mm256_set1_ps(heap.front().value);
    if (_mm256_movemask_ps(_mm256_cmp_ps(v, worst, _CMP_GT_OQ)) == 0) continue;
    for (int64_t j = i; j < i + 8; ++j) offer(j);
  }
#endif
  for (; i < V; ++i) offer(i);
  std::sort(heap.begin(), heap.end(), better_first);
  for (int64_t j = 0; j < k; ++j) {
    values[j] = heap[j].value;
    ids[j] = heap[j].id;
  }
}

ffi::Error TopK(ffi::Buffer<ffi::F32> x, ffi::Result<ffi::Buffer<ffi::F32>> values,
                ffi::Result<ffi::Buffer<ffi::S32>> ids) {
  const auto xd = x.dimensions(), vd = values->dimensions(), id = ids->dimensions();
  if (xd.size() != 2 || vd.size() != 2 || id.size() != 2 || vd[0] != xd[0] || id[0] != xd[0] ||
      vd[1] != id[1] || vd[1] > xd[1]) {
    return ffi::Error::InvalidArgument("top_k: x [B, V], values and ids [B, k] with k <= V");
  }
  const int64_t B = xd[0], V = xd[1], k = vd[1];
  if (k == 0) return ffi::Error::Success();
  thread_local std::vector<Candidate> heap;
  for (int64_t b = 0; b < B; ++b) {
    top_k_row(x.typed_data() + b * V, V, k, values->typed_data() + b * k,
              ids->typed_data() + b * k, heap);
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(KerasLLMMatVec, MatVec,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("transposed"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(KerasLLMAttention, Attention,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<float>("scale"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(KerasLLMTakeRows, TakeRows,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::AnyBuffer>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(KerasLLMTopK, TopK,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>());
