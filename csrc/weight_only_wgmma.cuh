// Weight-only GEMM on Hopper's warpgroup tensor cores (wgmma, sm_90a only) for batches past the GEMV: the GEMV's
// tiled weights (weight_only_gemv.cuh) dequantized in registers straight into wgmma's A operand, x from shared
// memory as its B operand ("swap AB": the 64 rows of a wgmma are weight rows, its N columns rows of x).
//
// Why: the mma.sync GEMM (weight_only_gemm.cuh) pays one dequantization per 8 rows of x (its MMAs are n8), so
// past M ~ 16 it is bound by issue slots, not bytes. One wgmma m64nNk16 takes the same A registers for N = 16..64
// rows of x and runs asynchronously.
//
// Block: one warpgroup, two m64 tiles = 8 bands of 16 weight rows (warp w: bands w and 4 + w), one chunk of MT = N rows
// of x (16, 32 or 64), a range of K tiles (split K over blockIdx.y: two splits add up in a cluster of their two blocks,
// more through the mma.sync GEMM's fixed-order reduction in a global workspace). Two blocks per SM: ptxas serializes
// every wgmma of a warpgroup when other instructions write wgmma inputs while one is in flight, so a warpgroup's
// dequantization cannot overlap its own wgmmas (it waits for them before the next tile); the other block's can. Per K
// tile, a 4-stage cp.async ring in shared memory holds every warp's band tiles (each lane its own 2 x 16 bytes per
// band) and the x tile in wgmma's canonical K-major layout with the 128-byte swizzle (rows of 64 columns = 128 bytes;
// 16-byte unit u of row r at u ^ (r % 8)). k order: the tiled weights give a lane 32 consecutive columns ("the MMA's k
// order inside a step is free as long as A and B agree"), so real column tig * VPC + 4 * step + 2 * hi + e (e = 0, 1)
// is k index 16 * step + 8 * hi + 2 * tig + e of the wgmma. x is put in that order once per call (permute_x_kernel, a
// copy of x), so that the blocks -- each reads x once per 128 weight rows -- copy whole 16-byte units, not four times
// as many 4-byte ones. With chunks of 64 rows the GEMM is launched as that kernel's programmatic dependent: its blocks
// start copying their first weight tile while the permute runs, and wait for it (griddepcontrol.wait) before the
// first x copy. The weights are scaled as they are dequantized (one rounding to T), for every group size.
#pragma once

#include <algorithm>

#include "weight_only_gemm.cuh"

namespace quantops {

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int PENDING>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(PENDING) : "memory");
}
// cp.async writes are generic-proxy writes; wgmma reads shared memory through the async proxy
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// the accumulators are written by asynchronous wgmmas: pin their reads after the wait
template <int N>
__device__ __forceinline__ void fence_registers(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// Thread-block clusters (the K splits of a row block): barrier, rank, and loads from another block's shared memory.
__device__ __forceinline__ void cluster_sync() {
  asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}
__device__ __forceinline__ uint32_t cluster_rank() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
  return r;
}
__device__ __forceinline__ float4 load_cluster_f4(uint32_t smem_addr, uint32_t rank) {
  uint32_t remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(smem_addr), "r"(rank));
  float4 v;
  asm volatile("ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [%4];\n"
               : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
               : "r"(remote)
               : "memory");
  return v;
}

