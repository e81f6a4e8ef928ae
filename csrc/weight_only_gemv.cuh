// Weight-only GEMV for decode batches (M <= 16 per launch): 4-/8-bit weights dequantized in registers, bf16/fp16
// tensor-core MMA (mma.sync m16n8k16, plain sm_80+ instructions), fp32 accumulation.
//
// Roles are swapped against a GEMM ("swap AB"): the MMA's 16-row A operand is a tile of 16 WEIGHT rows and
// its 8-column B operand is 8 rows of x, so at M <= 8 every MMA does useful work on 256 weights (twice what x
// as A would give); M <= 16 takes two MMAs per k-step.
//
// Layout (prepared once in Python, see cuda_wna16.py): the weights are stored tile by tile, each tile = 16
// rows x KB columns = 1024 bytes, KB = 4 chunks of 16 bytes (128 4-bit / 64 8-bit values), tiles of one row
// band consecutive along K. Lane (g = lane/4, t = lane%4) reads bytes [16*lane, +16) (row g, chunk t) and
// [512 + 16*lane, +16) (row g+8, chunk t): every warp load is 512 contiguous bytes and a warp walking K reads
// one contiguous stream, which is what HBM wants. The MMA's k order inside a step is free as long as A and B
// agree, so each lane feeds its own chunk's consecutive pairs and the same pairs of x: no shuffles, no shared
// memory on the way in.
//   int4 / fp4: 8 nibbles per 32-bit word, nibble slots (p, p+4) hold elements (2p, 2p+1): one shift + one
//               LOP3 yields a pair of adjacent elements. int8 / fp8: 4 bytes per word, natural order.
// Integers carry the +2^(bits-1) offset (compressed-tensors); zero points likewise (uint8 [N, G]).
// Scales [N, G] (rows and groups padded like the weights): int formats in the activation dtype; NVFP4 e4m3
// bytes (with alpha = 1/global scale); MX e8m0 bytes (with alpha = 2^p); see ScalePost.
//
// Scales are applied to the fp32 accumulators once per tile when a group spans whole tiles (int formats,
// group >= KB: g128 and per-channel), else to the dequantized pairs (g32/g64, NVFP4 g16, MX g32); with bf16 and
// int4 there, the zero point comes off the accumulators as well ((base+zero) * sum(x), the sums from one MMA
// chain with A = ones per tile): the pair decode is one shift and one LOP3.
// Block = S warps on one or two 16-row bands splitting the tiles along K (each warp a contiguous range per band).
// Weights travel by cp.async into a per-warp shared-memory ring of D tiles (no registers held while in flight);
// x is read one tile ahead at M <= 8; the S partial sums meet in shared memory.
// Measured on an H200 (benchmarks/gemv_probe.cu, ncu, 8192x8192 M=1): ~130 warp instructions per tile, 16 warps
// per SM (the grid: 256 blocks of 8 warps), stalls split between fixed-latency dependencies, the first loads of
// each warp, and issue; 59% of copy bandwidth.
#pragma once

#include "weight_only_decode.cuh"

