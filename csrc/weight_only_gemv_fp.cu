// Float weights (NVFP4 / MXFP4 e2m1, MXFP8 e4m3) with their block scales as stored (e4m3 + global, e8m0):
// bf16 activations only (those scales can leave fp16's range).
#include "weight_only_gemv.cuh"

namespace quantops {

template <int FMT, int NT>
static cudaError_t dispatch_spc(const GemvArgs& a, int ksplit, cudaStream_t stream) {
  if constexpr (FMT == kFp4) {
    // NVFP4: blocks of 16 (two scales per 32-value chunk), e4m3 scales times alpha; MXFP4: blocks of 32, e8m0
    if (a.group_size == 16) return launch_mt<__nv_bfloat16, FMT, NT, 2, kScaleE4m3, false>(a, ksplit, stream);
  }
  return launch_mt<__nv_bfloat16, FMT, NT, 1, kScaleE8m0, false>(a, ksplit, stream);
}

template <int FMT>
static cudaError_t dispatch_nt(const GemvArgs& a, cudaStream_t stream) {
  int ksplit, nt;
  choose_split(a, FormatTraits<FMT>::kValuesPerChunk, &ksplit, &nt);
  if (nt == 2) return dispatch_spc<FMT, 2>(a, ksplit, stream);
  if (nt == 4) return dispatch_spc<FMT, 4>(a, ksplit, stream);
  return cudaErrorInvalidValue;
}

cudaError_t launch_weight_only_gemv_fp(const GemvArgs& a, cudaStream_t stream) {
  if (!a.bf16 || a.zeros) return cudaErrorInvalidValue;
  if (a.fmt == kFp4 && a.group_size == 16 && a.alpha == nullptr) return cudaErrorInvalidValue;
  if (a.fmt == kFp4) return dispatch_nt<kFp4>(a, stream);
  if (a.fmt == kFp8) return dispatch_nt<kFp8>(a, stream);
  return cudaErrorInvalidValue;
}

}  // namespace quantops
