// Weight-only GEMV for decode batches (M <= 64): 4-/8-bit weights dequantized in registers, bf16/fp16
// tensor-core MMA (mma.sync m16n8k16, plain sm_80+ instructions), fp32 accumulation.
//
// Work split. A warp owns NT tiles of 8 output rows (n) and walks K in "iterations" of 4*VPC columns: lane
// (g = lane/4, t = lane%4) loads one 16-byte chunk (VPC = 128/bits values) of row n0+8*tile+g at column
// it*4*VPC + t*VPC. The 4 lanes of a group together cover 4*VPC columns, i.e. VPC/4 MMA k-steps of 16.
// The MMA's k order inside a step is free as long as A (activations) and B (weights) agree, so every lane
// feeds B with consecutive pairs of its own chunk and A with the same pairs of x: no shuffles, no shared
// memory on the way in. Up to 4 tiles of 16 rows of x are the MMA's A rows (rows >= M are zero registers).
// A block holds KSPLIT warps on the same rows that split the iterations; they reduce through shared memory.
// Weights, scales and zero points stream through a per-warp cp.async pipeline in shared memory (each lane
// reads back only what it copied, so no barrier is needed), kStages-1 iterations ahead: the loads in flight
// do not hold registers, which is what keeps HBM busy at M = 1.
//
// Weight layouts (prepared once in Python):
//   int4 / fp4: 8 nibbles per 32-bit word, reordered at prepare time so that nibble slots (p, p+4) of a word
//               hold elements (2p, 2p+1): one shift + one LOP3 yields a pair of adjacent elements.
//   int8 / fp8: 4 bytes per word, natural order.
// Integers are stored with the +2^(bits-1) offset (compressed-tensors); zero points likewise (uint8 [N, G]).
// Scales [N, G]: int formats in the activation dtype; NVFP4 e4m3 bytes (times alpha = 1/global scale); MX e8m0.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "weight_only_gemv.h"

namespace quantops {

template <int FMT>
struct FormatTraits {
  static constexpr int kBits = (FMT == kInt4 || FMT == kFp4) ? 4 : 8;
  static constexpr int kValuesPerChunk = 128 / kBits;  // one 16-byte load
  static constexpr bool kIsInt = (FMT == kInt4 || FMT == kInt8);
};

template <typename T>
struct Vec2;
template <>
struct Vec2<__nv_bfloat16> {
  using type = __nv_bfloat162;
};
template <>
struct Vec2<__half> {
  using type = __half2;
};

__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
  uint32_t r;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
  return r;
}

template <typename T>
__device__ __forceinline__ uint32_t sub2(uint32_t a, uint32_t b) {
  using V = typename Vec2<T>::type;
  V r = __hsub2(*reinterpret_cast<V*>(&a), *reinterpret_cast<V*>(&b));
  return *reinterpret_cast<uint32_t*>(&r);
}

template <typename T>
__device__ __forceinline__ uint32_t mul2(uint32_t a, uint32_t b) {
  using V = typename Vec2<T>::type;
  V r = __hmul2(*reinterpret_cast<V*>(&a), *reinterpret_cast<V*>(&b));
  return *reinterpret_cast<uint32_t*>(&r);
}

template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 r = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&r);
}
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  __half2 r = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&r);
}

template <typename T>
__device__ __forceinline__ uint32_t splat2(T v) {
  uint16_t u = *reinterpret_cast<uint16_t*>(&v);
  return (uint32_t(u) << 16) | u;
}

template <typename T>
__device__ __forceinline__ float to_float(T v);
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <>
__device__ __forceinline__ float to_float<__half>(__half v) {
  return __half2float(v);
}
template <>
__device__ __forceinline__ float to_float<float>(float v) {
  return v;
}

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ float from_float<float>(float v) {
  return v;
}

// D += A * B, m16n8k16, fp32 accumulators.
template <typename T>
__device__ __forceinline__ void mma16816(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
}

