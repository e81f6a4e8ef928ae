// The Hopper (wgmma) weight-only GEMM for integer weights (int4 / int8): one translation unit per kernel and
// weight kind, so that nvcc builds them in parallel.
#include "weight_only_dispatch.cuh"
#include "weight_only_wgmma.cuh"

namespace quantops {

cudaError_t launch_weight_only_wgmma_int(const GemvArgs& a, cudaStream_t stream) {
  return dispatch_int<WgmmaLauncher>(a, stream);
}

}  // namespace quantops
