// Host-side interface of the weight-only GEMV (compiled by both nvcc and the host C++ compiler).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace quantops {

enum WeightFormat : int { kInt4 = 0, kInt8 = 1, kFp4 = 2, kFp8 = 3 };

constexpr int kMaxRows = 16;  // rows of x one launch covers (two 8-column MMA halves)

struct GemvArgs {
  const void* x;         // [M, K], row stride K
  const void* w;         // tiles: [n_pad / 16, tiles_k, 1024 bytes]
  const void* scales;    // [n_pad, G]
  const uint8_t* zeros;  // [n_pad, G] or nullptr: symmetric
  const float* alpha;    // NVFP4: 1 / weight_global_scale (device scalar); else nullptr
  void* out;             // [M, N]
  int M, N, K;           // real sizes
  int n_pad, tiles_k, G;
  int group_shift;       // column -> group: col >> group_shift (31 when G == 1)
  int group_size;
  int fmt;
  bool bf16;   // activation dtype: bf16 (true) or fp16
  int ksplit;  // warps per block splitting K; 0 = choose
  int num_sms;
  int max_smem;  // shared memory a block may opt in to (cudaDevAttrMaxSharedMemoryPerBlockOptin); 0: 48 KiB
};

// Launch for M <= kMaxRows. Returns cudaSuccess or the launch error; unsupported combinations give
// cudaErrorInvalidValue (the Python side validates before calling).
cudaError_t launch_weight_only_gemv_int(const GemvArgs& a, cudaStream_t stream);
cudaError_t launch_weight_only_gemv_fp(const GemvArgs& a, cudaStream_t stream);

}  // namespace quantops