// Weights are read once: bypass L1 so that it keeps the activations, which every warp re-reads.
__device__ __forceinline__ uint4 load_weights(const uint4* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}

// ---- dequantization of one 16-byte chunk into PAIRS packed T2 values (pair i = elements 2i, 2i+1) ----------

// int4: (code - zero) * scale. Magic-number conversion: OR-ing a nibble into the mantissa of 128.0 (bf16) or
// 1024.0 (fp16) gives 128+code (1024+code) exactly; subtracting 128+zero (1024+zero) is exact; one rounding
// in the multiply by the scale.
template <typename T>
__device__ __forceinline__ void dequant_int4(const uint4& w, uint32_t zero2, uint32_t scale2, uint32_t (&p)[16]) {
  constexpr uint32_t kMagic = std::is_same<T, __nv_bfloat16>::value ? 0x43004300u : 0x64006400u;
  const uint32_t words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const uint32_t v = ((words[j] >> (4 * q)) & 0x000F000Fu) | kMagic;
      p[4 * j + q] = mul2<T>(sub2<T>(v, zero2), scale2);
    }
  }
}

// int8: byte -> fp32 through the 2^23 magic (exact), minus the zero, times the scale, one rounding to T.
template <typename T>
__device__ __forceinline__ void dequant_int8(const uint4& w, float zero, float scale, uint32_t (&p)[8]) {
  const uint32_t words[4] = {w.x, w.y, w.z, w.w};
  const float bias = 8388608.0f + zero;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
#pragma unroll
    for (int q = 0; q < 2; ++q) {
      const float lo = __uint_as_float(prmt(words[j], 0x4B000000u, 0x7440u + 2 * q)) - bias;
      const float hi = __uint_as_float(prmt(words[j], 0x4B000000u, 0x7441u + 2 * q)) - bias;
      p[2 * j + q] = pack2<T>(lo * scale, hi * scale);
    }
  }
}

// Scale a pair of decoded bf16 bit patterns whose exponent is short of its true value by `fix` (a power of 2):
// one multiply by scale*fix when that is a finite bf16, else two (exact power-of-2 step first).
struct FpScale {
  uint32_t one;    // bf16x2 of scale*fix, when finite
  uint32_t fix;    // bf16x2 of fix
  uint32_t scale;  // bf16x2 of scale
  bool single;
};

__device__ __forceinline__ FpScale make_fp_scale(float scale, float fix) {
  FpScale s;
  const float combined = scale * fix;
  s.single = combined <= 3.0e38f;  // bf16 max is 3.39e38; NaN also takes the two-step path
  s.one = splat2<__nv_bfloat16>(__float2bfloat16_rn(combined));
  s.fix = splat2<__nv_bfloat16>(__float2bfloat16_rn(fix));
  s.scale = splat2<__nv_bfloat16>(__float2bfloat16_rn(scale));
  return s;
}

__device__ __forceinline__ uint32_t apply_fp_scale(uint32_t v, const FpScale& s) {
  return s.single ? mul2<__nv_bfloat16>(v, s.one)
                  : mul2<__nv_bfloat16>(mul2<__nv_bfloat16>(v, s.fix), s.scale);
}

// fp4 e2m1 -> bf16 bits: sign to bit 15, the 3 magnitude bits (e1 e0 m) to bits 8..6, giving the value
// times 2^-126 (e2m1's exponent bias is 1, bf16's 127; e=0 lands on bf16 subnormals, which are exact).
// SPC scales per chunk: word j uses scale j / (4 / SPC).
template <int SPC>
__device__ __forceinline__ void dequant_fp4(const uint4& w, const FpScale (&s)[SPC], uint32_t (&p)[16]) {
  const uint32_t words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const uint32_t a = words[j] >> (4 * q);
      const uint32_t v = ((a << 6) & 0x01C001C0u) | ((a << 12) & 0x80008000u);
      p[4 * j + q] = apply_fp_scale(v, s[j / (4 / SPC)]);
    }
  }
}

