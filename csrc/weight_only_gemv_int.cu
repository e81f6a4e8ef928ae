// Integer weights (int4 / int8, pack-quantized): bf16 and fp16 activations, with or without zero points.
#include "weight_only_gemv.cuh"

namespace quantops {

template <typename T, int FMT, int NT>
static cudaError_t dispatch_zp(const GemvArgs& a, int ksplit, cudaStream_t stream) {
  return a.zeros ? launch_mt<T, FMT, NT, 1, kScaleT, true>(a, ksplit, stream)
                 : launch_mt<T, FMT, NT, 1, kScaleT, false>(a, ksplit, stream);
}

template <typename T, int FMT>
static cudaError_t dispatch_nt(const GemvArgs& a, cudaStream_t stream) {
  int ksplit, nt;
  choose_split(a, FormatTraits<FMT>::kValuesPerChunk, &ksplit, &nt);
  if (nt == 2) return dispatch_zp<T, FMT, 2>(a, ksplit, stream);
  if (nt == 4) return dispatch_zp<T, FMT, 4>(a, ksplit, stream);
  return cudaErrorInvalidValue;
}

cudaError_t launch_weight_only_gemv_int(const GemvArgs& a, cudaStream_t stream) {
  if (a.fmt == kInt4) {
    return a.bf16 ? dispatch_nt<__nv_bfloat16, kInt4>(a, stream) : dispatch_nt<__half, kInt4>(a, stream);
  }
  if (a.fmt == kInt8) {
    return a.bf16 ? dispatch_nt<__nv_bfloat16, kInt8>(a, stream) : dispatch_nt<__half, kInt8>(a, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace quantops
