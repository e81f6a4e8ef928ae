// Weight-only GEMM for batched decode and short prefill (M > 16 per launch, in chunks of up to 64 rows of x):
// the GEMV's tiled weights and dequantization (weight_only_gemv.cuh), with x staged once per block in shared
// memory and shared by all its warps.
//
// Why not the GEMV in chunks of 16 rows: each GEMV warp reads its own copy of x, so at M = 64 the x traffic out
// of L2 is 16x the weight traffic and the kernel is L2-bound (8192x8192: 76 us, bf16 cuBLAS 42 us). Here a
// block of 8 warps covers 256 weight rows (two 16-row bands per warp) and reads each x tile once for all of
// them; at M = 64 the MMAs are the limit (m16n8k16, 64 per band and tile), not the bytes.
//
// Block: 8 warps x 2 bands = 256 rows, one chunk of MT = 8 * MH rows of x, one range of K tiles (split K over
// blockIdx.y when the row blocks alone would leave SMs idle). A 4-stage cp.async pipeline holds, per stage,
// the x tile [MT, tile_k] (every thread copies a share) and each warp's weight tiles (each lane its own 2 x 16
// bytes per band, read back only by itself); one __syncthreads per tile makes the x tile visible to all.
// x rows in shared memory are XOR-swizzled in 16-byte units so that a quarter warp's 16-byte reads (two rows,
// four lanes' chunks each) hit eight different bank groups.
// Split K: each block writes fp32 partial sums; the last block of a row block to arrive (a counter per row block
// and chunk, zeroed by the caller, reset by that block) adds the splits in split order -- deterministic -- and
// writes the output.
#pragma once

#include "weight_only_decode.cuh"

namespace quantops {

// Place of 16-byte unit u of x row r inside its row: lanes (g, t) read units 4t..4t+3 (2t, 2t+1 for 8-bit) of
// row g; t and t+2 would share banks (64 bytes apart), as would rows g and g+1 (a row is 128 or 256 bytes).
__device__ __forceinline__ int x_unit(int u, int r) { return u ^ (((u >> 3) & 1) << 1) ^ (r & 1); }

// K tiles [first, first + count) of split `split` out of `splits` (the last ones may get fewer, or none).
struct KRange {
  int first, count;
};
__device__ __forceinline__ KRange k_split_range(int tiles_k, int splits, int split) {
  const int per = (tiles_k + splits - 1) / splits;
  const int first = split * per;
  return {first, max(0, min(tiles_k, first + per) - first)};
}

// A warp's weight bands in a GEMM block (here and weight_only_wgmma.cuh; the two differ only in which bands a warp
// owns): NT bands of 16 weight rows, each lane copying its own two 16-byte chunks per band and K tile into shared
// memory and reading the bands' scale codes into registers. Bands past the weight (a partial row block) copy nothing.
template <int SK, int SPC, int VPC, bool HAS_ZP, int NT>
struct WarpBands {
  int band[NT];
  bool valid[NT];
  const uint4* wrow[NT];
  BandScales<SK, SPC, VPC, HAS_ZP> bs[NT];

  // bands[t]: the index of the warp's t-th band; its K tiles are read from `first` on
  __device__ __forceinline__ void init(const int (&bands)[NT], int n_bands, const uint4* w, const uint8_t* scales,
                                       const uint8_t* zeros, int tiles_k, int first, int lane, int g, int G) {
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      band[t] = bands[t];
      valid[t] = band[t] < n_bands;
      const int b = valid[t] ? band[t] : 0;
      wrow[t] = w + ((size_t)b * tiles_k + first) * 64 + lane;
      bs[t].init(scales, zeros, b, g, G);
    }
  }