// fp8 e4m3 -> bf16 bits: sign to bit 15, exponent+mantissa (7 bits) to bits 10..4: the value times 2^-120.
__device__ __forceinline__ void dequant_fp8(const uint4& w, const FpScale& s, uint32_t (&p)[8]) {
  const uint32_t words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
#pragma unroll
    for (int q = 0; q < 2; ++q) {
      const uint32_t y = prmt(words[j], 0u, q ? 0x4342u : 0x4140u);  // bytes (2q, 2q+1) at bits 0 and 16
      const uint32_t v = ((y << 4) & 0x07F007F0u) | ((y << 8) & 0x80008000u);
      p[2 * j + q] = apply_fp_scale(v, s);
    }
  }
}

// ---- scales ------------------------------------------------------------------------------------------

// How the per-group scales are stored: in the activation dtype (int formats), e4m3 times a global factor
// (NVFP4), or e8m0 powers of two (MX). All are fetched as the aligned 32-bit word that holds them.
enum ScaleKind : int { kScaleT = 0, kScaleE4m3 = 1, kScaleE8m0 = 2 };

template <typename T, int SK>
struct ScaleTraits {
  static constexpr int kBytes = SK == kScaleT ? 2 : 1;
};

__device__ __forceinline__ float e4m3_to_float(uint32_t b) {
  const uint32_t e = (b >> 3) & 0xF, m = b & 7;
  const float v = e ? __uint_as_float(((e + 120) << 23) | (m << 20)) : float(m) * 0.001953125f;
  return (b & 0x80) ? -v : v;
}

__device__ __forceinline__ float e8m0_to_float(uint32_t code) {
  return code ? __uint_as_float(code << 23) : __uint_as_float(0x00400000u);  // 2^(code-127); 0 -> 2^-127
}

// ---- cp.async (sm_80+): global -> shared without registers, completion tracked per thread -------------------

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

template <typename P>
__device__ __forceinline__ const uint32_t* aligned_word(const P* p) {
  return reinterpret_cast<const uint32_t*>(reinterpret_cast<uintptr_t>(p) & ~uintptr_t(3));
}

// ---- the kernel ----------------------------------------------------------------------------------------

constexpr int kStages = 4;  // cp.async pipeline depth: kStages-1 iterations of loads in flight per warp

// One pipeline slot of one warp: every lane's 16-byte weight chunk, scale word(s) and zero word per tile.
template <int NT, int SPC>
struct Slot {
  uint4 w[NT][32];
  uint32_t s[NT][SPC][32];
  uint32_t z[NT][32];
};

