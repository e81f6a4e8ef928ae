// Device helpers shared by the weight-only GEMV (weight_only_gemv.cuh) and GEMM (weight_only_gemm.cuh): the
// tensor-core MMA, cp.async, the dequantization of one 16-byte chunk of codes into packed pairs, and scales.
// The tiled weight layout both kernels read is described in weight_only_gemv.cuh.
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
  static constexpr int kBlockK = 4 * kValuesPerChunk;  // columns of one 1024-byte tile
  // e2m1 / e4m3 are decoded by placing their bits in a bf16, which reads as the value times 2^-kDecodeShift
  static constexpr int kDecodeShift = FMT == kFp4 ? 126 : FMT == kFp8 ? 120 : 0;
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

// (a & b) | c in one LOP3 (the compiler splits it in two when both constants are immediates)
__device__ __forceinline__ uint32_t and_or(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t r;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
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

// Weights are read once and straight into shared memory (cp.async.cg: cached in L2 only, no registers held
// while in flight), so a warp can keep many tiles on the way; each lane later reads back only what it copied.
__device__ __forceinline__ void copy_async16(void* smem, const void* gmem) {
  const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem) : "memory");
}
// The same with zero fill: `valid` false writes 16 zero bytes and reads nothing (src must still be a pointer).
__device__ __forceinline__ void copy_async16_zfill(void* smem, const void* gmem, bool valid) {
  const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(valid ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void copy_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int PENDING>
__device__ __forceinline__ void copy_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(PENDING) : "memory");
}

// ---- dequantization of one 16-byte chunk into PAIRS packed T2 values (pair i = elements 2i, 2i+1) ----------

template <typename T>
struct Int4Magic;  // OR-ing a nibble into these bits gives base + nibble exactly
template <>
struct Int4Magic<__nv_bfloat16> {
  static constexpr uint32_t kBits = 0x43004300u;
  static constexpr float kBase = 128.f;
  static constexpr uint32_t kOne2 = 0x3F803F80u;  // 1.0 twice
};
template <>
struct Int4Magic<__half> {
  static constexpr uint32_t kBits = 0x64006400u;
  static constexpr float kBase = 1024.f;
  static constexpr uint32_t kOne2 = 0x3C003C00u;
};

// int4: (code - zero) [* scale]. Magic-number conversion: OR-ing a nibble into the mantissa of 128.0 (bf16) or
// 1024.0 (fp16) gives 128+code (1024+code) exactly; subtracting 128+zero (1024+zero) is exact; one rounding
// in the multiply by the scale (none when the scale is applied to the accumulators instead).
// SUB = false leaves base+code: the caller takes (base+zero) * sum(x) off the accumulators instead.
template <typename T, bool SUB, bool SCALE>
__device__ __forceinline__ void dequant_int4(const uint4& w, uint32_t zero2, uint32_t scale2, uint32_t (&p)[16]) {
  static_assert(SUB || !SCALE, "scaling base+code would scale the base");
  const uint32_t words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const uint32_t v = and_or(words[j] >> (4 * q), 0x000F000Fu, Int4Magic<T>::kBits);
      p[4 * j + q] = !SUB ? v : SCALE ? mul2<T>(sub2<T>(v, zero2), scale2) : sub2<T>(v, zero2);
    }
  }
}

// int8: byte -> fp32 through the 2^23 magic (exact), minus the zero (exact), [times the scale,] one rounding to
// T (none without the scale: |code - zero| <= 255 fits bf16 and fp16).
template <typename T, bool SCALE>
__device__ __forceinline__ void dequant_int8(const uint4& w, float zero, float scale, uint32_t (&p)[8]) {
  const uint32_t words[4] = {w.x, w.y, w.z, w.w};
  const float bias = 8388608.0f + zero;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
#pragma unroll
    for (int q = 0; q < 2; ++q) {
      const float lo = __uint_as_float(prmt(words[j], 0x4B000000u, 0x7440u + 2 * q)) - bias;
      const float hi = __uint_as_float(prmt(words[j], 0x4B000000u, 0x7441u + 2 * q)) - bias;
      p[2 * j + q] = SCALE ? pack2<T>(lo * scale, hi * scale) : pack2<T>(lo, hi);
    }
  }
}

// fp4 e2m1 -> bf16 bits: sign to bit 15, the 3 magnitude bits (e1 e0 m) to bits 8..6, giving the value
// times 2^-126 (e2m1's exponent bias is 1, bf16's 127; e=0 lands on bf16 subnormals, which are exact). One multiply
// by the block's multiplier (decode_scale: the block scale times 2^126 over the kernel's power-of-two post factor,
// a finite bf16 by construction) gives the weight; the product is exact. SPC multipliers per chunk: word j uses
// multiplier j / (4 / SPC).
template <int SPC>
__device__ __forceinline__ void dequant_fp4(const uint4& w, const uint32_t (&mult)[SPC], uint32_t (&p)[16]) {
  const uint32_t words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const uint32_t a = words[j] >> (4 * q);
      const uint32_t v = ((a << 6) & 0x01C001C0u) | ((a << 12) & 0x80008000u);
      p[4 * j + q] = mul2<__nv_bfloat16>(v, mult[j / (4 / SPC)]);
    }
  }
}