// Split K on Hopper: the `splits` blocks of a row block are one cluster (dims 1 x splits x 1). Each puts its fp32
// partial sums [MT][ROWS] in its own shared memory (the pipeline's, free by now); after a cluster barrier, block r
// adds up every q-th group of four outputs (q = r, r + splits, ...) from all blocks' shared memory in split order --
// deterministic -- and writes them. No global workspace, atomics or fences, and all blocks share the sum (the
// last-arriving-block scheme of gemm_store reads every split from L2 in one block: 8192x8192 M=64 on an H100,
// splits 4 -> 8 cost 10 us).
template <typename T, int MT, int ROWS, int THREADS, class Outputs>
__device__ __forceinline__ void cluster_store(const Outputs& each_output, float* red, T* __restrict__ out, int M, int N,
                                              int m0, int n0, int splits) {
  constexpr int LD = ROWS + 4;  // row stride: the accumulators' (g, tig) stores hit 32 different banks
  __syncthreads();  // every warp is done with the pipeline's shared memory
  each_output([&](bool, int n, int m, float v) { red[m * LD + n - n0] = v; });
  cluster_sync();
  const uint32_t rank = cluster_rank();
  const uint32_t base = static_cast<uint32_t>(__cvta_generic_to_shared(red));
  for (int q = int(rank) * THREADS + threadIdx.x; q < MT * ROWS / 4; q += splits * THREADS) {
    const int m = q / (ROWS / 4), n = (q % (ROWS / 4)) * 4;
    float4 v[kMaxClusterSplits];
#pragma unroll
    for (int sp = 0; sp < kMaxClusterSplits; ++sp)
      if (sp < splits) v[sp] = load_cluster_f4(base + (m * LD + n) * 4, sp);
    float sum[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int sp = 0; sp < kMaxClusterSplits; ++sp) {
      if (sp < splits) sum[0] += v[sp].x, sum[1] += v[sp].y, sum[2] += v[sp].z, sum[3] += v[sp].w;
    }
#pragma unroll
    for (int e = 0; e < 4; ++e)
      if (m0 + m < M && n0 + n + e < N) out[(size_t)(m0 + m) * N + n0 + n + e] = from_float<T>(sum[e]);
  }
  cluster_sync();  // the others have read this block's sums before it exits
}

// B operand descriptor of an x atom (MT rows x 64 columns): K-major, 128-byte swizzle, 8-row groups 1024 bytes apart.
__device__ __forceinline__ uint64_t x_descriptor(uint32_t smem_addr) {
  return uint64_t((smem_addr & 0x3FFFF) >> 4) | (uint64_t(1) << 16) | (uint64_t(1024 >> 4) << 32) |
         (uint64_t(1) << 62);
}

// D[64 x N] += A[64 x 16] (registers, the mma.sync m16n8k16 A fragment per warp) * B[16 x N] (descriptor)
template <typename T, int N>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc);
// one specialization per N and activation type (TY: its PTX name); the asm spells out every accumulator
#define QUANTOPS_WGMMA_RS_N16(CTY, TY) \
  template <> \
  __device__ __forceinline__ void wgmma_rs<CTY, 16>(float(&d)[8], const uint32_t(&a)[4], uint64_t desc) { \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %13, 0;\n" \
                 "wgmma.mma_async.sync.aligned.m64n16k16.f32." TY "." TY " {%0, %1, %2, %3, %4, %5, %6, %7}, " \
                 "{%8, %9, %10, %11}, %12, p, 1, 1, 0;\n}\n" \
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]) \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1)); \
  }
QUANTOPS_WGMMA_RS_N16(__nv_bfloat16, "bf16")
QUANTOPS_WGMMA_RS_N16(__half, "f16")
#undef QUANTOPS_WGMMA_RS_N16
#define QUANTOPS_WGMMA_RS_N32(CTY, TY) \
  template <> \
  __device__ __forceinline__ void wgmma_rs<CTY, 32>(float(&d)[16], const uint32_t(&a)[4], uint64_t desc) { \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n" \
                 "wgmma.mma_async.sync.aligned.m64n32k16.f32." TY "." TY " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, " \
                 "{%16, %17, %18, %19}, %20, p, 1, 1, 0;\n}\n" \
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]) \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1)); \
  }
QUANTOPS_WGMMA_RS_N32(__nv_bfloat16, "bf16")
QUANTOPS_WGMMA_RS_N32(__half, "f16")
#undef QUANTOPS_WGMMA_RS_N32
#define QUANTOPS_WGMMA_RS_N64(CTY, TY) \
  template <> \
  __device__ __forceinline__ void wgmma_rs<CTY, 64>(float(&d)[32], const uint32_t(&a)[4], uint64_t desc) { \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n" \
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32." TY "." TY " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, " \
                 "{%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n" \
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]) \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1)); \
  }
QUANTOPS_WGMMA_RS_N64(__nv_bfloat16, "bf16")
QUANTOPS_WGMMA_RS_N64(__half, "f16")
#undef QUANTOPS_WGMMA_RS_N64