template <typename T, int FMT, int NT, int MT, int SPC, int SK, bool HAS_ZP>
__global__ void __launch_bounds__(256, 2) weight_only_gemv_kernel(const T* __restrict__ x, const uint4* __restrict__ w,
                                                               const void* __restrict__ scales_ptr,
                                                               const uint8_t* __restrict__ zeros,
                                                               const float* __restrict__ alpha, T* __restrict__ out,
                                                               int M, int N, int K, int G, int group_size) {
  using Traits = FormatTraits<FMT>;
  constexpr int VPC = Traits::kValuesPerChunk;
  constexpr int PAIRS = VPC / 2;
  constexpr int STEPS = VPC / 4;  // MMA k-steps per chunk: each lane gives 4 values to each step
  constexpr int KCHUNK = 4 * VPC;
  constexpr int SBYTES = ScaleTraits<T, SK>::kBytes;
  using SlotT = Slot<NT, SPC>;
  const uint8_t* scale_bytes = static_cast<const uint8_t*>(scales_ptr);

  extern __shared__ __align__(16) unsigned char smem_raw[];

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int ksplit = blockDim.x >> 5;
  const int g = lane >> 2;
  const int tig = lane & 3;
  const int n_base = blockIdx.x * (8 * NT);
  const int chunks_per_row = K / VPC;
  const int iters = (K + KCHUNK - 1) / KCHUNK;
  const int my_iters = warp < iters ? (iters - warp + ksplit - 1) / ksplit : 0;
  SlotT* slots = reinterpret_cast<SlotT*>(smem_raw) + warp * kStages;
  const float global = (SK == kScaleE4m3) ? __ldg(alpha) : 1.f;

  float acc[MT][NT][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int t = 0; t < NT; ++t)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[mt][t][r] = 0.f;

  // the j-th iteration of this warp covers columns [it*KCHUNK, (it+1)*KCHUNK), it = warp + j*ksplit
  auto issue = [&](int j) {
    SlotT& sl = slots[j % kStages];
    const int kc = (warp + j * ksplit) * KCHUNK + tig * VPC;
    const bool kvalid = j < my_iters && kc < K;
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      const int n = n_base + t * 8 + g;
      if (kvalid && n < N) {
        cp_async16(&sl.w[t][lane], w + (size_t)n * chunks_per_row + kc / VPC);
#pragma unroll
        for (int s = 0; s < SPC; ++s) {
          const size_t idx = (size_t)n * G + (kc + s * (VPC / SPC)) / group_size;
          cp_async4(&sl.s[t][s][lane], aligned_word(scale_bytes + idx * SBYTES));
        }
        if constexpr (HAS_ZP) cp_async4(&sl.z[t][lane], aligned_word(zeros + (size_t)n * G + kc / group_size));
      } else {  // out of range: zero weights and scales (the matching x is zero too)
        sl.w[t][lane] = make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int s = 0; s < SPC; ++s) sl.s[t][s][lane] = 0u;
        if constexpr (HAS_ZP) sl.z[t][lane] = 0u;
      }
    }
    cp_async_commit();  // one group per iteration, possibly empty, so that wait_group counts iterations
  };

