// Host-side interface of the weight-only GEMV (compiled by both nvcc and the host C++ compiler).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace quantops {

enum WeightFormat : int { kInt4 = 0, kInt8 = 1, kFp4 = 2, kFp8 = 3 };

constexpr int kMaxRows = 64;  // rows of x one launch covers (up to 4 MMA tiles of 16)

struct GemvArgs {
  const void* x;
  const void* w;
  const void* scales;
  const uint8_t* zeros;  // nullptr: symmetric
  const float* alpha;    // NVFP4: 1 / weight_global_scale (device scalar); else nullptr
  void* out;
  int M, N, K, G, group_size;
  int fmt;
  bool bf16;   // activation dtype: bf16 (true) or fp16
  int ksplit;  // warps per block splitting K; 0 = choose
  int nt;      // 8-row tiles per warp (2 or 4); 0 = choose
  int num_sms;
};

// Launch for M <= kMaxRows. Returns cudaSuccess or the launch error; unsupported combinations give
// cudaErrorInvalidValue (the Python side validates before calling).
cudaError_t launch_weight_only_gemv_int(const GemvArgs& a, cudaStream_t stream);
cudaError_t launch_weight_only_gemv_fp(const GemvArgs& a, cudaStream_t stream);

}  // namespace quantops