  // K tile first + j: band t's chunks to dst[t * 64] and dst[t * 64 + 32] (dst: this lane's first chunk of the stage),
  // the scale (and zero) codes of the lane's columns from col into sv / zv
  __device__ __forceinline__ void copy(int j, uint4* dst, int col, int group_shift, uint32_t (&sv)[NT][2][SPC],
                                       uint32_t (&zv)[NT][2]) const {
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      if (valid[t]) {
        copy_async16(dst + t * 64, wrow[t] + j * 64);
        copy_async16(dst + t * 64 + 32, wrow[t] + j * 64 + 32);
        bs[t].load(col, group_shift, sv[t], zv[t]);
      }
    }
  }
};

// The end of a GEMM block (here and weight_only_wgmma.cuh). each_output(f) calls f(valid band, weight row n, chunk
// row m, value) for every accumulator. One split: the values go straight to `out`. Several: fp32 partial sums
// [chunk][split][MT][n_pad]; the last block of a row block to arrive (a counter per row block and chunk, zeroed by
// the caller, reset by that block) adds the splits in split order -- deterministic -- and writes the output.
template <typename T, int MT, int ROWS, int THREADS, class Outputs>
__device__ __forceinline__ void gemm_store(const Outputs& each_output, T* __restrict__ out, float* __restrict__ partial,
                                           int* __restrict__ arrivals, int M, int N, int n_pad, int m0, int split,
                                           int splits) {
  if (splits == 1) {
    each_output([&](bool, int n, int m, float v) {
      if (m0 + m < M && n < N) out[(size_t)(m0 + m) * N + n] = from_float<T>(v);
    });
    return;
  }
  // partial sums: [chunk][split][MT][n_pad] fp32
  float* mine = partial + ((size_t)blockIdx.z * splits + split) * MT * n_pad;
  each_output([&](bool ok, int n, int m, float v) {
    if (ok && m0 + m < M) mine[(size_t)m * n_pad + n] = v;
  });
  // The block's partial sums are ordered before its count by the barrier and thread 0's release; the last block's
  // acquire (and its barrier) orders every block's sums before its reads. One fence per block, not per thread.
  __syncthreads();
  __shared__ int last;
  int* counter = arrivals + blockIdx.z * gridDim.x + blockIdx.x;
  if (threadIdx.x == 0) {
    int before;
    asm volatile("atom.acq_rel.gpu.global.add.s32 %0, [%1], 1;\n" : "=r"(before) : "l"(counter) : "memory");
    last = before == splits - 1;
  }
  __syncthreads();
  if (!last) return;
  // the sum, four outputs per thread and load: every split's loads of a thread in flight together (they come
  // from L2, a few hundred cycles each)
  const float* chunk = partial + (size_t)blockIdx.z * splits * MT * n_pad;
  const int n0 = blockIdx.x * ROWS;
  constexpr int QUADS = MT * ROWS / 4 / THREADS;
  float4 sum[QUADS];
#pragma unroll
  for (int q = 0; q < QUADS; ++q) sum[q] = make_float4(0.f, 0.f, 0.f, 0.f);
  for (int sp = 0; sp < splits; ++sp) {
#pragma unroll
    for (int q = 0; q < QUADS; ++q) {
      const int i = threadIdx.x + q * THREADS;
      const int m = i / (ROWS / 4), n = n0 + (i % (ROWS / 4)) * 4;
      if (m0 + m < M && n < n_pad) {
        const float4 v = __ldcg(reinterpret_cast<const float4*>(chunk + ((size_t)sp * MT + m) * n_pad + n));
        sum[q].x += v.x, sum[q].y += v.y, sum[q].z += v.z, sum[q].w += v.w;
      }
    }
  }
#pragma unroll
  for (int q = 0; q < QUADS; ++q) {
    const int i = threadIdx.x + q * THREADS;
    const int m = i / (ROWS / 4), n = n0 + (i % (ROWS / 4)) * 4;
    const float v[4] = {sum[q].x, sum[q].y, sum[q].z, sum[q].w};
#pragma unroll
    for (int e = 0; e < 4; ++e)
      if (m0 + m < M && n + e < N) out[(size_t)(m0 + m) * N + n + e] = from_float<T>(v[e]);
  }
  if (threadIdx.x == 0) *counter = 0;  // ready for the next launch (CUDA graph replays reuse the buffer)
}