namespace quantops {

// NT: 16-row bands per warp (x is loaded once for all of them); MH: 8-row halves of x (M <= 8 * MH); SPC:
// scales per 16-byte chunk (2 for NVFP4's blocks of 16); POST: scales applied to the accumulators once per tile;
// D: tiles of loads in flight per band and warp; MINB: blocks per SM the registers must allow.
template <typename T, int FMT, int SPC, int SK, bool HAS_ZP, bool POST, int NT, int MH, int D, int MINB = 2>
__global__ void __launch_bounds__(256, MINB) weight_only_gemv_kernel(const T* __restrict__ x, const uint4* __restrict__ w,
                                                               const uint8_t* __restrict__ scales,
                                                               const uint8_t* __restrict__ zeros,
                                                               const float* __restrict__ alpha, T* __restrict__ out,
                                                               int M, int N, int K, int G, int group_shift,
                                                               int tiles_k) {
  using Traits = FormatTraits<FMT>;
  constexpr int VPC = Traits::kValuesPerChunk;
  constexpr int PAIRS = VPC / 2;
  constexpr int STEPS = VPC / 4;  // MMA k-steps per chunk: each lane gives 4 values of each row to each step
  constexpr int KB = Traits::kBlockK;
  static_assert(!POST || Traits::kIsInt, "accumulator scaling is for integer weights");
  // int4 with scales on the accumulators: the zero point comes off the accumulators too (no subtract per pair).
  // bf16 only: the sums run to (128+15) * sum|x| against a result near 4.6 * sqrt(K) |x|, fine in fp32; fp16's
  // base of 1024 would cost 8x more of that margin.
  constexpr bool FOLD = POST && FMT == kInt4 && std::is_same<T, __nv_bfloat16>::value;

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  const int g = lane >> 2;
  const int tig = lane & 3;
  const int band0 = blockIdx.x * NT;
  const int per_warp = (tiles_k + warps - 1) / warps;
  const int first = warp * per_warp;
  const int count = max(0, min(tiles_k, first + per_warp) - first);
  const ScalePost sp = scale_post<SK>(alpha);
  // this lane's chunk of row g in tile `first` of each band (row g+8 is 32 chunks further)
  const uint4* wrow[NT];
  BandScales<SK, SPC, VPC, HAS_ZP> bs[NT];
#pragma unroll
  for (int t = 0; t < NT; ++t) {
    wrow[t] = w + ((size_t)(band0 + t) * tiles_k + first) * 64 + lane;
    bs[t].init(scales, zeros, band0 + t, g, G);
  }

  // the ring: tile j of this warp sits in slot j % D (weights in shared memory, scales and zeros in registers)
  // from its copy until its use D tiles later; one cp.async group per tile (empty past the end)
  extern __shared__ uint4 smem[];
  uint4* ring = smem + size_t(warp) * D * NT * 64 + lane;
  uint32_t sb[D][NT][2][SPC];
  uint32_t zb[D][NT][2];
  auto issue = [&](int j, int slot, uint32_t (&sv)[NT][2][SPC], uint32_t (&zv)[NT][2]) {
    if (j < count) {
      const int col = (first + j) * KB + tig * VPC;
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        uint4* dst = ring + (slot * NT + t) * 64;
        copy_async16(dst, wrow[t] + j * 64);
        copy_async16(dst + 32, wrow[t] + j * 64 + 32);
        bs[t].load(col, group_shift, sv[t], zv[t]);
      }
    }
    copy_async_commit();
  };
#pragma unroll
  for (int d = 0; d < D; ++d) issue(d, d, sb[d], zb[d]);

  const T* xrow[MH];
#pragma unroll
  for (int h = 0; h < MH; ++h) xrow[h] = x + (size_t)min(h * 8 + g, M - 1) * K + tig * VPC;

  float acc[NT][MH][4] = {};

  // x rows past M stay zero (never loaded), as do columns past K
  auto load_xh = [&](int j, int h, uint32_t (&xv)[PAIRS]) {
#pragma unroll
    for (int i = 0; i < PAIRS; ++i) xv[i] = 0u;
    if (j < count && h * 8 + g < M && (first + j) * KB + tig * VPC < K) {
      const uint4* src = reinterpret_cast<const uint4*>(xrow[h] + (first + j) * KB);
#pragma unroll
      for (int v = 0; v < PAIRS / 4; ++v) {
        const uint4 c = __ldg(src + v);
        xv[4 * v] = c.x, xv[4 * v + 1] = c.y, xv[4 * v + 2] = c.z, xv[4 * v + 3] = c.w;
      }
    }
  };
  // x one tile ahead at M <= 8; at M <= 16 that would double 32 registers (fewer blocks per SM), so x loads
  // at the start of its own tile there (measured on an H100, 8192x8192 M=16: an L1 prefetch one tile ahead, 20.9
  // vs 20.0 us, and x through the cp.async ring, 50 us -- L2-bound: x is re-read per pair of bands -- were slower)
  constexpr bool XAHEAD = MH == 1;
  uint32_t xn[MH][PAIRS];
  if constexpr (XAHEAD) load_xh(0, 0, xn[0]);

