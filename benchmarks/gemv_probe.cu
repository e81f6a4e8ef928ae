// Standalone probe of csrc/'s weight-only GEMV (no torch): correctness of int4 against a host reference, then
// time per launch of the library's dispatch and of launch variants (bands per warp, ring depth, blocks per SM),
// next to cuBLAS bf16 and two floors measured in the same process on the same GPU: `stream_only` (the GEMV's
// blocks, warps and cp.async ring with the arithmetic removed) and `read_floor` (a plain streaming read of the
// same bytes).
//
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Icsrc benchmarks/gemv_probe.cu \
//        csrc/weight_only_gemv_int.cu -lcublas -o probe
//   ./probe > probe.csv                  # PROBE_ONE=n,k,m ./probe: three launches only, for ncu
//
// Timing: CUDA graphs of 20 launches over weight copies (random bytes) rotated so that no launch finds its
// weights in L2 (>= 256 MiB in all), replayed 20 times; time per launch = total / launches. Bytes = packed
// weights + scales.
#ifndef NO_CUBLAS  // syntax checks on a machine without cuBLAS
#include <cublas_v2.h>
#endif

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <random>
#include <vector>

#include "weight_only_gemv.cuh"

using namespace quantops;

#define CHECK(x)                                                                          \
  do {                                                                                    \
    cudaError_t e_ = (x);                                                                 \
    if (e_ != cudaSuccess) {                                                              \
      fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      exit(1);                                                                            \
    }                                                                                     \
  } while (0)

static uint16_t bf16_bits(float f) {  // round to nearest even
  uint32_t u;
  memcpy(&u, &f, 4);
  u += 0x7FFF + ((u >> 16) & 1);
  return uint16_t(u >> 16);
}
static float bf16_float(uint16_t b) {
  uint32_t u = uint32_t(b) << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

// int4 codes [n][k] (0..15) -> the tiled layout of weight_only_gemv.cuh (nibble slots (p, p+4) = elements 2p, 2p+1)
static std::vector<uint32_t> tile_int4(const std::vector<uint8_t>& codes, int n, int k, int n_pad, int k_pad) {
  const int tiles_k = k_pad / 128;
  std::vector<uint32_t> out(size_t(n_pad) * k_pad / 8, 0u);
  for (int row = 0; row < n; ++row)
    for (int col = 0; col < k; ++col) {
      const int band = row / 16, r = (row % 16) / 8, g = row % 8, tile = col / 128, tig = (col % 128) / 32;
      const int e = col % 32, word = e / 8, el = e % 8, slot = (el % 2) ? 4 + el / 2 : el / 2;
      const size_t byte = (size_t(band) * tiles_k + tile) * 1024 + r * 512 + (g * 4 + tig) * 16 + word * 4;
      out[byte / 4] |= uint32_t(codes[size_t(row) * k + col]) << (4 * slot);
    }
  return out;
}

struct Layer {
  GemvArgs a{};
  std::vector<void*> w_copies, s_copies, z_copies;
  size_t wbytes = 0, sbytes = 0;
};

// variants: launch shapes of the int4 bf16 symmetric kernel (bands per warp NT, ring depth D, blocks per SM the
// registers must allow MINB)
struct Variant {
  int nt, depth, minb;
};
static const Variant kVariants[] = {{2, 2, 2}, {1, 2, 3}, {1, 4, 2}, {2, 4, 2}, {4, 2, 1}};
constexpr int kNumVariants = sizeof(kVariants) / sizeof(kVariants[0]);

template <bool POST, int NT, int MH, int D, int MINB>
static cudaError_t launch_int4(const GemvArgs& a, cudaStream_t s) {
  return launch_typed<__nv_bfloat16, kInt4, 1, kScaleT, false, POST, NT, MH, D, MINB>(a, s);
}

template <int NT, int D, int MINB>
static cudaError_t launch_nd(const GemvArgs& a, cudaStream_t s) {
  const bool post = a.G == 1 || a.group_size % 128 == 0;
  if (a.M <= 8) return post ? launch_int4<true, NT, 1, D, MINB>(a, s) : launch_int4<false, NT, 1, D, MINB>(a, s);
  return post ? launch_int4<true, NT, 2, D, MINB>(a, s) : launch_int4<false, NT, 2, D, MINB>(a, s);
}

static cudaError_t launch_variant(int v, const GemvArgs& a, cudaStream_t s) {
  switch (v) {
    case 0:
      return launch_nd<2, 2, 2>(a, s);
    case 1:
      return launch_nd<1, 2, 3>(a, s);
    case 2:
      return launch_nd<1, 4, 2>(a, s);
    case 3:
      return launch_nd<2, 4, 2>(a, s);
    default:
      return launch_nd<4, 2, 1>(a, s);
  }
}

// The GEMV's memory traffic alone: the same blocks, warps, K split and cp.async ring, with the dequantization and
// MMAs replaced by an XOR of what landed. Its time is what the access pattern allows.
template <int NT, int D>
__global__ void __launch_bounds__(256, 2) stream_only_kernel(const uint4* __restrict__ w, uint32_t* sink, int tiles_k) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const int per_warp = (tiles_k + warps - 1) / warps, first = warp * per_warp;
  const int count = max(0, min(tiles_k, first + per_warp) - first);
  extern __shared__ uint4 smem[];
  uint4* ring = smem + size_t(warp) * D * NT * 64 + lane;
  const uint4* wrow = w + ((size_t)blockIdx.x * NT * tiles_k + first) * 64 + lane;
  auto issue = [&](int j, int slot) {
    if (j < count)
      for (int t = 0; t < NT; ++t) {
        copy_async16(ring + (slot * NT + t) * 64, wrow + (size_t(t) * tiles_k + j) * 64);
        copy_async16(ring + (slot * NT + t) * 64 + 32, wrow + (size_t(t) * tiles_k + j) * 64 + 32);
      }
    copy_async_commit();
  };
  for (int d = 0; d < D; ++d) issue(d, d);
  uint32_t acc = 0;
  for (int j0 = 0; j0 < count; j0 += D)
#pragma unroll
    for (int d = 0; d < D; ++d) {
      if (j0 + d >= count) break;
      copy_async_wait<D - 1>();
#pragma unroll
      for (int t = 0; t < NT; ++t)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const uint4 v = ring[(d * NT + t) * 64 + 32 * r];
          acc ^= v.x ^ v.y ^ v.z ^ v.w;
        }
      issue(j0 + d + D, d);
    }
  if (acc == 0x9E3779B9u) sink[blockIdx.x] = acc;  // keeps the loads; practically never stores
}