template <typename T, int FMT, int SPC, int SK, bool HAS_ZP, int MT>
__global__ void __launch_bounds__(kWgmmaWarps * 32, kWgmmaBlocksPerSm)
    weight_only_wgmma_kernel(const T* __restrict__ x, const uint4* __restrict__ w, const uint8_t* __restrict__ scales,
                             const uint8_t* __restrict__ zeros, const float* __restrict__ alpha, T* __restrict__ out,
                             float* __restrict__ partial, int* __restrict__ arrivals, int M, int N, int K, int G,
                             int group_shift, int tiles_k, int n_bands, int splits) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Traits = FormatTraits<FMT>;
  constexpr int VPC = Traits::kValuesPerChunk;
  constexpr int PAIRS = VPC / 2;
  constexpr int STEPS = VPC / 4;  // k-steps of 16 per tile
  constexpr int KB = Traits::kBlockK;
  constexpr int XBYTES = MT * KB * 2;  // the x tile: KB / 64 atoms of MT rows x 128 bytes
  constexpr int STAGE = XBYTES + kWgmmaWarps * 2 * 1024;
  constexpr int S = kGemmStages;
  constexpr int P = S - 1;  // tiles copied ahead
  constexpr int THREADS = kWgmmaWarps * 32;
  constexpr int UPR = KB * 2 / 16;    // 16-byte units of x per row of a tile: unit u holds k indices 8u .. 8u + 7
  constexpr int RPP = THREADS / UPR;  // x rows per pass of the block (a multiple of 8: r % 8 fixed per thread)
  static_assert(sizeof(T) == 2 && MT % RPP == 0 && RPP % 8 == 0 && XBYTES % 1024 == 0, "x tile shape");

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int g = lane >> 2;
  const int tig = lane & 3;
  const int m0 = blockIdx.z * MT;
  const int split = blockIdx.y;
  const KRange kr = k_split_range(tiles_k, splits, split);
  const int first = kr.first, count = kr.count;
  const ScalePost sp = scale_post<SK>(alpha);

  int bands[2];  // one band of each m64 tile
#pragma unroll
  for (int t = 0; t < 2; ++t) bands[t] = blockIdx.x * 8 + t * 4 + warp;
  WarpBands<SK, SPC, VPC, HAS_ZP, 2> wb;
  wb.init(bands, n_bands, w, scales, zeros, tiles_k, first, lane, g, G);

  extern __shared__ uint8_t smem_raw[];
  const uint32_t raw = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  const uint32_t smem = (raw + 1023) & ~1023u;  // the swizzle pattern repeats every 1024 bytes
  uint8_t* smem_ptr = smem_raw + (smem - raw);

  // This thread copies unit xu of rows xr0 + i * RPP of x (already in the wgmma's k order, permute_x_kernel)
  const int xu = threadIdx.x % UPR, xr0 = threadIdx.x / UPR;
  const int xdst = (xu >> 3) * MT * 128 + xr0 * 128 + (((xu & 7) ^ (xr0 & 7)) << 4);
  const size_t ldx = size_t(tiles_k) * KB;
  const T* xsrc = x + (size_t)(m0 + xr0) * ldx + xu * 8;

  uint32_t sb[S][2][2][SPC] = {};
  uint32_t zb[S][2][2] = {};
  // K tile j into pipeline stage `slot`: this thread's share of the x tile, and its lanes' weight chunks (with their
  // scale codes, read straight into registers).
  const auto copy_x = [&](int j, int slot) {
    if (j < count) {
      uint8_t* base = smem_ptr + slot * STAGE;
#pragma unroll
      for (int i = 0; i < MT / RPP; ++i) {
        const bool ok = m0 + xr0 + i * RPP < M;
        copy_async16_zfill(base + xdst + i * RPP * 128, ok ? xsrc + i * RPP * ldx + (first + j) * KB : x, ok);
      }
    }
  };
  const auto copy_weights = [&](int j, int slot, uint32_t (&sv)[2][2][SPC], uint32_t (&zv)[2][2]) {
    if (j < count)
      wb.copy(j, reinterpret_cast<uint4*>(smem_ptr + slot * STAGE + XBYTES) + warp * 128 + lane,
              (first + j) * KB + tig * VPC, group_shift, sv, zv);
  };
  // The grid may start while permute_x_kernel still runs (a programmatic dependent launch, launch_gemm_grid): the
  // first tile's weights and scales do not depend on it, x does. (griddepcontrol.wait returns at once in a grid
  // launched without the attribute.) Only the first tile's, so that cp.async group d stays tile d's copies and tile 0
  // does not wait for the next tiles' weights.
  copy_weights(0, 0, sb[0], zb[0]);
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
  copy_x(0, 0);
  copy_async_commit();