  for (int j0 = 0; j0 < count; j0 += D) {
#pragma unroll
    for (int d = 0; d < D; ++d) {
      const int j = j0 + d;
      if (j >= count) break;
      // x of this tile (mostly L2 hits: one tile of work covers their latency when loaded ahead)
      uint32_t xr[MH][PAIRS];
#pragma unroll
      for (int h = 0; h < MH; ++h) {
        if constexpr (XAHEAD) {
#pragma unroll
          for (int i = 0; i < PAIRS; ++i) xr[h][i] = xn[h][i];
          load_xh(j + 1, h, xn[h]);
        } else {
          load_xh(j, h, xr[h]);
        }
      }
      copy_async_wait<D - 1>();  // this lane's copies of tile j have landed
      uint4 wv[NT][2];
      uint32_t sv[NT][2][SPC], zv[NT][2];
#pragma unroll
      for (int t = 0; t < NT; ++t)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          wv[t][r] = ring[(d * NT + t) * 64 + 32 * r];
#pragma unroll
          for (int i = 0; i < SPC; ++i) sv[t][r][i] = sb[d][t][r][i];
          zv[t][r] = zb[d][t][r];
        }
      // FOLD: the weights enter the MMA as base+code and (base+zero) * sum(x over the tile) comes off after;
      // the sums per x row come from one more MMA chain with A = ones, shared by the NT bands
      float xsum[MH][2];
      if constexpr (FOLD) {
#pragma unroll
        for (int h = 0; h < MH; ++h) {
          float c[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
          constexpr uint32_t one = Int4Magic<T>::kOne2;
#pragma unroll
          for (int st = 0; st < STEPS; ++st) {
            mma16816<T>(c[st & 1], one, one, one, one, xr[h][2 * st], xr[h][2 * st + 1]);
          }
          xsum[h][0] = c[0][0] + c[1][0], xsum[h][1] = c[0][1] + c[1][1];
        }
      }
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        // rows g and g+8 of the tile, dequantized: the MMA's A fragments
        uint32_t pa[2][PAIRS];
        float post[2], zq[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          ScaleOf<SK> s[SPC];
          decode_scales<T, SK, FMT, SPC>(sv[t][r], sp.p, s);
          post[r] = s[0];
          if constexpr (FMT == kInt4) zq[r] = int4_zero<T, HAS_ZP>(zv[t][r]);
          dequant_chunk<T, FMT, SPC, HAS_ZP, !FOLD, !POST>(wv[t][r], s, zv[t][r], pa[r]);
        }
        // c[.][0..1]: weight row g, c[.][2..3]: row g+8 (columns: x rows 2*tig, 2*tig+1 of half h)
        auto mma_half = [&](int h, const uint32_t (&xv)[PAIRS]) {
          // two accumulator chains (even / odd k-steps) so that consecutive MMAs do not wait on each other
          float c[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
          for (int st = 0; st < STEPS; ++st) {
            mma16816<T>(c[st & 1], pa[0][2 * st], pa[1][2 * st], pa[0][2 * st + 1], pa[1][2 * st + 1], xv[2 * st],
                        xv[2 * st + 1]);
          }
#pragma unroll
          for (int r = 0; r < 4; ++r) {
            float v = c[0][r] + c[1][r];
            if constexpr (FOLD) v = fmaf(-zq[r >> 1], xsum[h][r & 1], v);
            acc[t][h][r] = POST ? fmaf(v, post[r >> 1], acc[t][h][r]) : acc[t][h][r] + v;
          }
        };
#pragma unroll
        for (int h = 0; h < MH; ++h) mma_half(h, xr[h]);
      }
      // refill the slot D tiles ahead, now that its contents sit in registers (consumed above)
      issue(j + D, d, sb[d], zb[d]);
    }
  }

  // the warps' partial sums meet in shared memory; thread i then owns accumulator slot i of the block
  auto store = [&](int t, int h, int r, int l, float v) {
    const int n = (band0 + t) * 16 + (l >> 2) + (r >= 2 ? 8 : 0);
    const int m = h * 8 + (l & 3) * 2 + (r & 1);
    if (m < M && n < N) out[(size_t)m * N + n] = from_float<T>(v * sp.out);  // float formats' post factor
  };
  constexpr int SLOTS = NT * MH * 4 * 32;
  if (warps > 1) {
    copy_async_wait<0>();
    __syncthreads();  // every warp is done with its ring: the same shared memory takes the partial sums
    float* reduce_buf = reinterpret_cast<float*>(smem);
#pragma unroll
    for (int t = 0; t < NT; ++t)
#pragma unroll
      for (int h = 0; h < MH; ++h)
#pragma unroll
        for (int r = 0; r < 4; ++r) reduce_buf[warp * SLOTS + ((t * MH + h) * 4 + r) * 32 + lane] = acc[t][h][r];
    __syncthreads();
    for (int i = threadIdx.x; i < SLOTS; i += blockDim.x) {
      float sum = 0.f;
      for (int wi = 0; wi < warps; ++wi) sum += reduce_buf[wi * SLOTS + i];
      store(i / (MH * 128), (i / 128) % MH, (i / 32) % 4, i % 32, sum);
    }
  } else {
#pragma unroll
    for (int t = 0; t < NT; ++t)
#pragma unroll
      for (int h = 0; h < MH; ++h)
#pragma unroll
        for (int r = 0; r < 4; ++r) store(t, h, r, lane, acc[t][h][r]);
  }
}

