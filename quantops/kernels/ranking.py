"""Ranked kernel candidates per (scheme family, platform): the first that can run a layer wins.

Entries are "module:Class" under quantops.kernels, imported only when a selection needs them (a missing
optional library is then a rejection reason, not an ImportError). An entry may carry "@m<=T": it is a
candidate only for batches of at most T rows, and the registry builds an M plan (decode vs prefill) from it.
Every list ends with the family's emulation kernel: the numerical reference, and the last resort.

Why this order (numbers from `quantops bench` on the device named) is written beside each list.
"""

from __future__ import annotations

EMULATION = "emulation:EmulationKernel"

RANKING: dict[str, dict[str, list[str]]] = {
    # FP8 W8A8 (per-tensor, per-token x per-channel, 128x128 block)
    "fp8": {
        "cuda": [  # provisional order, pending `quantops bench` on an H200
            "fbgemm_fp8:Fp8FbgemmKernel",
            "cublas_fp8:Fp8ScaledMMKernel",
            "flashinfer_fp8:Fp8FlashInferKernel",
            "triton_fp8:Fp8TritonKernel",
            "flashinfer_fp8:Fp8BlockScaledFlashInferKernel",
            "cublas_fp8:Fp8BlockScaledMMKernel",
            "fbgemm_fp8:Fp8BlockScaledFbgemmKernel",
            "triton_fp8_blockscaled:Fp8BlockScaledTritonKernel",
            EMULATION,
        ],
        # CPU: torch._scaled_mm runs FP8 per-tensor/row-wise on the CPU (2.13) and matches emulation, but was
        # no faster (2048/4096 square, M=1..128, 2 cores: 0.8-1.3x), so emulation stays the CPU kernel.
        "cpu": [EMULATION],
    },
    # INT8 W8A8
    "int8": {
        "cuda": ["cublas_int8:Int8IntMMKernel", "triton_int8:Int8TritonKernel", EMULATION],
        # CPU _int_mm (2048x2048, 2 cores, bf16): M=1/32 30/15 ms vs emulation 47/89 ms.
        "cpu": ["cpu_int8:Int8IntMMCpuKernel", EMULATION],
    },
    # INT4 / INT8 weight-only (W4A16, W4A16_ASYM, W8A16)
    "wna16": {
        # Hopper weight-only: CUDA GEMV (csrc/) for decode, Triton tensor-core GEMM for mid M, dequantize +
        # cuBLAS for prefill; tinygemm and FBGEMM stay ranked as alternatives (chosen if those above are
        # disabled or cannot run the layer). Provisional thresholds, pending `quantops bench` on an H200.
        "cuda": [
            "cuda_wna16:WeightOnlyGemvCudaKernel@m<=16",
            "triton_wna16:WeightOnlyGemmTritonKernel@m<=128",
            "dequant_cublas:WeightOnlyDequantCublasKernel",
            "tinygemm_int4:Int4TinygemmKernel",
            "fbgemm_int4:Int4RowwiseFbgemmKernel",
            EMULATION,
        ],
        # CPU (2048x2048, 2 cores, torch 2.13): bf16 int4 M=1/32 19/24 ms vs emulation 132/226 ms; int8
        # 24/23 vs 117/181. fp32 ops are per-row GEMVs (6-10x faster at M=1, slower past M~8): fp32 @m<=8.
        "cpu": [
            "cpu_wna16:Int8WeightOnlyCpuKernel",
            "cpu_wna16:Int4WeightOnlyCpuKernel",
            "cpu_wna16:Int8WeightOnlyCpuFp32Kernel@m<=8",
            "cpu_wna16:Int4WeightOnlyCpuFp32Kernel@m<=8",
            EMULATION,
        ],
    },
    # W4AFP8: activations rounded to fp8 per token (plain torch) then the weight-only kernels, or FBGEMM's
    # fp8 x int4 CUTLASS GEMM.
    "w4afp8": {
        "cuda": [
            "cuda_wna16:WeightOnlyGemvCudaKernel@m<=16",
            "triton_wna16:WeightOnlyGemmTritonKernel@m<=128",
            "fbgemm_int4:W4AFp8RowwiseFbgemmKernel",
            "dequant_cublas:WeightOnlyDequantCublasKernel",
            EMULATION,
        ],
        "cpu": [EMULATION],
    },
    # NVFP4 W4A4 on sm100+: vLLM's order (FlashInfer CUTLASS first, then trtllm, cuDNN, FBGEMM). Written to the
    # libraries' APIs, not yet run on Blackwell hardware, so not benchmarked here.
    "nvfp4": {
        "cuda": [
            "flashinfer_nvfp4:FlashInferCutlassNvfp4Kernel",
            "flashinfer_nvfp4:FlashInferTrtllmNvfp4Kernel",
            "flashinfer_nvfp4:FlashInferCudnnNvfp4Kernel",
            "fbgemm_nvfp4:FbgemmNvfp4Kernel",
            # Hopper (and any sm80+): weight-only, activations kept in bf16, with a logged notice
            "cuda_wna16:WeightOnlyGemvCudaKernel@m<=16",
            "triton_wna16:WeightOnlyGemmTritonKernel@m<=128",
            "dequant_cublas:WeightOnlyDequantCublasKernel",
            EMULATION,
        ],
        "cpu": [EMULATION],
    },
    "nvfp4a16": {
        "cuda": [
            "cuda_wna16:WeightOnlyGemvCudaKernel@m<=16",
            "triton_wna16:WeightOnlyGemmTritonKernel@m<=128",
            "dequant_cublas:WeightOnlyDequantCublasKernel",
            EMULATION,
        ],
        "cpu": [EMULATION],
    },
    # MXFP4 W4A4 on sm100: FlashInfer's CuTe-DSL GEMM, as vLLM. Written, not yet run on Blackwell hardware.
    "mxfp4": {
        "cuda": [
            "flashinfer_mxfp4:FlashInferCuteDslMxfp4Kernel",
            # Hopper (and any sm80+): weight-only, activations kept in bf16, with a logged notice
            "cuda_wna16:WeightOnlyGemvCudaKernel@m<=16",
            "triton_wna16:WeightOnlyGemmTritonKernel@m<=128",
            "dequant_cublas:WeightOnlyDequantCublasKernel",
            EMULATION,
        ],
        "cpu": [EMULATION],
    },
    "mxfp4a16": {
        "cuda": [
            "cuda_wna16:WeightOnlyGemvCudaKernel@m<=16",
            "triton_wna16:WeightOnlyGemmTritonKernel@m<=128",
            "dequant_cublas:WeightOnlyDequantCublasKernel",
            EMULATION,
        ],
        "cpu": [EMULATION],
    },
    # MXFP8 W8A8 on sm100+: FlashInfer's CUTLASS mm_mxfp8, as vLLM. Written, not yet run on Blackwell hardware.
    "mxfp8": {
        "cuda": [
            "flashinfer_mxfp8:FlashInferCutlassMxfp8Kernel",
            # Hopper (and any sm80+): weight-only, activations kept in bf16, with a logged notice
            "cuda_wna16:WeightOnlyGemvCudaKernel@m<=16",
            "triton_wna16:WeightOnlyGemmTritonKernel@m<=128",
            "dequant_cublas:WeightOnlyDequantCublasKernel",
            EMULATION,
        ],
        "cpu": [EMULATION],
    },
    "mxfp8a16": {
        "cuda": [
            "cuda_wna16:WeightOnlyGemvCudaKernel@m<=16",
            "triton_wna16:WeightOnlyGemmTritonKernel@m<=128",
            "dequant_cublas:WeightOnlyDequantCublasKernel",
            EMULATION,
        ],
        "cpu": [EMULATION],
    },
}