#pragma unroll
  for (int d = 1; d < P; ++d) {
    copy_x(d, d);
    copy_weights(d, d, sb[d], zb[d]);
    copy_async_commit();
  }

  float acc[2][MT / 2] = {};
  for (int j0 = 0; j0 < count; j0 += S) {
#pragma unroll
    for (int d = 0; d < S; ++d) {
      const int j = j0 + d;
      if (j >= count) break;  // block-uniform
      copy_async_wait<P - 1>();  // this thread's copies of tile j have landed ...
      // ... and its warpgroup's wgmmas on tile j - 1 are done. Not later: ptxas serializes every wgmma when other
      // instructions (the next tile's dequantization) write wgmma inputs while one is in flight. The other
      // warpgroup's wgmmas overlap this one's dequantization instead.
      wgmma_wait<0>();
      fence_proxy_async();
      __syncthreads();  // everyone's copies of tile j visible, tile j - 1's stage free for tile j + P
      copy_x(j + P, (d + P) % S);
      copy_weights(j + P, (d + P) % S, sb[(d + P) % S], zb[(d + P) % S]);
      copy_async_commit();

      const uint4* ws = reinterpret_cast<const uint4*>(smem_ptr + d * STAGE + XBYTES) + warp * 128 + lane;
      uint32_t pa[2][2][PAIRS];  // rows g and g + 8 of each band, dequantized and scaled: the A fragments
#pragma unroll
      for (int t = 0; t < 2; ++t) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const uint4 wv = ws[t * 64 + 32 * r];
          ScaleOf<SK> s[SPC];
          decode_scales<T, SK, FMT, SPC>(sb[d][t][r], sp.p, s);
          dequant_chunk<T, FMT, SPC, HAS_ZP, true, true>(wv, s, zb[d][t][r], pa[t][r]);
        }
      }
      const uint32_t xs = smem + d * STAGE;
      wgmma_fence();
#pragma unroll
      for (int st = 0; st < STEPS; ++st) {
#pragma unroll
        for (int t = 0; t < 2; ++t) {
          const uint32_t a[4] = {pa[t][0][2 * st], pa[t][1][2 * st], pa[t][0][2 * st + 1], pa[t][1][2 * st + 1]};
          wgmma_rs<T, MT>(acc[t], a, x_descriptor(xs + (st >> 2) * MT * 128 + (st & 3) * 32));
        }
      }
      wgmma_commit();
    }
  }
  wgmma_wait<0>();
  copy_async_wait<0>();
  fence_registers(acc[0]);
  fence_registers(acc[1]);

  // acc[t][4 i + r]: weight row g (r < 2) or g + 8 of band t; x row 8 i + 2 tig + (r & 1) of the chunk
  const auto each_output = [&](auto&& f) {
#pragma unroll
    for (int t = 0; t < 2; ++t)
#pragma unroll
      for (int i = 0; i < MT / 8; ++i)
#pragma unroll
        for (int r = 0; r < 4; ++r)
          f(wb.valid[t], wb.band[t] * 16 + g + (r >= 2 ? 8 : 0), 8 * i + 2 * tig + (r & 1),
            acc[t][4 * i + r] * sp.out);
  };
  if (splits > 1 && partial == nullptr) {  // a cluster launch (GemmPlan::cluster, launch_gemm_grid)
    cluster_store<T, MT, kWgmmaRows, THREADS>(each_output, reinterpret_cast<float*>(smem_ptr), out, M, N, m0,
                                              blockIdx.x * kWgmmaRows, splits);
  } else {
    gemm_store<T, MT, kWgmmaRows, THREADS>(each_output, out, partial, arrivals, M, N, n_bands * 16, m0, split, splits);
  }
#else
  __trap();  // built for a GPU without wgmma: the binding launches this only on sm_90
#endif
}

