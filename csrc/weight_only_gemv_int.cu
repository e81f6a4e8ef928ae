// Integer weights (int4 / int8, pack-quantized): bf16 and fp16 activations, with or without zero points; scales
// on the accumulators when a group spans whole tiles, else on the dequantized weights.
#include "weight_only_gemv.cuh"

namespace quantops {

template <typename T, int FMT, bool HAS_ZP>
static cudaError_t dispatch_post(const GemvArgs& a, cudaStream_t stream) {
  const bool post = a.G == 1 || a.group_size % FormatTraits<FMT>::kBlockK == 0;
  return post ? launch_mh<T, FMT, 1, kScaleT, HAS_ZP, true>(a, stream)
              : launch_mh<T, FMT, 1, kScaleT, HAS_ZP, false>(a, stream);
}

template <typename T, int FMT>
static cudaError_t dispatch_zp(const GemvArgs& a, cudaStream_t stream) {
  return a.zeros ? dispatch_post<T, FMT, true>(a, stream) : dispatch_post<T, FMT, false>(a, stream);
}

cudaError_t launch_weight_only_gemv_int(const GemvArgs& a, cudaStream_t stream) {
  if (a.fmt == kInt4) {
    return a.bf16 ? dispatch_zp<__nv_bfloat16, kInt4>(a, stream) : dispatch_zp<__half, kInt4>(a, stream);
  }
  if (a.fmt == kInt8) {
    return a.bf16 ? dispatch_zp<__nv_bfloat16, kInt8>(a, stream) : dispatch_zp<__half, kInt8>(a, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace quantops
