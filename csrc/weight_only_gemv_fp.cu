// Float weights (NVFP4 / MXFP4 e2m1, MXFP8 e4m3) with their block scales as stored (e4m3 + global, e8m0):
// bf16 activations only (those scales can leave fp16's range).
#include "weight_only_gemv.cuh"

namespace quantops {

cudaError_t launch_weight_only_gemv_fp(const GemvArgs& a, cudaStream_t stream) {
  if (!a.bf16 || a.zeros) return cudaErrorInvalidValue;
  if (a.fmt == kFp4 && a.group_size == 16) {  // NVFP4: two e4m3 scales per 32-value chunk, times alpha
    if (a.alpha == nullptr) return cudaErrorInvalidValue;
    return launch_mh<__nv_bfloat16, kFp4, 2, kScaleE4m3, false, false>(a, stream);
  }
  if (a.fmt == kFp4) return launch_mh<__nv_bfloat16, kFp4, 1, kScaleE8m0, false, false>(a, stream);
  if (a.fmt == kFp8) return launch_mh<__nv_bfloat16, kFp8, 1, kScaleE8m0, false, false>(a, stream);
  return cudaErrorInvalidValue;
}

}  // namespace quantops