// x [M, K] -> xp [M, tiles_k * KB] in the wgmma's k order, zero past K: 16-byte unit u = 2 * step + hi of a row's tile
// holds, for tig = 0..3, the pair of columns tile * KB + tig * VPC + 4 * step + 2 * hi, +1 (see the top of this file).
// Once per call, so that the GEMM blocks (each reads x once per 128 weight rows) copy whole 16-byte units.
template <typename T, int FMT>
__global__ void permute_x_kernel(const T* __restrict__ x, T* __restrict__ xp, int M, int K, int tiles_k) {
  constexpr int VPC = FormatTraits<FMT>::kValuesPerChunk;
  constexpr int KB = FormatTraits<FMT>::kBlockK;
  constexpr int UPT = KB / 8;  // units per row of a tile
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");  // the GEMM's blocks may be scheduled now
#endif
  const size_t units = size_t(M) * tiles_k * UPT;
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < units; i += size_t(gridDim.x) * blockDim.x) {
    const int u = int(i % UPT);
    const size_t row_tile = i / UPT;
    const int tile = int(row_tile % tiles_k);
    const size_t row = row_tile / tiles_k;
    const int col = tile * KB + 4 * (u >> 1) + 2 * (u & 1);
    uint32_t v[4];
#pragma unroll
    for (int tig = 0; tig < 4; ++tig) {
      const int c = col + tig * VPC;
      v[tig] = c < K ? __ldg(reinterpret_cast<const unsigned int*>(x + row * K + c)) : 0u;
    }
    reinterpret_cast<uint4*>(xp)[i] = make_uint4(v[0], v[1], v[2], v[3]);
  }
}

// ---- launch ----------------------------------------------------------------------------------------------

template <typename T, int FMT, int SPC, int SK, bool HAS_ZP, int MT>
cudaError_t launch_wgmma_typed(const GemvArgs& a, const GemmPlan& p, cudaStream_t stream) {
  const size_t smem = wgmma_smem_bytes(a.fmt, p.mt);
  // the cluster sum reuses the pipeline's shared memory for [MT][kWgmmaRows + 4] fp32
  static_assert(kGemmStages * (MT * FormatTraits<FMT>::kBlockK * 2 + kWgmmaWarps * 2 * 1024) >=
                    MT * (kWgmmaRows + 4) * 4,
                "cluster sum space");
  if (smem > size_t(a.max_smem) || a.x_perm == nullptr || p.mt != MT || (p.cluster && p.splits > kMaxClusterSplits))
    return cudaErrorInvalidValue;
  auto kernel = weight_only_wgmma_kernel<T, FMT, SPC, SK, HAS_ZP, MT>;
  const cudaError_t err = prepare_gemm_launch(kernel, smem, a, p);
  if (err != cudaSuccess) return err;
  const size_t units = size_t(a.M) * a.tiles_k * (FormatTraits<FMT>::kBlockK / 8);
  const int perm_blocks = int(std::min<size_t>((units + 255) / 256, size_t(4) * sm_count(a)));
  permute_x_kernel<T, FMT><<<perm_blocks, 256, 0, stream>>>(static_cast<const T*>(a.x), static_cast<T*>(a.x_perm), a.M,
                                                              a.K, a.tiles_k);
  // A programmatic dependent launch for chunks of 64 rows only: same-run H200 sweeps, against the plain launch, gave
  // 2-4% at M=64 / 128 on every layer, but at M=32 -3 to -12% on the large ones (W8A16 8192x8192: 38.3 vs 34.3 us).
  return launch_gemm_grid<T>(kernel, kWgmmaWarps * 32, smem, a.x_perm, a, p, stream, /*after_primary=*/MT == 64);
}

struct WgmmaLauncher {
  // POST is ignored: the weights are always scaled as they are dequantized
  template <typename T, int FMT, int SPC, int SK, bool HAS_ZP, bool POST>
  static cudaError_t run(const GemvArgs& a, cudaStream_t stream) {
    const GemmPlan p = plan_weight_only_wgmma(a);
    switch (p.mt) {
      case 16: return launch_wgmma_typed<T, FMT, SPC, SK, HAS_ZP, 16>(a, p, stream);
      case 32: return launch_wgmma_typed<T, FMT, SPC, SK, HAS_ZP, 32>(a, p, stream);
      default: return launch_wgmma_typed<T, FMT, SPC, SK, HAS_ZP, 64>(a, p, stream);
    }
  }
};

}  // namespace quantops