template <int NT, int D>
static cudaError_t launch_stream_only(const GemvArgs& a, uint32_t* sink, cudaStream_t s) {
  const int warps = choose_warps(a, NT);
  const size_t smem = size_t(warps) * D * NT * 1024;
  auto kernel = stream_only_kernel<NT, D>;
  if (smem > 48 * 1024) cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  kernel<<<a.n_pad / (16 * NT), 32 * warps, smem, s>>>(static_cast<const uint4*>(a.w), sink, a.tiles_k);
  return cudaGetLastError();
}

// Plain streaming read of `bytes` (16-byte loads, 4 in flight per thread, 4 blocks of 256 per SM): the floor of a
// kernel that reads this much once.
__global__ void __launch_bounds__(256) read_floor_kernel(const uint4* __restrict__ p, size_t n16, uint32_t* sink) {
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  uint32_t acc = 0;
  size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  for (; i + 3 * stride < n16; i += 4 * stride) {
    uint4 v[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) v[u] = __ldcs(p + i + u * stride);
#pragma unroll
    for (int u = 0; u < 4; ++u) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
  }
  for (; i < n16; i += stride) {
    const uint4 v = __ldcs(p + i);
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x9E3779B9u) sink[blockIdx.x] = acc;
}

static bool check_int4(int n, int k, int m, int gs, bool zp, int num_sms, int max_smem) {
  const int n_pad = (n + 15) / 16 * 16, k_pad = (k + 127) / 128 * 128, G = gs >= k ? 1 : k_pad / gs;
  std::mt19937 rng(n * 7 + k + m + gs);
  std::uniform_int_distribution<int> code(0, 15);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<uint8_t> codes(size_t(n) * k), zeros(size_t(n_pad) * G, 8);
  for (auto& c : codes) c = code(rng);
  if (zp)
    for (int i = 0; i < n * G; ++i) zeros[i] = code(rng);
  std::vector<uint16_t> scales(size_t(n_pad) * G, 0), x(size_t(m) * k);
  for (int i = 0; i < n * G; ++i) scales[i] = bf16_bits(0.01f + 0.02f * std::fabs(nd(rng)));
  for (auto& v : x) v = bf16_bits(nd(rng));
  std::vector<uint32_t> tiled = tile_int4(codes, n, k, n_pad, k_pad);
  void *dw, *ds, *dz, *dx, *dout;
  CHECK(cudaMalloc(&dw, tiled.size() * 4));
  CHECK(cudaMalloc(&ds, scales.size() * 2));
  CHECK(cudaMalloc(&dz, zeros.size()));
  CHECK(cudaMalloc(&dx, x.size() * 2));
  CHECK(cudaMalloc(&dout, size_t(m) * n * 2));
  CHECK(cudaMemcpy(dw, tiled.data(), tiled.size() * 4, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(ds, scales.data(), scales.size() * 2, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(dz, zeros.data(), zeros.size(), cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(dx, x.data(), x.size() * 2, cudaMemcpyHostToDevice));
  std::vector<double> ref(size_t(m) * n);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      double acc = 0;
      for (int c = 0; c < k; ++c) {
        const int grp = G == 1 ? 0 : c / gs;
        acc += double(bf16_float(x[size_t(i) * k + c])) * (int(codes[size_t(j) * k + c]) - zeros[size_t(j) * G + grp]) *
               bf16_float(scales[size_t(j) * G + grp]);
      }
      ref[size_t(i) * n + j] = acc;
    }
  bool ok = true;
  for (int ks : {0, 1, 3, 8})
    for (int v = -1; v < kNumVariants; ++v) {  // -1: the library's dispatch, else a probe variant
      // the variants are symmetric-only, and two bands per warp need an even band count
      if (v >= 0 && (zp || (n_pad / 16) % kVariants[v].nt)) continue;
      GemvArgs a{};
      a.x = dx, a.w = dw, a.scales = ds, a.zeros = zp ? static_cast<uint8_t*>(dz) : nullptr, a.out = dout;
      a.M = m, a.N = n, a.K = k, a.n_pad = n_pad, a.tiles_k = k_pad / 128, a.G = G;
      a.group_shift = G == 1 ? 31 : __builtin_ctz(gs);
      a.group_size = gs, a.fmt = kInt4, a.bf16 = true, a.ksplit = ks, a.num_sms = num_sms, a.max_smem = max_smem;
      CHECK(cudaMemset(dout, 0xFF, size_t(m) * n * 2));  // NaN: a missed store cannot pass as an earlier result
      CHECK(v < 0 ? launch_weight_only_gemv_int(a, 0) : launch_variant(v, a, 0));
      CHECK(cudaDeviceSynchronize());
      std::vector<uint16_t> out(size_t(m) * n);
      CHECK(cudaMemcpy(out.data(), dout, out.size() * 2, cudaMemcpyDeviceToHost));
      double err = 0, ref2 = 0;
      for (size_t i = 0; i < out.size(); ++i) {
        const double d = bf16_float(out[i]) - ref[i];
        err += d * d, ref2 += ref[i] * ref[i];
      }
      const double rel = std::sqrt(err / ref2);
      const bool good = rel < 8e-3;  // NaN fails
      printf("check,int4,n=%d,k=%d,m=%d,gs=%d,zp=%d,ksplit=%d,variant=%d,rel_err=%.2e,%s\n", n, k, m, gs, zp, ks, v,
             rel, good ? "ok" : "FAIL");
      ok &= good;
    }
  cudaFree(dw), cudaFree(ds), cudaFree(dz), cudaFree(dx), cudaFree(dout);
  return ok;
}

template <typename F>
static double graph_us(F launch_one, int copies) {
  cudaStream_t s;
  CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  const int per = 20;
  for (int i = 0; i < per; ++i) CHECK(launch_one(i % copies, s));
  CHECK(cudaStreamSynchronize(s));
  cudaGraph_t g;
  cudaGraphExec_t ge;
  CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  for (int i = 0; i < per; ++i) CHECK(launch_one(i % copies, s));
  CHECK(cudaStreamEndCapture(s, &g));
  CHECK(cudaGraphInstantiate(&ge, g, 0));
  CHECK(cudaGraphLaunch(ge, s));
  CHECK(cudaStreamSynchronize(s));
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0), cudaEventCreate(&e1);
  const int reps = 20;
  cudaEventRecord(e0, s);
  for (int r = 0; r < reps; ++r) CHECK(cudaGraphLaunch(ge, s));
  cudaEventRecord(e1, s);
  CHECK(cudaEventSynchronize(e1));
  float ms;
  cudaEventElapsedTime(&ms, e0, e1);
  cudaGraphExecDestroy(ge), cudaGraphDestroy(g), cudaStreamDestroy(s);
  return ms * 1e3 / (reps * per);
}

int main() {
  int dev = 0, sms = 0;
  CHECK(cudaGetDevice(&dev));
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, dev));
  printf("device,%s,sms=%d\n", prop.name, sms);
  int max_smem = 0;
  CHECK(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  if (const char* one = getenv("PROBE_ONE")) {  // "n,k,m": three plain launches (for ncu), nothing else
    int n, k, m;
    if (sscanf(one, "%d,%d,%d", &n, &k, &m) != 3) return 2;
    void *w, *sc, *x, *out;
    CHECK(cudaMalloc(&w, size_t(n) * k / 2));
    CHECK(cudaMemset(w, 0x5A, size_t(n) * k / 2));
    CHECK(cudaMalloc(&sc, size_t(n) * (k / 128) * 2));
    CHECK(cudaMemset(sc, 0x3C, size_t(n) * (k / 128) * 2));
    CHECK(cudaMalloc(&x, size_t(m) * k * 2));
    CHECK(cudaMemset(x, 0x3C, size_t(m) * k * 2));
    CHECK(cudaMalloc(&out, size_t(m) * n * 2));
    GemvArgs a{};
    a.x = x, a.w = w, a.scales = sc, a.out = out, a.M = m, a.N = n, a.K = k, a.n_pad = n, a.tiles_k = k / 128;
    a.G = k / 128, a.group_shift = 7, a.group_size = 128, a.fmt = kInt4, a.bf16 = true, a.num_sms = sms, a.max_smem = max_smem;
    const char* v = getenv("PROBE_VARIANT");  // index into kVariants; default: the library's dispatch
    const char* ks = getenv("PROBE_KSPLIT");
    if (ks) a.ksplit = atoi(ks);
    for (int i = 0; i < 3; ++i) CHECK(v ? launch_variant(atoi(v), a, 0) : launch_weight_only_gemv_int(a, 0));
    CHECK(cudaDeviceSynchronize());
    return 0;
  }
  bool ok = true;
  for (int zp = 0; zp < 2; ++zp)
    for (int gs : {128, 32, 1 << 30}) {
      ok &= check_int4(208, 512, 3, gs, zp, sms, max_smem);  // 13 bands: one band per warp
      ok &= check_int4(200, 288, 1, gs, zp, sms, max_smem);
      ok &= check_int4(37, 1056, 5, gs, zp, sms, max_smem);
      ok &= check_int4(520, 4096, 16, gs, zp, sms, max_smem);
      ok &= check_int4(64, 256, 9, gs, zp, sms, max_smem);  // 4 bands: two per warp
    }
  printf("checks,%s\n", ok ? "all ok" : "FAILURES");

  // copy bandwidth
  {
    const size_t bytes = size_t(1) << 30;
    void *a, *b;
    CHECK(cudaMalloc(&a, bytes));
    CHECK(cudaMalloc(&b, bytes));
    auto us = graph_us([&](int, cudaStream_t s) { return cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, s); }, 1);
    printf("copy,bytes=%zu,us=%.1f,TBps_read_plus_write=%.3f\n", bytes, us, 2.0 * bytes / us / 1e6);
    cudaFree(a), cudaFree(b);
  }