// Two e4m3 bytes at bits 0 and 16 -> bf16x2 bits: sign to bit 15, exponent+mantissa (7 bits) to bits 10..4 of each
// half: the values times 2^-120 (subnormal codes land on bf16 subnormals, exact).
__device__ __forceinline__ uint32_t e4m3x2_bits(uint32_t y) {
  return ((y << 4) & 0x07F007F0u) | ((y << 8) & 0x80008000u);
}

// fp8 e4m3 weights -> bf16 pairs (e4m3x2_bits), times the block's multiplier as for e2m1.
__device__ __forceinline__ void dequant_fp8(const uint4& w, uint32_t mult, uint32_t (&p)[8]) {
  const uint32_t words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
#pragma unroll
    for (int q = 0; q < 2; ++q) {
      const uint32_t y = prmt(words[j], 0u, q ? 0x4342u : 0x4140u);  // bytes (2q, 2q+1) at bits 0 and 16
      p[2 * j + q] = mul2<__nv_bfloat16>(e4m3x2_bits(y), mult);
    }
  }
}

// The value an int4 code's magic-number conversion is reduced by: base + zero point (8 when symmetric).
template <typename T, bool HAS_ZP>
__device__ __forceinline__ float int4_zero(uint32_t zero_code) {
  return Int4Magic<T>::kBase + (HAS_ZP ? float(zero_code) : 8.f);
}

// One lane's 16-byte chunk of codes -> its packed pairs, by format: integers minus their zero point (int4 without SUB:
// base + code, see dequant_int4), times the decoded scale s[0] when SCALE; e2m1 / e4m3 always times their block
// multipliers s[i] (decode_scale). The GEMV, the GEMM and the wgmma GEMM differ only in SUB and SCALE.
template <typename T, int FMT, int SPC, bool HAS_ZP, bool SUB, bool SCALE, typename S>
__device__ __forceinline__ void dequant_chunk(const uint4& w, const S (&s)[SPC], uint32_t zero_code,
                                              uint32_t (&p)[FormatTraits<FMT>::kValuesPerChunk / 2]) {
  if constexpr (FMT == kInt4) {
    const uint32_t zero2 = splat2<T>(from_float<T>(int4_zero<T, HAS_ZP>(zero_code)));
    dequant_int4<T, SUB, SCALE>(w, zero2, splat2<T>(from_float<T>(s[0])), p);
  } else if constexpr (FMT == kInt8) {
    dequant_int8<T, SCALE>(w, HAS_ZP ? float(zero_code) : 128.f, s[0], p);
  } else if constexpr (FMT == kFp4) {
    dequant_fp4<SPC>(w, s, p);
  } else {
    dequant_fp8(w, s[0], p);
  }
}

// ---- scales ------------------------------------------------------------------------------------------

// How the per-group scales are stored: in the activation dtype (int formats), e4m3 times a global factor
// (NVFP4), or e8m0 powers of two (MX).
enum ScaleKind : int { kScaleT = 0, kScaleE4m3 = 1, kScaleE8m0 = 2 };


// One scale (or zero) code as stored: T bits for the int formats, one byte for e4m3 / e8m0.
template <int SK>
__device__ __forceinline__ uint32_t load_scale_code(const uint8_t* scales, size_t idx) {
  if constexpr (SK == kScaleT) {
    return __ldg(reinterpret_cast<const unsigned short*>(scales) + idx);
  } else {
    return __ldg(scales + idx);
  }
}

// Float weights: the block multipliers the decoded pairs get are the block scales times 2^kDecodeShift divided by a
// power of two P chosen so that every multiplier is a finite bf16, and the fp32 accumulators are multiplied by
// `out` = P (times NVFP4's global factor alpha) once at the end. One bf16 multiply per pair, always exact:
//   NVFP4 (e4m3 scales <= 448 < 2^9): P = 2^9, the multiplier e4m3 * 2^(shift - 9), out = alpha * 2^9;
//   MX (e8m0 codes c): P = 2^p from the op's `alpha` (= 2^p, prepared as max(0, max c + shift - 254)), the
//   multiplier 2^(c - 127 + shift - p) <= 2^127.
// Integer formats: out = 1 (their scales are applied in the dequantization or on the accumulators).
struct ScalePost {
  float out;
  int p;
};

constexpr int kE4m3ScaleShift = 9;  // 448, e4m3's largest value, is under 2^9