#pragma unroll
  for (int j = 0; j < kStages - 1; ++j) issue(j);

  for (int j = 0; j < my_iters; ++j) {
    cp_async_wait<kStages - 2>();  // this lane's loads of iteration j have landed (its own data only)
    // refill the slot consumed by iteration j-1 (its values were used before this point)
    issue(j + kStages - 1);
    const SlotT& sl = slots[j % kStages];
    const int kc = (warp + j * ksplit) * KCHUNK + tig * VPC;
    const bool kvalid = kc < K;

    // dequantized weights of every tile, then one pass over the m-tiles (x loaded once per m-tile)
    uint32_t p[NT][PAIRS];
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      const uint4 wv = sl.w[t][lane];
      const int n = n_base + t * 8 + g;
      float sv[SPC];
#pragma unroll
      for (int s = 0; s < SPC; ++s) {
        const uint32_t word = sl.s[t][s][lane];
        const size_t idx = (size_t)min(n, N - 1) * G + (min(kc, K - 1) + s * (VPC / SPC)) / group_size;
        const uint32_t shift = 8 * uint32_t((reinterpret_cast<uintptr_t>(scale_bytes + idx * SBYTES)) & 3);
        if constexpr (SK == kScaleT) {
          const uint16_t bits = uint16_t(word >> shift);
          sv[s] = to_float<T>(*reinterpret_cast<const T*>(&bits));
        } else if constexpr (SK == kScaleE4m3) {
          sv[s] = e4m3_to_float((word >> shift) & 0xFF) * global;
        } else {
          sv[s] = e8m0_to_float((word >> shift) & 0xFF);
        }
      }
      if (!(kvalid && n < N)) {  // zeroed slot: keep every weight 0 (e8m0 code 0 is not 0)
#pragma unroll
        for (int s = 0; s < SPC; ++s) sv[s] = 0.f;
      }
      if constexpr (FMT == kInt4) {
        uint32_t zero2;
        if constexpr (HAS_ZP) {
          const size_t zi = (size_t)min(n, N - 1) * G + min(kc, K - 1) / group_size;
          const float zp = float((sl.z[t][lane] >> (8 * (reinterpret_cast<uintptr_t>(zeros + zi) & 3))) & 0xFF);
          zero2 = splat2<T>(from_float<T>((std::is_same<T, __nv_bfloat16>::value ? 128.f : 1024.f) + zp));
        } else {
          zero2 = splat2<T>(from_float<T>(std::is_same<T, __nv_bfloat16>::value ? 136.f : 1032.f));
        }
        dequant_int4<T>(wv, zero2, splat2<T>(from_float<T>(sv[0])), p[t]);
      } else if constexpr (FMT == kInt8) {
        float zp = 128.f;
        if constexpr (HAS_ZP) {
          const size_t zi = (size_t)min(n, N - 1) * G + min(kc, K - 1) / group_size;
          zp = float((sl.z[t][lane] >> (8 * (reinterpret_cast<uintptr_t>(zeros + zi) & 3))) & 0xFF);
        }
        dequant_int8<T>(wv, zp, sv[0], p[t]);
      } else if constexpr (FMT == kFp4) {
        FpScale fs[SPC];
#pragma unroll
        for (int s = 0; s < SPC; ++s) fs[s] = make_fp_scale(sv[s], 8.507059173023462e37f /* 2^126 */);
        dequant_fp4<SPC>(wv, fs, p[t]);
      } else {
        dequant_fp8(wv, make_fp_scale(sv[0], 1.329227995784916e36f /* 2^120 */), p[t]);
      }
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      const int r0 = mt * 16 + g, r1 = r0 + 8;
      uint32_t xa[PAIRS], xb[PAIRS];
#pragma unroll
      for (int i = 0; i < PAIRS; ++i) xa[i] = xb[i] = 0u;
      if (kvalid && r0 < M) {
        const uint4* src = reinterpret_cast<const uint4*>(x + (size_t)r0 * K + kc);
#pragma unroll
        for (int v = 0; v < PAIRS / 4; ++v) {
          const uint4 c = __ldg(src + v);
          xa[4 * v] = c.x, xa[4 * v + 1] = c.y, xa[4 * v + 2] = c.z, xa[4 * v + 3] = c.w;
        }
      }
      if (kvalid && r1 < M) {
        const uint4* src = reinterpret_cast<const uint4*>(x + (size_t)r1 * K + kc);
#pragma unroll
        for (int v = 0; v < PAIRS / 4; ++v) {
          const uint4 c = __ldg(src + v);
          xb[4 * v] = c.x, xb[4 * v + 1] = c.y, xb[4 * v + 2] = c.z, xb[4 * v + 3] = c.w;
        }
      }
      // k-steps outer, tiles inner: consecutive MMAs go to independent accumulators, so the in-order issue
      // does not wait out each MMA's latency (time grew with M at a fixed byte count: latency-bound)
#pragma unroll
      for (int s = 0; s < STEPS; ++s) {
#pragma unroll
        for (int t = 0; t < NT; ++t) {
          mma16816<T>(acc[mt][t], xa[2 * s], xb[2 * s], xa[2 * s + 1], xb[2 * s + 1], p[t][2 * s], p[t][2 * s + 1]);
        }
      }
    }
  }
  cp_async_wait<0>();

  // reduce the KSPLIT warps' partial sums (the pipeline's shared memory is reused); thread i then owns
  // accumulator slot i of the block's tile
  constexpr int SLOTS = MT * NT * 4 * 32;
  float* reduce_buf = reinterpret_cast<float*>(smem_raw);
  if (ksplit > 1) {
    __syncthreads();
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int t = 0; t < NT; ++t)
#pragma unroll
        for (int r = 0; r < 4; ++r) reduce_buf[warp * SLOTS + ((mt * NT + t) * 4 + r) * 32 + lane] = acc[mt][t][r];
    __syncthreads();
    for (int i = threadIdx.x; i < SLOTS; i += blockDim.x) {
      float sum = 0.f;
      for (int wi = 0; wi < ksplit; ++wi) sum += reduce_buf[wi * SLOTS + i];
      const int l = i % 32, r = (i / 32) % 4, t = (i / 128) % NT, mt = i / (128 * NT);
      const int m = mt * 16 + (l >> 2) + (r >= 2 ? 8 : 0);
      const int n = n_base + t * 8 + (l & 3) * 2 + (r & 1);
      if (m < M && n < N) out[(size_t)m * N + n] = from_float<T>(sum);
    }
  } else {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int t = 0; t < NT; ++t)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const int m = mt * 16 + g + (r >= 2 ? 8 : 0);
          const int n = n_base + t * 8 + tig * 2 + (r & 1);
          if (m < M && n < N) out[(size_t)m * N + n] = from_float<T>(acc[mt][t][r]);
        }
  }
}

