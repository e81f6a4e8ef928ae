// Host-side interface of the weight-only GEMV and GEMM (compiled by both nvcc and the host C++ compiler).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

namespace quantops {

enum WeightFormat : int { kInt4 = 0, kInt8 = 1, kFp4 = 2, kFp8 = 3 };

constexpr int kMaxRows = 16;  // rows of x one GEMV launch covers (two 8-column MMA halves)

struct GemvArgs {
  const void* x;         // [M, K], row stride K
  const void* w;         // tiles: [n_pad / 16, tiles_k, 1024 bytes]
  const void* scales;    // [n_pad, G]
  const uint8_t* zeros;  // [n_pad, G] or nullptr: symmetric
  const float* alpha;    // float formats (device scalar): NVFP4 1 / weight_global_scale, MX 2^p (ScalePost); else nullptr
  void* out;             // [M, N]
  int M, N, K;           // real sizes
  int n_pad, tiles_k, G;
  int group_shift;       // column -> group: col >> group_shift (31 when G == 1)
  int group_size;
  int fmt;
  bool bf16;   // activation dtype: bf16 (true) or fp16
  int ksplit;  // GEMV: warps per block splitting K; GEMM: blocks splitting K; 0 = choose
  int num_sms;
  int max_smem;  // shared memory a block may opt in to (cudaDevAttrMaxSharedMemoryPerBlockOptin); 0: 48 KiB
  float* partial = nullptr;  // GEMM with split K: fp32 [chunks * splits * mt * n_pad] (GemmPlan)
  int* arrivals = nullptr;   // GEMM with split K: int32 [chunks * blocks_n], zero before the launch
  void* x_perm = nullptr;    // Hopper GEMM: [M, tiles_k * tile_k] in x's dtype, x in the wgmma's k order
};

// SMs to fill: the device's count as the binding reads it, else an H100/H200's.
inline int sm_count(const GemvArgs& a) { return a.num_sms > 0 ? a.num_sms : 132; }

// The GEMM's block (weight_only_gemm.cuh): 8 warps of two 16-row bands each (256 weight rows), 4 K tiles in flight.
constexpr int kGemmWarps = 8;
constexpr int kGemmBands = 2;
constexpr int kGemmStages = 4;
constexpr int kGemmRows = kGemmWarps * kGemmBands * 16;

// How the GEMM covers a launch: chunks of mt rows of x, row blocks of kGemmRows weight rows, K split over `splits`
// blocks (about one block per SM; at least two K tiles each unless forced by ksplit).
struct GemmPlan {
  int mt, chunks, blocks_n, splits;
  bool cluster = false;  // Hopper GEMM: the K splits add up inside a thread-block cluster, not through `partial`
};

// The Hopper GEMM's block (weight_only_wgmma.cuh): one warpgroup, two 64-row wgmma tiles (128 weight rows); two
// blocks per SM, so that one's dequantization overlaps the other's wgmmas.
constexpr int kWgmmaWarps = 4;
constexpr int kWgmmaRows = kWgmmaWarps * 2 * 16;
constexpr int kWgmmaBlocksPerSm = 2;

// The plan of a GEMM whose blocks cover rows_per_block weight rows, blocks_per_sm of them resident per SM.
inline GemmPlan plan_weight_only_gemm(const GemvArgs& a, int rows_per_block = kGemmRows, int blocks_per_sm = 1) {
  GemmPlan p;
  p.mt = a.M <= 16 ? 16 : a.M <= 32 ? 32 : 64;
  p.chunks = (a.M + p.mt - 1) / p.mt;
  p.blocks_n = (a.n_pad + rows_per_block - 1) / rows_per_block;
  int s;
  if (a.ksplit > 0) {
    s = a.ksplit;
  } else {
    s = sm_count(a) * blocks_per_sm / (p.blocks_n * p.chunks);
    if (s > a.tiles_k / 2) s = a.tiles_k / 2;
  }
  if (s > a.tiles_k) s = a.tiles_k;
  p.splits = s > 1 ? s : 1;
  return p;
}
// Two K splits of the Hopper GEMM add up in a cluster of their two blocks (H100, same-run sweep: 8192x8192 M=128
// 44 vs 50 us); more go through the global workspace -- clusters of 4 or 8 did not all fit at once (8192x8192
// M=64, 4 splits: 41 vs 34 us).
constexpr int kMaxClusterSplits = 2;
// K splits of the Hopper GEMM (unless forced): two blocks per SM (both resident) while each split keeps at least 12 K
// tiles, else one per SM -- at least two splits while the row blocks alone leave SMs idle. Filling both slots of every
// SM on short K cost more in the split-K sum than it won (H200 sweep: 4096x4096 M=64 / M=128 17.4 / 18.9 us with 4 / 2
// splits against 19.8 / 22.0 us with 8 / 4; 6144x4096 M=64 18.5 vs 20.9 us); long K keeps it (4096x14336 M=32:
// 8 splits 24.0 us, 7 splits 25.2; M=128: 4 splits 46.6 us, 2 splits 49.9).
inline GemmPlan plan_weight_only_wgmma(const GemvArgs& a) {
  GemmPlan p = plan_weight_only_gemm(a, kWgmmaRows, kWgmmaBlocksPerSm);  // p.splits: two blocks per SM
  if (a.ksplit <= 0 && a.tiles_k < 12 * p.splits) {
    const int blocks = p.blocks_n * p.chunks;
    int s = sm_count(a) / blocks;
    if (s < 2 && blocks < sm_count(a)) s = 2;
    p.splits = std::max(1, std::min(s, a.tiles_k / 2));
  }
  p.cluster = p.splits > 1 && p.splits <= kMaxClusterSplits;
  return p;
}

// 16-byte units of one 16-bit x row across a K tile (tile_k = 512 / bits columns): 16 for 4-bit, 8 for 8-bit.
inline constexpr int gemm_x_units_per_row(int fmt) { return (fmt == kInt4 || fmt == kFp4) ? 16 : 8; }

// Shared memory of one GEMM block: kGemmStages stages of (x tile [mt, tile_k] + every warp's 1024-byte band tiles).
inline size_t gemm_smem_bytes(const GemvArgs& a, const GemmPlan& p) {
  return size_t(kGemmStages) * (p.mt * gemm_x_units_per_row(a.fmt) + kGemmWarps * kGemmBands * 64) * 16;
}

// The Hopper GEMM's shared memory: kGemmStages stages of (x tile [mt, tile_k] + 8 band tiles of 1024 bytes), + 1024
// for the alignment of its swizzled x tiles.
inline size_t wgmma_smem_bytes(int fmt, int mt) {
  return size_t(kGemmStages) * (mt * gemm_x_units_per_row(fmt) * 16 + kWgmmaWarps * 2 * 1024) + 1024;
}

// Launch for M <= kMaxRows (GEMV) or any M (GEMM). Returns cudaSuccess or the launch error; unsupported
// combinations (and a GEMM needing more shared memory than the device has) give cudaErrorInvalidValue (the
// Python side validates before calling).
cudaError_t launch_weight_only_gemv_int(const GemvArgs& a, cudaStream_t stream);
cudaError_t launch_weight_only_gemv_fp(const GemvArgs& a, cudaStream_t stream);
cudaError_t launch_weight_only_gemm_int(const GemvArgs& a, cudaStream_t stream);
cudaError_t launch_weight_only_gemm_fp(const GemvArgs& a, cudaStream_t stream);
// sm_90a builds only (the kernel traps elsewhere): the caller checks the device is sm_90
cudaError_t launch_weight_only_wgmma_int(const GemvArgs& a, cudaStream_t stream);
cudaError_t launch_weight_only_wgmma_fp(const GemvArgs& a, cudaStream_t stream);

}  // namespace quantops