template <int SK>
__device__ __forceinline__ ScalePost scale_post(const float* alpha) {
  if constexpr (SK == kScaleE4m3) {
    return {__ldg(alpha) * float(1 << kE4m3ScaleShift), 0};
  } else if constexpr (SK == kScaleE8m0) {
    const float a = __ldg(alpha);
    return {a, int((__float_as_uint(a) >> 23) & 0xFF) - 127};
  } else {
    return {1.f, 0};
  }
}

// What decode_scale gives: the scale's value (int formats, fp32) or the block multiplier as bf16x2 (float formats).
template <int SK>
using ScaleOf = typename std::conditional<SK == kScaleT, float, uint32_t>::type;

// A scale code as the value (int formats) or the block multiplier, bf16 twice (MX, see ScalePost), it stands for; p
// from scale_post. The MX multiplier 2^(c - 127 + shift - p) is built as bf16 bits. Below bf16's normal range it is 0:
// it would multiply decoded values under 2^-111 (e4m3 times 2^-120; e2m1 times 2^-126) into products under 2^-238,
// which bf16 rounds to zero anyway (its smallest subnormal is 2^-133). The NaN code stays NaN. (e4m3 scales come in
// pairs: decode_scales.)
template <typename T, int SK, int FMT>
__device__ __forceinline__ ScaleOf<SK> decode_scale(uint32_t code, int p) {
  static_assert(SK != kScaleE4m3, "e4m3 scales are decoded two at a time (decode_scales)");
  if constexpr (SK == kScaleT) {
    const uint16_t bits = uint16_t(code);
    return to_float<T>(*reinterpret_cast<const T*>(&bits));
  } else {
    const int e = int(code) + FormatTraits<FMT>::kDecodeShift - p;
    const uint32_t bits = code == 0xFF ? 0x7FC0u : e >= 1 ? uint32_t(e) << 7 : 0u;
    return bits * 0x10001u;
  }
}

// The SPC scales of one chunk, decoded from the codes BandScales::load left. NVFP4's two e4m3 codes arrive as one
// 16-bit load in codes[0] and are decoded side by side, exactly: placed in bf16 bits (the values times 2^-120, see
// e4m3x2_bits), then two exact multiplies by powers of two to the values times 2^(shift - 9), each splatted.
template <typename T, int SK, int FMT, int SPC>
__device__ __forceinline__ void decode_scales(const uint32_t (&codes)[SPC], int p, ScaleOf<SK> (&s)[SPC]) {
  if constexpr (SK == kScaleE4m3) {
    static_assert(SPC == 2, "e4m3 block scales are NVFP4's: two per 32-value chunk");
    constexpr uint32_t kUp = uint32_t(127 + 127) << 7;  // 2^127
    constexpr uint32_t kRest = uint32_t(127 + FormatTraits<FMT>::kDecodeShift - kE4m3ScaleShift + 120 - 127) << 7;
    const uint32_t v = e4m3x2_bits(prmt(codes[0], 0u, 0x4140u));  // code 0 at bits 0..7, code 1 at bits 16..23
    const uint32_t both = mul2<__nv_bfloat16>(mul2<__nv_bfloat16>(v, kUp * 0x10001u), kRest * 0x10001u);
    s[0] = prmt(both, 0u, 0x1010u);
    s[1] = prmt(both, 0u, 0x3232u);
  } else {
#pragma unroll
    for (int i = 0; i < SPC; ++i) s[i] = decode_scale<T, SK, FMT>(codes[i], p);
  }
}

// A lane's scale (and zero-point) codes of one 16-row band: rows g and g+8, read for the chunk of VPC columns that
// starts at `col` (SPC scales per chunk). The GEMV and the GEMM load them the same way.
template <int SK, int SPC, int VPC, bool HAS_ZP>
struct BandScales {
  const uint8_t* srow[2];
  const uint8_t* zrow[2];

  __device__ __forceinline__ void init(const uint8_t* scales, const uint8_t* zeros, int band, int g, int G) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const size_t row = size_t(band * 16 + 8 * r + g) * G;
      srow[r] = scales + row * (SK == kScaleT ? 2 : 1);
      zrow[r] = zeros + row;
    }
  }

  __device__ __forceinline__ void load(int col, int group_shift, uint32_t (&sv)[2][SPC], uint32_t (&zv)[2]) const {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      if constexpr (SK == kScaleE4m3) {  // NVFP4 (SPC = 2): the chunk's two codes are adjacent bytes at an even
        // index: one 16-bit load, split only when decoded (decode_scales), so that nothing waits for it here
        sv[r][0] = __ldg(reinterpret_cast<const unsigned short*>(srow[r] + (col >> group_shift)));
        sv[r][1] = 0u;
      } else {
#pragma unroll
        for (int i = 0; i < SPC; ++i) sv[r][i] = load_scale_code<SK>(srow[r], (col + i * (VPC / SPC)) >> group_shift);
      }
      if constexpr (HAS_ZP) zv[r] = __ldg(zrow[r] + (col >> group_shift));
    }
  }
};

}  // namespace quantops