template <typename T, int FMT, int SPC, int SK, bool HAS_ZP, bool POST, int MH>
__global__ void __launch_bounds__(kGemmWarps * 32, MH <= 2 ? 2 : 1)
    weight_only_gemm_kernel(const T* __restrict__ x, const uint4* __restrict__ w, const uint8_t* __restrict__ scales,
                            const uint8_t* __restrict__ zeros, const float* __restrict__ alpha, T* __restrict__ out,
                            float* __restrict__ partial, int* __restrict__ arrivals, int M, int N, int K, int G,
                            int group_shift, int tiles_k, int n_bands, int splits) {
  using Traits = FormatTraits<FMT>;
  constexpr int NT = kGemmBands;
  constexpr int VPC = Traits::kValuesPerChunk;
  constexpr int PAIRS = VPC / 2;
  constexpr int STEPS = VPC / 4;
  constexpr int KB = Traits::kBlockK;
  constexpr int MT = 8 * MH;                         // rows of x per block
  constexpr int UPR = KB * int(sizeof(T)) / 16;      // 16-byte units per x row of a tile (16 or 8)
  constexpr int XUNITS = MT * UPR;                   // one x tile
  constexpr int STAGE = XUNITS + kGemmWarps * NT * 64;  // one stage: the x tile, then every warp's weights
  constexpr int THREADS = kGemmWarps * 32;
  constexpr int S = kGemmStages;
  static_assert(!POST || Traits::kIsInt, "accumulator scaling is for integer weights");

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int g = lane >> 2;
  const int tig = lane & 3;
  const int m0 = blockIdx.z * MT;
  const int split = blockIdx.y;
  const KRange kr = k_split_range(tiles_k, splits, split);
  const int first = kr.first, count = kr.count;
  const ScalePost sp = scale_post<SK>(alpha);

  int bands[NT];
#pragma unroll
  for (int t = 0; t < NT; ++t) bands[t] = (blockIdx.x * kGemmWarps + warp) * NT + t;
  WarpBands<SK, SPC, VPC, HAS_ZP, NT> wb;
  wb.init(bands, n_bands, w, scales, zeros, tiles_k, first, lane, g, G);

  extern __shared__ uint4 smem[];
  uint32_t sb[S][NT][2][SPC];
  uint32_t zb[S][NT][2];
  // tile j of this block into stage `slot`: x by every thread, weights (and scale codes, into registers) per warp
  auto issue = [&](int j, int slot, uint32_t (&sv)[NT][2][SPC], uint32_t (&zv)[NT][2]) {
    if (j < count) {
      uint4* base = smem + slot * STAGE;
      const int col0 = (first + j) * KB;
#pragma unroll
      for (int i = 0; i < (XUNITS + THREADS - 1) / THREADS; ++i) {
        const int u = threadIdx.x + i * THREADS;
        if (XUNITS % THREADS == 0 || u < XUNITS) {
          const int r = u / UPR, c = u % UPR;
          const int col = col0 + c * (16 / int(sizeof(T)));
          const bool ok = m0 + r < M && col < K;
          copy_async16_zfill(base + r * UPR + x_unit(c, r), ok ? x + (size_t)(m0 + r) * K + col : x, ok);
        }
      }
      wb.copy(j, base + XUNITS + warp * NT * 64 + lane, col0 + tig * VPC, group_shift, sv, zv);
    }
    copy_async_commit();
  };
#pragma unroll
  for (int d = 0; d < S - 1; ++d) issue(d, d, sb[d], zb[d]);

  float acc[NT][MH][4] = {};

  for (int j0 = 0; j0 < count; j0 += S) {
#pragma unroll
    for (int d = 0; d < S; ++d) {
      const int j = j0 + d;
      if (j >= count) break;  // block-uniform
      copy_async_wait<S - 2>();  // this thread's copies of tile j have landed ...
      __syncthreads();           // ... and everyone's; everyone is also done with tile j - 1's stage
      issue(j + S - 1, (d + S - 1) % S, sb[(d + S - 1) % S], zb[(d + S - 1) % S]);

      const uint4* xs = smem + d * STAGE;
      const uint4* ws = xs + XUNITS + warp * NT * 64 + lane;
      // rows g and g+8 of each band, dequantized: the MMAs' A fragments
      uint32_t pa[NT][2][PAIRS];
      float post[NT][2];
#pragma unroll
      for (int t = 0; t < NT; ++t) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const uint4 wv = ws[t * 64 + 32 * r];
          ScaleOf<SK> s[SPC];
          decode_scales<T, SK, FMT, SPC>(sb[d][t][r], sp.p, s);
          post[t][r] = s[0];
          dequant_chunk<T, FMT, SPC, HAS_ZP, true, !POST>(wv, s, zb[d][t][r], pa[t][r]);
        }
      }
      // x rows h*8 + g, this lane's chunk: the B fragments, shared by the bands. Two halves at a time, k-steps
      // outermost: 2 x NT independent MMA chains in flight (one chain at a time waits on the MMA latency)
#pragma unroll
      for (int h0 = 0; h0 < MH; h0 += 2) {
        uint32_t xv[2][PAIRS];
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
          const int row = (h0 + hh) * 8 + g;
#pragma unroll
          for (int v = 0; v < PAIRS / 4; ++v) {
            const uint4 c = xs[row * UPR + x_unit(tig * (PAIRS / 4) + v, row)];
            xv[hh][4 * v] = c.x, xv[hh][4 * v + 1] = c.y, xv[hh][4 * v + 2] = c.z, xv[hh][4 * v + 3] = c.w;
          }
        }
        // up to M = 32 (registers to spare) even and odd k-steps take separate chains too
        constexpr int CH = MH <= 4 ? 2 : 1;
        float c[CH][NT][2][4] = {};
#pragma unroll
        for (int st = 0; st < STEPS; ++st)
#pragma unroll
          for (int t = 0; t < NT; ++t)
#pragma unroll
            for (int hh = 0; hh < 2; ++hh)
              mma16816<T>(c[st % CH][t][hh], pa[t][0][2 * st], pa[t][1][2 * st], pa[t][0][2 * st + 1],
                          pa[t][1][2 * st + 1], xv[hh][2 * st], xv[hh][2 * st + 1]);
#pragma unroll
        for (int t = 0; t < NT; ++t)
#pragma unroll
          for (int hh = 0; hh < 2; ++hh)
#pragma unroll
            for (int r = 0; r < 4; ++r) {
              const float v = CH == 2 ? c[0][t][hh][r] + c[CH - 1][t][hh][r] : c[0][t][hh][r];
              float& a = acc[t][h0 + hh][r];
              a = POST ? fmaf(v, post[t][r >> 1], a) : a + v;
            }
      }
    }
  }
  copy_async_wait<0>();

  // c[0..1]: weight row g, c[2..3]: row g+8; columns: x rows h*8 + 2*tig, +1 of the chunk
  gemm_store<T, MT, kGemmRows, THREADS>(
      [&](auto&& f) {
#pragma unroll
        for (int t = 0; t < NT; ++t)
#pragma unroll
          for (int h = 0; h < MH; ++h)
#pragma unroll
            for (int r = 0; r < 4; ++r)
              f(wb.valid[t], wb.band[t] * 16 + g + (r >= 2 ? 8 : 0), h * 8 + 2 * tig + (r & 1),
                acc[t][h][r] * sp.out);
      },
      out, partial, arrivals, M, N, n_bands * 16, m0, split, splits);
}

