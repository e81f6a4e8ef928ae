// Float weights (NVFP4 / MXFP4 e2m1, MXFP8 e4m3) with fp32 block scales: bf16 activations only (the e8m0
// and e4m3/global scales can leave fp16's range).
#include "weight_only_gemv.cuh"

namespace quantops {

template <int FMT, int NT>
static cudaError_t dispatch_spc(const GemvArgs& a, int ksplit, cudaStream_t stream) {
  // NVFP4 blocks of 16 put two scales in one 32-value chunk
  if constexpr (FMT == kFp4) {
    if (a.group_size == 16) return launch_typed<__nv_bfloat16, FMT, NT, 2, false>(a, ksplit, stream);
  }
  return launch_typed<__nv_bfloat16, FMT, NT, 1, false>(a, ksplit, stream);
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
  if (a.fmt == kFp4) return dispatch_nt<kFp4>(a, stream);
  if (a.fmt == kFp8) return dispatch_nt<kFp8>(a, stream);
  return cudaErrorInvalidValue;
}

}  // namespace quantops
