// Runtime arguments -> kernel template (shared by the GEMV and the GEMM: L::run<T, FMT, SPC, SK, HAS_ZP, POST>).
// Integer weights: bf16 and fp16, with or without zero points, scales on the accumulators when a group spans
// whole tiles (else on the dequantized weights). Float weights (NVFP4 / MXFP4 e2m1, MXFP8 e4m3) with their block
// scales as stored (e4m3 + global, e8m0): bf16 only (those scales can leave fp16's range).
#pragma once

#include "weight_only_decode.cuh"

namespace quantops {

template <class L, typename T, int FMT, bool HAS_ZP>
cudaError_t dispatch_post(const GemvArgs& a, cudaStream_t stream) {
  const bool post = a.G == 1 || a.group_size % FormatTraits<FMT>::kBlockK == 0;
  return post ? L::template run<T, FMT, 1, kScaleT, HAS_ZP, true>(a, stream)
              : L::template run<T, FMT, 1, kScaleT, HAS_ZP, false>(a, stream);
}

template <class L, typename T, int FMT>
cudaError_t dispatch_zp(const GemvArgs& a, cudaStream_t stream) {
  return a.zeros ? dispatch_post<L, T, FMT, true>(a, stream) : dispatch_post<L, T, FMT, false>(a, stream);
}

template <class L>
cudaError_t dispatch_int(const GemvArgs& a, cudaStream_t stream) {
  if (a.fmt == kInt4) {
    return a.bf16 ? dispatch_zp<L, __nv_bfloat16, kInt4>(a, stream) : dispatch_zp<L, __half, kInt4>(a, stream);
  }
  if (a.fmt == kInt8) {
    return a.bf16 ? dispatch_zp<L, __nv_bfloat16, kInt8>(a, stream) : dispatch_zp<L, __half, kInt8>(a, stream);
  }
  return cudaErrorInvalidValue;
}

template <class L>
cudaError_t dispatch_fp(const GemvArgs& a, cudaStream_t stream) {
  if (!a.bf16 || a.zeros || a.alpha == nullptr) return cudaErrorInvalidValue;
  if (a.fmt == kFp4 && a.group_size == 16) {  // NVFP4: two e4m3 scales per 32-value chunk, times alpha
    return L::template run<__nv_bfloat16, kFp4, 2, kScaleE4m3, false, false>(a, stream);
  }
  if (a.fmt == kFp4) return L::template run<__nv_bfloat16, kFp4, 1, kScaleE8m0, false, false>(a, stream);
  if (a.fmt == kFp8) return L::template run<__nv_bfloat16, kFp8, 1, kScaleE8m0, false, false>(a, stream);
  return cudaErrorInvalidValue;
}

}  // namespace quantops
