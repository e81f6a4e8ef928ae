// The weight-only GEMM (batches past the GEMV) for integer weights (int4 / int8): one translation unit per kernel and
// weight kind, so that nvcc builds them in parallel.
#include "weight_only_dispatch.cuh"
#include "weight_only_gemm.cuh"

namespace quantops {

cudaError_t launch_weight_only_gemm_int(const GemvArgs& a, cudaStream_t stream) {
  return dispatch_int<GemmLauncher>(a, stream);
}

}  // namespace quantops
