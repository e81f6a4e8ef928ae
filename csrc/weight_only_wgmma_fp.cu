// The Hopper (wgmma) weight-only GEMM for float weights (e2m1 / e4m3): one translation unit per kernel and
// weight kind, so that nvcc builds them in parallel.
#include "weight_only_dispatch.cuh"
#include "weight_only_wgmma.cuh"

namespace quantops {

cudaError_t launch_weight_only_wgmma_fp(const GemvArgs& a, cudaStream_t stream) {
  return dispatch_fp<WgmmaLauncher>(a, stream);
}

}  // namespace quantops
