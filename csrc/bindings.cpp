// Python bindings of the quantops CUDA kernels (built on first use by quantops.kernels.cuda_ext).
// The torch.library ops with their fake impls are defined in Python (quantops/kernels/cuda_wna16.py); these
// functions are their real implementations. Checks here are the last line of defence: the Python side
// raises clear ValueErrors before a launch.
#include <cuda_runtime.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/csrc/utils/pybind.h>  // at::Tensor <-> Python casters (lighter than torch/extension.h)

#include <array>
#include <optional>

#include "weight_only_gemv.h"

namespace {

// a device attribute, read once per device (cudaDeviceGetAttribute does not synchronize)
template <cudaDeviceAttr ATTR>
int device_attribute(int device, int fallback) {
  static std::array<int, 64> cache{};
  if (device < 0 || device >= int(cache.size())) return fallback;
  if (cache[device] == 0) {  // stored + 1: an attribute may be 0 (a compute capability's minor)
    int v = -1;
    cudaDeviceGetAttribute(&v, ATTR, device);
    cache[device] = (v >= 0 ? v : fallback) + 1;
  }
  return cache[device] - 1;
}

struct DeviceScope {
  int previous = -1;
  explicit DeviceScope(int device) {
    cudaGetDevice(&previous);
    if (previous != device) cudaSetDevice(device);
  }
  ~DeviceScope() {
    int now = -1;
    cudaGetDevice(&now);
    if (previous >= 0 && now != previous) cudaSetDevice(previous);
  }
};

at::Tensor weight_only_gemv(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                            const std::optional<at::Tensor>& zeros, const std::optional<at::Tensor>& alpha,
                            int64_t fmt, int64_t group_size, int64_t n, int64_t k, int64_t stream_handle,
                            int64_t ksplit, int64_t path) {
  TORCH_CHECK(x.is_cuda() && qweight.is_cuda() && scales.is_cuda(), "weight_only_gemv: tensors must be on CUDA");
  TORCH_CHECK(x.dim() == 2 && x.size(1) == k, "weight_only_gemv: x must be [M, ", k, "], got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf,
              "weight_only_gemv: x must be bf16 or fp16");
  TORCH_CHECK(x.is_contiguous() && qweight.is_contiguous() && scales.is_contiguous(),
              "weight_only_gemv: tensors must be contiguous");
  const int bits = (fmt == quantops::kInt4 || fmt == quantops::kFp4) ? 4 : 8;
  const int vpc = 128 / bits, tile_k = 4 * vpc;
  TORCH_CHECK(k % vpc == 0, "weight_only_gemv: K must be a multiple of ", vpc);
  // tiles of 16 rows x tile_k columns (cuda_wna16.py prepares them): [n_pad, k_pad * bits / 32] int32
  TORCH_CHECK(qweight.scalar_type() == at::kInt && qweight.dim() == 2, "weight_only_gemv: qweight must be 2-D int32");
  const int64_t n_pad = qweight.size(0), k_pad = qweight.size(1) * 32 / bits;
  TORCH_CHECK(n_pad % 16 == 0 && n_pad >= n && n_pad < n + 16 && k_pad % tile_k == 0 && k_pad >= k &&
                  k_pad < k + tile_k,
              "weight_only_gemv: qweight ", qweight.sizes(), " is not the tiled layout of a ", n, "x", k, " weight");
  TORCH_CHECK(reinterpret_cast<uintptr_t>(qweight.data_ptr()) % 16 == 0 &&
                  reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0,
              "weight_only_gemv: x and qweight must be 16-byte aligned");
  const bool is_int = fmt == quantops::kInt4 || fmt == quantops::kInt8;
  TORCH_CHECK(is_int ? scales.scalar_type() == x.scalar_type() : scales.scalar_type() == at::kByte,
              "weight_only_gemv: scales must be in x's dtype (int formats) or uint8 e4m3/e8m0 codes (fp formats)");
  TORCH_CHECK(scales.dim() == 2 && scales.size(0) == n_pad,
              "weight_only_gemv: scales must be [", n_pad, ", G], got ", scales.sizes());
  const int64_t groups = scales.size(1);
  int shift = 31;  // per-channel: every column in group 0
  if (groups != 1) {
    TORCH_CHECK(group_size > 0 && (group_size & (group_size - 1)) == 0,
                "weight_only_gemv: group size must be a power of two, got ", group_size);
    shift = 0;
    while ((int64_t(1) << shift) < group_size) ++shift;
  }
  TORCH_CHECK(groups == 1 || groups * group_size >= k_pad,
              "weight_only_gemv: scales must be [", n_pad, ", G] covering ", k_pad, " columns, got ", scales.sizes());
  // float formats: NVFP4's alpha = 1 / weight_global_scale; MX's alpha = 2^p, the power of two that keeps every block
  // multiplier a finite bf16 (ScalePost in weight_only_decode.cuh; cuda_wna16.py prepares it)
  TORCH_CHECK(is_int || (alpha && alpha->is_cuda() && alpha->scalar_type() == at::kFloat && alpha->numel() == 1),
              "weight_only_gemv: float weights need alpha, fp32 [1] on the GPU (NVFP4: 1 / weight_global_scale; "
              "MX: 2^p, see WeightOnlyGemvCudaKernel.prepare)");
  if (zeros) {
    TORCH_CHECK(zeros->is_cuda() && zeros->scalar_type() == at::kByte && zeros->is_contiguous() &&
                    zeros->sizes() == scales.sizes(),
                "weight_only_gemv: zeros must be uint8 like scales");
  }
  TORCH_CHECK(path >= -1 && path <= 2,
              "weight_only_gemv: path must be -1 (choose), 0 (GEMV), 1 (GEMM) or 2 (Hopper GEMM), got ", path);
  const int64_t m = x.size(0);
  at::Tensor out = at::empty({m, n}, x.options());
  if (m == 0) return out;
  // The caller passes torch's current stream (the capture stream under CUDA graphs); the device is made
  // current for the launch and restored after.
  const DeviceScope scope(x.get_device());
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const int num_sms = device_attribute<cudaDevAttrMultiProcessorCount>(x.get_device(), 132);
  const int max_smem = device_attribute<cudaDevAttrMaxSharedMemoryPerBlockOptin>(x.get_device(), 48 * 1024);
  // wgmma needs sm_90 exactly (the extension's sm_90a code; other GPUs run its sm_80 code, without wgmma)
  const bool hopper = device_attribute<cudaDevAttrComputeCapabilityMajor>(x.get_device(), 0) == 9 &&
                      device_attribute<cudaDevAttrComputeCapabilityMinor>(x.get_device(), 0) == 0;
  quantops::GemvArgs a;
  a.x = x.data_ptr();
  a.w = qweight.data_ptr();
  a.scales = scales.data_ptr();
  a.zeros = zeros ? zeros->data_ptr<uint8_t>() : nullptr;
  a.alpha = (!is_int && alpha) ? alpha->data_ptr<float>() : nullptr;
  a.out = out.data_ptr();
  a.M = int(m);
  a.N = int(n);
  a.K = int(k);
  a.n_pad = int(n_pad);
  a.tiles_k = int(k_pad / tile_k);
  a.G = int(groups);
  a.group_shift = shift;
  a.group_size = int(group_size);
  a.fmt = int(fmt);
  a.bf16 = x.scalar_type() == at::kBFloat16;
  a.ksplit = int(ksplit);
  a.num_sms = num_sms;
  a.max_smem = max_smem;
  // path: 0 = GEMV (chunks of 16 rows), 1 = GEMM (mma.sync), 2 = Hopper GEMM (wgmma); -1 = the GEMV up to kMaxRows
  // rows, else the Hopper GEMM on sm_90, else the GEMM (each where its shared memory fits this device)
  const size_t wgmma_smem = quantops::wgmma_smem_bytes(a.fmt, quantops::plan_weight_only_wgmma(a).mt);
  const bool wgmma_fits = hopper && wgmma_smem <= size_t(max_smem);
  TORCH_CHECK(path != 2 || wgmma_fits, "weight_only_gemv: the Hopper GEMM needs an sm_90 GPU with ", wgmma_smem,
              " bytes of shared memory per block");
  const bool use_wgmma = path == 2 || (path < 0 && m > quantops::kMaxRows && wgmma_fits);
  const quantops::GemmPlan plan = use_wgmma ? quantops::plan_weight_only_wgmma(a) : quantops::plan_weight_only_gemm(a);
  const bool fits = quantops::gemm_smem_bytes(a, plan) <= size_t(max_smem);
  TORCH_CHECK(path != 1 || fits, "weight_only_gemv: the GEMM needs ", quantops::gemm_smem_bytes(a, plan),
              " bytes of shared memory per block, this device allows ", max_smem);
  if (use_wgmma || path == 1 || (path < 0 && m > quantops::kMaxRows && fits)) {
    at::Tensor partial, arrivals, x_perm;  // GEMM split K: fp32 partial sums and a zeroed counter per row block
    if (use_wgmma) {
      x_perm = at::empty({m, k_pad}, x.options());
      a.x_perm = x_perm.data_ptr();
    }
    if (plan.splits > 1 && !plan.cluster) {
      partial = at::empty({int64_t(plan.chunks) * plan.splits * plan.mt * n_pad}, x.options().dtype(at::kFloat));
      arrivals = at::zeros({int64_t(plan.chunks) * plan.blocks_n}, x.options().dtype(at::kInt));
      a.partial = partial.data_ptr<float>();
      a.arrivals = arrivals.data_ptr<int>();
    }
    const cudaError_t err = use_wgmma ? (is_int ? quantops::launch_weight_only_wgmma_int(a, stream)
                                                : quantops::launch_weight_only_wgmma_fp(a, stream))
                                      : (is_int ? quantops::launch_weight_only_gemm_int(a, stream)
                                                : quantops::launch_weight_only_gemm_fp(a, stream));
    TORCH_CHECK(err == cudaSuccess, "weight_only_gemm launch failed: ", cudaGetErrorString(err));
    return out;
  }
  const size_t x_row = size_t(k) * x.element_size();
  const size_t o_row = size_t(n) * out.element_size();
  for (int64_t m0 = 0; m0 < m; m0 += quantops::kMaxRows) {
    a.x = static_cast<const char*>(x.data_ptr()) + m0 * x_row;
    a.out = static_cast<char*>(out.data_ptr()) + m0 * o_row;
    a.M = int(std::min<int64_t>(quantops::kMaxRows, m - m0));
    const cudaError_t err = is_int ? quantops::launch_weight_only_gemv_int(a, stream)
                                   : quantops::launch_weight_only_gemv_fp(a, stream);
    TORCH_CHECK(err == cudaSuccess, "weight_only_gemv launch failed: ", cudaGetErrorString(err));
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("weight_only_gemv", &weight_only_gemv,
        "Weight-only GEMV for M <= 16 rows of x, the batched GEMM beyond (path: -1 auto, 0 GEMV, 1 GEMM, 2 Hopper GEMM)",
        pybind11::arg("x"), pybind11::arg("qweight"), pybind11::arg("scales"), pybind11::arg("zeros"), pybind11::arg("alpha"),
        pybind11::arg("fmt"), pybind11::arg("group_size"), pybind11::arg("n"), pybind11::arg("k"),
        pybind11::arg("stream"), pybind11::arg("ksplit") = 0, pybind11::arg("path") = -1);
}