#ifndef NO_CUBLAS
  cublasHandle_t handle;
  cublasCreate(&handle);
#endif
  printf("kind,n,k,m,gs,nt,depth,minb,ksplit,us,bf16_us,speedup,TBps\n");
  uint32_t* sink;
  CHECK(cudaMalloc(&sink, 1 << 20));
  const int shapes[][2] = {{8192, 8192}, {6144, 4096}, {4096, 4096}, {28672, 4096}, {4096, 14336}};
  for (auto& sh : shapes) {
    const int n = sh[0], k = sh[1];
    const size_t wbytes = size_t(n) * k / 2, bfbytes = size_t(n) * k * 2;
    const int copies = int(std::max<size_t>(2, std::min<size_t>(32, (size_t(256) << 20) / wbytes + 1)));
    const int bcopies = int(std::max<size_t>(2, std::min<size_t>(16, (size_t(256) << 20) / bfbytes + 1)));
    std::vector<void*> ws(copies), ss(copies), bw(bcopies);
    const int G = k / 128;
    std::mt19937 rng(n + k);
    std::vector<uint32_t> host(wbytes / 4);
    for (auto& h : host) h = rng();
    for (int c = 0; c < copies; ++c) {  // random codes: timing never runs on constant data
      CHECK(cudaMalloc(&ws[c], wbytes));
      CHECK(cudaMemcpy(ws[c], host.data(), wbytes, cudaMemcpyHostToDevice));
      CHECK(cudaMalloc(&ss[c], size_t(n) * G * 2));
      CHECK(cudaMemset(ss[c], 0x3C, size_t(n) * G * 2));
    }
    for (int c = 0; c < bcopies; ++c) {
      CHECK(cudaMalloc(&bw[c], bfbytes));
      CHECK(cudaMemset(bw[c], 0x3C, bfbytes));
    }
    void *x, *out;
    CHECK(cudaMalloc(&x, size_t(64) * k * 2));
    CHECK(cudaMemset(x, 0x3C, size_t(64) * k * 2));
    CHECK(cudaMalloc(&out, size_t(64) * n * 4));
    auto args = [&](int c, int m, int ks) {
      GemvArgs a{};
      a.x = x, a.w = ws[c], a.scales = ss[c], a.out = out;
      a.M = m, a.N = n, a.K = k, a.n_pad = n, a.tiles_k = k / 128, a.G = G, a.group_shift = 7;
      a.group_size = 128, a.fmt = kInt4, a.bf16 = true, a.ksplit = ks, a.num_sms = sms, a.max_smem = max_smem;
      return a;
    };
    const double wsbytes = double(wbytes + size_t(n) * G * 2);
    auto row = [&](const char* kind, int m, int nt, int depth, int minb, int ks, double us, double bf_us) {
      printf("%s,%d,%d,%d,128,%d,%d,%d,%d,%.2f,%.2f,%.2f,%.3f\n", kind, n, k, m, nt, depth, minb, ks, us, bf_us,
             bf_us / us, wsbytes / us / 1e6);
    };
    for (int m : {1, 16}) {
      auto bf = [&](int c, cudaStream_t s) {
#ifndef NO_CUBLAS
        const float one = 1.f, zero = 0.f;
        cublasSetStream(handle, s);
        // out[m, n] = x[m, k] @ W[n, k]^T  (column-major: C[n, m] = W^T... as torch's F.linear does)
        cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &one, bw[c], CUDA_R_16BF, k, x, CUDA_R_16BF, k, &zero,
                     out, CUDA_R_16BF, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
#endif
        return cudaGetLastError();
      };
      const double bf_us = graph_us(bf, bcopies);
      row("dispatch", m, 0, 0, 0, 0, graph_us([&](int c, cudaStream_t s) { return launch_weight_only_gemv_int(args(c, m, 0), s); }, copies), bf_us);
      for (int v = 0; v < kNumVariants; ++v) {
        const double us = graph_us([&](int c, cudaStream_t s) { return launch_variant(v, args(c, m, 0), s); }, copies);
        row("int4_g128", m, kVariants[v].nt, kVariants[v].depth, kVariants[v].minb, 0, us, bf_us);
      }
      if (m != 1) continue;
      for (int ks : {0, 8}) {
        row("stream_only", m, 2, 2, 2, ks, graph_us([&](int c, cudaStream_t s) { return launch_stream_only<2, 2>(args(c, m, ks), sink, s); }, copies), bf_us);
        row("stream_only", m, 1, 4, 2, ks, graph_us([&](int c, cudaStream_t s) { return launch_stream_only<1, 4>(args(c, m, ks), sink, s); }, copies), bf_us);
        row("stream_only", m, 2, 4, 2, ks, graph_us([&](int c, cudaStream_t s) { return launch_stream_only<2, 4>(args(c, m, ks), sink, s); }, copies), bf_us);
      }
      for (int per_sm : {2, 4, 8}) {
        const double us = graph_us([&](int c, cudaStream_t s) {
          read_floor_kernel<<<sms * per_sm, 256, 0, s>>>(static_cast<const uint4*>(ws[c]), wbytes / 16, sink);
          return cudaGetLastError();
        }, copies);
        row("read_floor", m, 0, 0, per_sm, 0, us, bf_us);
      }
    }
    for (auto p : ws) cudaFree(p);
    for (auto p : ss) cudaFree(p);
    for (auto p : bw) cudaFree(p);
    cudaFree(x), cudaFree(out);
  }
  return ok ? 0 : 1;
}