// ---- launch ----------------------------------------------------------------------------------------------

// Warps per block splitting K: enough warps in flight on every SM to cover HBM latency, each with at least
// a few tiles to stream.
inline int choose_warps(const GemvArgs& a, int nt) {
  if (a.ksplit > 0) return a.ksplit > 8 ? 8 : a.ksplit;
  const int blocks = a.n_pad / (16 * nt);
  const int target = sm_count(a) * 16;
  int s = 1;
  while (s < 8 && blocks * s < target && a.tiles_k >= 4 * s) s *= 2;
  return s;
}

template <typename T, int FMT, int SPC, int SK, bool HAS_ZP, bool POST, int NT, int MH, int D, int MINB = 2>
cudaError_t launch_typed(const GemvArgs& a, cudaStream_t stream) {
  auto smem_for = [](int warps) {
    const size_t ring = size_t(warps) * D * NT * 1024;
    const size_t reduce = warps > 1 ? size_t(warps) * NT * MH * 4 * 32 * sizeof(float) : 0;
    return ring > reduce ? ring : reduce;
  };
  int warps = choose_warps(a, NT);
  const size_t limit = a.max_smem > 0 ? size_t(a.max_smem) : 48 * 1024;
  while (warps > 1 && smem_for(warps) > limit) warps /= 2;  // fewer warps in a block rather than no launch
  const size_t smem = smem_for(warps);
  if (smem > limit) return cudaErrorInvalidValue;
  auto kernel = weight_only_gemv_kernel<T, FMT, SPC, SK, HAS_ZP, POST, NT, MH, D, MINB>;
  if (smem > 48 * 1024) {  // above the default dynamic shared memory limit: opt in (per device, not per stream)
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (err != cudaSuccess) return err;
  }
  kernel<<<a.n_pad / (16 * NT), 32 * warps, smem, stream>>>(
      static_cast<const T*>(a.x), static_cast<const uint4*>(a.w), static_cast<const uint8_t*>(a.scales), a.zeros,
      a.alpha, static_cast<T*>(a.out), a.M, a.N, a.K, a.G, a.group_shift, a.tiles_k);
  return cudaGetLastError();
}

// Two bands per warp where the band count is even (x loaded once per two tiles), else one. At 8 < M <= 16 a ring
// of two tiles of two bands or four of one, the same bytes in flight per warp; at M <= 8 one band per warp has a
// ring of two tiles and three blocks per SM.
template <typename T, int FMT, int SPC, int SK, bool HAS_ZP, bool POST>
cudaError_t launch_mh(const GemvArgs& a, cudaStream_t stream) {
  const int bands = a.n_pad / 16;
  const bool two = bands % 2 == 0;
  if (a.M <= 8) {
    // M = 1: one band per warp where two would leave under 1.5 blocks per SM (N <= 6144 on 132 SMs): twice the
    // blocks, three per SM (M=1, 6144x4096: H100 7.8 vs 8.3 us, H200 7.8 vs 8.2; 4096x14336: H100 14.1 vs 15.2,
    // H200 14.4 vs 14.8; 8192x8192 is slower that way). At M = 8 x re-read per band costs more than that gains
    // (H200 4096x4096 7.8 vs 7.3 us), so two bands there.
    return two && (a.M > 1 || bands > 3 * sm_count(a)) ? launch_typed<T, FMT, SPC, SK, HAS_ZP, POST, 2, 1, 2>(a, stream)
                                               : launch_typed<T, FMT, SPC, SK, HAS_ZP, POST, 1, 1, 2, 3>(a, stream);
  }
  if (a.M > kMaxRows) return cudaErrorInvalidValue;
  return two ? launch_typed<T, FMT, SPC, SK, HAS_ZP, POST, 2, 2, 2>(a, stream)
             : launch_typed<T, FMT, SPC, SK, HAS_ZP, POST, 1, 2, 4>(a, stream);
}

struct GemvLauncher {
  template <typename T, int FMT, int SPC, int SK, bool HAS_ZP, bool POST>
  static cudaError_t run(const GemvArgs& a, cudaStream_t stream) {
    return launch_mh<T, FMT, SPC, SK, HAS_ZP, POST>(a, stream);
  }
};

}  // namespace quantops