// Host-side choice of the split: enough warps in flight to cover memory latency on every SM, within the
// shared memory the pipeline needs.
inline void choose_split(const GemvArgs& a, int values_per_chunk, int* ksplit, int* nt) {
  // 4 tiles of 8 rows per warp at M <= 16 on wide layers (more bytes per warp), else 2 (more blocks; and the
  // register budget of several m-tiles). H200 sweep: N >= 8192 favoured 4, N = 4096..6144 favoured 2.
  int n_tile = a.M > 16 ? 2 : (a.nt > 0 ? a.nt : (a.N >= 8192 ? 4 : 2));
  const int blocks = (a.N + 8 * n_tile - 1) / (8 * n_tile);
  const int iters = (a.K + 4 * values_per_chunk - 1) / (4 * values_per_chunk);
  int ks = a.ksplit > 8 ? 8 : a.ksplit;  // blocks of at most 256 threads (__launch_bounds__)
  if (ks <= 0) {
    const int target = (a.num_sms > 0 ? a.num_sms : 132) * 16;
    ks = 1;
    while (ks < 8 && blocks * ks < target && iters >= 4 * ks) ks *= 2;
  }
  *ksplit = ks;
  *nt = n_tile;
}

inline int m_tiles(int M) { return M <= 16 ? 1 : (M <= 32 ? 2 : 4); }

template <typename T, int FMT, int NT, int MT, int SPC, int SK, bool HAS_ZP>
cudaError_t launch_typed(const GemvArgs& a, int ksplit, cudaStream_t stream) {
  const int blocks = (a.N + 8 * NT - 1) / (8 * NT);
  const size_t pipe = size_t(ksplit) * kStages * sizeof(Slot<NT, SPC>);
  const size_t reduce = ksplit > 1 ? size_t(ksplit) * MT * NT * 4 * 32 * sizeof(float) : 0;
  const size_t smem = pipe > reduce ? pipe : reduce;
  auto kernel = weight_only_gemv_kernel<T, FMT, NT, MT, SPC, SK, HAS_ZP>;
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (err != cudaSuccess) return err;
  }
  kernel<<<blocks, 32 * ksplit, smem, stream>>>(static_cast<const T*>(a.x), static_cast<const uint4*>(a.w),
                                                a.scales, a.zeros, a.alpha, static_cast<T*>(a.out), a.M, a.N, a.K,
                                                a.G, a.group_size);
  return cudaGetLastError();
}

template <typename T, int FMT, int NT, int SPC, int SK, bool HAS_ZP>
cudaError_t launch_mt(const GemvArgs& a, int ksplit, cudaStream_t stream) {
  if constexpr (NT == 4) {  // register budget: 4 row tiles only with one m-tile (choose_split ensures it)
    return a.M <= 16 ? launch_typed<T, FMT, NT, 1, SPC, SK, HAS_ZP>(a, ksplit, stream) : cudaErrorInvalidValue;
  } else {
    switch (m_tiles(a.M)) {
      case 1:
        return launch_typed<T, FMT, NT, 1, SPC, SK, HAS_ZP>(a, ksplit, stream);
      case 2:
        return launch_typed<T, FMT, NT, 2, SPC, SK, HAS_ZP>(a, ksplit, stream);
      default:
        return launch_typed<T, FMT, NT, 4, SPC, SK, HAS_ZP>(a, ksplit, stream);
    }
  }
}

}  // namespace quantops