// ---- launch ----------------------------------------------------------------------------------------------

// This GEMM and the wgmma GEMM (weight_only_wgmma.cuh) share one kernel parameter list and these two steps: before
// any launch, the split-K workspace is there and the kernel may use `smem` bytes of shared memory; then the grid of
// plan p over x (x itself, or its permuted copy).
template <class Kernel>
cudaError_t prepare_gemm_launch(Kernel kernel, size_t smem, const GemvArgs& a, const GemmPlan& p) {
  if (p.splits > 1 && !p.cluster && (a.partial == nullptr || a.arrivals == nullptr)) return cudaErrorInvalidValue;
  if (smem <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
}

// A cluster plan (Hopper GEMM only) launches the K splits of a row block as one cluster and passes no workspace:
// partial == nullptr with splits > 1 is how the kernel knows to add up in the cluster. after_primary (Hopper GEMM):
// a programmatic dependent launch -- the grid may start before the kernel ahead of it on the stream has finished;
// the kernel waits for it (griddepcontrol.wait) before reading x.
template <typename T, class Kernel>
cudaError_t launch_gemm_grid(Kernel kernel, int threads, size_t smem, const void* x, const GemvArgs& a,
                             const GemmPlan& p, cudaStream_t stream, bool after_primary = false) {
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(p.blocks_n, p.splits, p.chunks);
  config.blockDim = dim3(threads);
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attrs[2];
  unsigned n = 0;
  if (p.cluster) {
    attrs[n].id = cudaLaunchAttributeClusterDimension;
    attrs[n].val.clusterDim.x = 1;
    attrs[n].val.clusterDim.y = unsigned(p.splits);
    attrs[n].val.clusterDim.z = 1;
    ++n;
  }
  if (after_primary) {
    attrs[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attrs[n].val.programmaticStreamSerializationAllowed = 1;
    ++n;
  }
  config.attrs = attrs;
  config.numAttrs = n;
  return cudaLaunchKernelEx(&config, kernel, static_cast<const T*>(x), static_cast<const uint4*>(a.w),
                            static_cast<const uint8_t*>(a.scales), a.zeros, a.alpha, static_cast<T*>(a.out),
                            p.cluster ? nullptr : a.partial, p.cluster ? nullptr : a.arrivals, a.M, a.N, a.K, a.G,
                            a.group_shift, a.tiles_k, a.n_pad / 16, p.splits);
}

template <typename T, int FMT, int SPC, int SK, bool HAS_ZP, bool POST, int MH>
cudaError_t launch_gemm_typed(const GemvArgs& a, const GemmPlan& p, cudaStream_t stream) {
  static_assert(gemm_x_units_per_row(FMT) * 16 == FormatTraits<FMT>::kBlockK * int(sizeof(T)),
                "gemm_smem_bytes sizes x tiles of tile_k 16-bit values");
  if (p.mt != 8 * MH) return cudaErrorInvalidValue;
  const size_t smem = gemm_smem_bytes(a, p);
  const size_t limit = a.max_smem > 0 ? size_t(a.max_smem) : 48 * 1024;
  if (smem > limit) return cudaErrorInvalidValue;  // the caller falls back to the GEMV
  auto kernel = weight_only_gemm_kernel<T, FMT, SPC, SK, HAS_ZP, POST, MH>;
  const cudaError_t err = prepare_gemm_launch(kernel, smem, a, p);
  if (err != cudaSuccess) return err;
  return launch_gemm_grid<T>(kernel, kGemmWarps * 32, smem, a.x, a, p, stream);
}

struct GemmLauncher {
  template <typename T, int FMT, int SPC, int SK, bool HAS_ZP, bool POST>
  static cudaError_t run(const GemvArgs& a, cudaStream_t stream) {
    const GemmPlan p = plan_weight_only_gemm(a);
    switch (p.mt) {
      case 16: return launch_gemm_typed<T, FMT, SPC, SK, HAS_ZP, POST, 2>(a, p, stream);
      case 32: return launch_gemm_typed<T, FMT, SPC, SK, HAS_ZP, POST, 4>(a, p, stream);
      default: return launch_gemm_typed<T, FMT, SPC, SK, HAS_ZP, POST, 8>(a, p, stream);
    }
  }
};

}  // namespace quantops
