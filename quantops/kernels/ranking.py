"""Ranked kernel candidates per (scheme family, platform): the first that can run a layer wins.

Entries are "module:Class" under quantops.kernels, imported only when a selection needs them (a missing
optional library is then a rejection reason, not an ImportError). An entry may carry "@m<=T": it is a
candidate only for batches of at most T rows, and the registry builds an M plan (decode vs prefill) from it;
and "nk>=W" (comma-separated after it): only for layers of at least W weights (N * K), where one kernel's lead
over another depends on the layer's size.
Every list ends with the family's emulation kernel: the numerical reference, and the last resort.

Why this order (numbers from `quantops bench` on the device named) is written beside each list.
"""

from __future__ import annotations

EMULATION = "emulation:EmulationKernel"

RANKING: dict[str, dict[str, list[str]]] = {
    # FP8 W8A8 (per-tensor, per-token x per-channel, 128x128 block). `quantops bench` on an H200 (torch 2.11+cu130,
    # FBGEMM 1.6.0, FlashInfer 0.7.2), compiled apply with activation quantization, CUDA graphs: geometric mean of
    # bf16 F.linear time / kernel time over 9 layers (square 8192; Llama-3-8B and -70B qkv, o, gate_up, down), at
    # M =                                 1     16     64    128    512   2048   4096
    #  per-tensor (FP8, static):
    #   Fp8FlashInferKernel (bmm_fp8)    1.67   1.65   1.58   1.55   1.52   1.64   1.69
    #   Fp8ScaledMMKernel (tensor-wise)  1.67   1.66   1.59   1.55   1.44   1.54   1.58
    #   Fp8TritonKernel                  1.61   1.57   1.33   1.00   1.16   1.44   1.48
    #   Fp8TensorwiseFbgemmKernel        0.76   0.89   1.00   1.33   1.26   1.35   1.40
    #  per-token x per-channel (FP8_DYNAMIC):
    #   Fp8RowwiseFbgemmKernel           1.57   1.57   1.48   1.41   1.41   1.68   1.71
    #   Fp8TritonKernel                  1.53   1.50   1.29   0.99   1.18   1.47   1.51
    #   Fp8ScaledMMKernel (row-wise)     0.99   1.01   1.15   1.29   1.39   1.50   1.57
    #  1x128 x 128x128 blocks (FP8_BLOCK):
    #   Fp8BlockScaledTritonKernel       1.46   1.41   1.04   0.60   0.46   0.52   0.55   (fastest at M=1 on all 9)
    #   Fp8BlockScaledFlashInferKernel   1.38   1.53   1.52   1.44   1.28   1.43   1.44
    #   Fp8BlockScaledMMKernel           1.03   1.25   1.18   1.18   1.22   1.33   1.37
    #   Fp8BlockScaledFbgemmKernel       1.25   1.47   0.73   0.81   1.00   1.11   1.13
    # One list serves the three strategies (can_implement sends each layer to its own kernels). Triton@m<=64 sits
    # above cuBLAS row-wise for FP8_DYNAMIC without FBGEMM (1.5x vs 1.0x at M<=16), at a 4% cost for per-tensor
    # FP8 without FlashInfer. The unlimited Triton entries are the fallbacks for fp16/fp32 outputs and other GPUs.
    "fp8": {
        "cuda": [
            "flashinfer_fp8:Fp8FlashInferKernel",
            "fbgemm_fp8:Fp8RowwiseFbgemmKernel",
            "triton_fp8:Fp8TritonKernel@m<=64",
            "triton_fp8_blockscaled:Fp8BlockScaledTritonKernel@m<=1",
            "flashinfer_fp8:Fp8BlockScaledFlashInferKernel",
            "cublas_fp8:Fp8BlockScaledMMKernel",
            "cublas_fp8:Fp8ScaledMMKernel",
            "fbgemm_fp8:Fp8BlockScaledFbgemmKernel",
            "triton_fp8:Fp8TritonKernel",
            "triton_fp8_blockscaled:Fp8BlockScaledTritonKernel",
            "fbgemm_fp8:Fp8TensorwiseFbgemmKernel",
            EMULATION,
        ],
        # CPU: torch._scaled_mm runs FP8 per-tensor/row-wise on the CPU (2.13) and matches emulation, but was no
        # faster (2048/4096 square, M=1..128, 2 cores: 0.8-1.3x), so emulation stays the CPU kernel.
        "cpu": [EMULATION],
    },
    # INT8 W8A8 (same bench, W8A8 = per-token x per-channel):  M = 1     16     64    128    512   2048   4096
    #   Int8TritonKernel (fused epilogue)                         1.52   1.49   1.27   0.96   0.95   1.14   1.20
    #   Int8IntMMKernel (torch._int_mm + Inductor epilogue)      1.17   1.15   1.17   0.84   0.78   0.91   0.97
    "int8": {
        "cuda": ["triton_int8:Int8TritonKernel", "cublas_int8:Int8IntMMKernel", EMULATION],
        # CPU _int_mm (2048x2048, 2 cores, bf16): M=1/32 30/15 ms vs emulation 47/89 ms.
        "cpu": ["cpu_int8:Int8IntMMCpuKernel", EMULATION],
    },
    # INT4 / INT8 weight-only (W4A16, W4A16_ASYM, W8A16)
    "wna16": {
        # H200 (`quantops bench`, eager, L2-cold, geo-mean over 8192x8192 + Llama-3-8B layers, ratio to bf16):
        # the CUDA op's GEMV to 16 rows (W4A16 2.26x at M=1, 1.62x at 16; tinygemm 1.83x / 0.52x, kept as its
        # fallback), its wgmma GEMM above on Hopper: at 32 it is ahead of FBGEMM's shuffled GEMM on the geo-mean (1.37
        # vs 1.03x; qkv and o within 8%); past 32 only on large layers (docs/results/h200_shuffled_bench_w4a16.csv,
        # op vs FBGEMM bf16i4bf16_shuffled at M=64 / 128):
        #   8192x8192 (67M weights) 1.33 / 0.95 vs 1.30 / 1.13    gate_up 28672x4096 (117M) 1.54 / 0.88 vs 0.99 / 0.94
        #   down 4096x14336 (59M)   1.20 / 0.87 vs 0.82 / 0.74    qkv 6144x4096 (25M)       0.91 / 0.73 vs 1.00 / 0.90
        #   o 4096x4096 (17M)       0.70 / 0.65 vs 0.82 / 0.84
        # so the op keeps 33..64 rows on layers of >= 40M weights (down at 128 stays 15% behind the op); the shuffled
        # GEMM takes the rest at every M (chosen geo-mean 1.15x at 64, 0.90x at 128, 0.94x at 512, 1.03 / 1.04x at
        # 2048 / 4096, ahead of dequantize + cuBLAS's 0.90 / 0.99x on every layer there; row-wise FBGEMM 0.78 / 0.86 /
        # 0.93 / 0.93x, kept for N not a multiple of 16); where FBGEMM cannot run (W8A16, fp16, act-order) the CUDA op
        # up to 128 (W8A16 8192^2 1.11x at 64, 0.74x at 128 vs dequantize + cuBLAS 0.42x), then dequantize + cuBLAS
        # (0.90-0.94x at M>=2048).
        "cuda": [
            "cuda_wna16:WeightOnlyGemvCudaKernel@m<=32",
            "cuda_wna16:WeightOnlyGemvCudaKernel@m<=64,nk>=40e6",
            "tinygemm_int4:Int4TinygemmKernel@m<=1",
            "fbgemm_int4:Int4ShuffledFbgemmKernel",
            "fbgemm_int4:Int4RowwiseFbgemmKernel@m<=2048",
            "cuda_wna16:WeightOnlyGemvCudaKernel@m<=128",
            "triton_wna16:WeightOnlyGemmTritonKernel@m<=64",
            "dequant_cublas:WeightOnlyDequantCublasKernel",
            EMULATION,
        ],
        "cpu": [
            "cpu_wna16:Int8WeightOnlyCpuKernel",
            "cpu_wna16:Int4WeightOnlyCpuKernel",
            "cpu_wna16:Int8WeightOnlyCpuFp32Kernel@m<=8",
            "cpu_wna16:Int4WeightOnlyCpuFp32Kernel@m<=8",
            EMULATION,
        ],
    },
    # W4AFP8: activations rounded to fp8 per token, then the CUDA op for decode, FBGEMM's shuffled fp8 x int4 GEMM
    # above. H200, `quantops bench` compiled (the rounding fused by Inductor), geo-mean over 8192^2 + Llama-3-8B at
    # M = 1 / 16 / 32 / 128 / 2048 (docs/results/h200_w4afp8_compiled_bench.csv): CUDA op 1.97 / 1.41 / 1.25 / 0.75 /
    # 0.50x, shuffled GEMM 1.28 / 1.27 / 1.25 / 1.16 / 1.50x, row-wise GEMM 0.67 / 0.71 / 0.72 / 0.75 / 0.88x (kept
    # where N is not a multiple of 16 or with zero points); Triton / dequantize as fallbacks.
    "w4afp8": {
        "cuda": [
            "cuda_wna16:WeightOnlyGemvCudaKernel@m<=16",
            "fbgemm_int4:W4AFp8ShuffledFbgemmKernel",
            "fbgemm_int4:W4AFp8RowwiseFbgemmKernel",
            "triton_wna16:WeightOnlyGemmTritonKernel@m<=64",
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
            "cuda_wna16:WeightOnlyGemvCudaKernel@m<=128",
            "dequant_cublas:WeightOnlyDequantCublasKernel",
            "triton_wna16:WeightOnlyGemmTritonKernel",
            EMULATION,
        ],
        "cpu": [EMULATION],
    },
    "nvfp4a16": {
        # H200 (8192^2, `quantops bench`): the CUDA op up to M=128 (its wgmma GEMM from 17 rows: NVFP4A16 / MXFP4A16 /
        # MXFP8A16 0.96 / 1.06 / 0.94x at 64, 0.62 / 0.69 / 0.59x at 128 vs dequantize + cuBLAS 0.33x); dequantize
        # + cuBLAS above (0.54x at 512, 0.88-0.96x at 4096); the Triton GEMM's e2m1/e4m3 decode is slow there
        # (0.07x), so it is only a fallback
        "cuda": [
            "cuda_wna16:WeightOnlyGemvCudaKernel@m<=128",
            "dequant_cublas:WeightOnlyDequantCublasKernel",
            "triton_wna16:WeightOnlyGemmTritonKernel",
            EMULATION,
        ],
        "cpu": [EMULATION],
    },
    # MXFP4 W4A4 on sm100: FlashInfer's CuTe-DSL GEMM, as vLLM. Written, not yet run on Blackwell hardware.
    "mxfp4": {
        "cuda": [
            "flashinfer_mxfp4:FlashInferCuteDslMxfp4Kernel",
            # Hopper (and any sm80+): weight-only, activations kept in bf16, with a logged notice
            "cuda_wna16:WeightOnlyGemvCudaKernel@m<=128",
            "dequant_cublas:WeightOnlyDequantCublasKernel",
            "triton_wna16:WeightOnlyGemmTritonKernel",
            EMULATION,
        ],
        "cpu": [EMULATION],
    },
    "mxfp4a16": {
        # H200 (8192^2, `quantops bench`): the CUDA op up to M=128 (its wgmma GEMM from 17 rows: NVFP4A16 / MXFP4A16 /
        # MXFP8A16 0.96 / 1.06 / 0.94x at 64, 0.62 / 0.69 / 0.59x at 128 vs dequantize + cuBLAS 0.33x); dequantize
        # + cuBLAS above (0.54x at 512, 0.88-0.96x at 4096); the Triton GEMM's e2m1/e4m3 decode is slow there
        # (0.07x), so it is only a fallback
        "cuda": [
            "cuda_wna16:WeightOnlyGemvCudaKernel@m<=128",
            "dequant_cublas:WeightOnlyDequantCublasKernel",
            "triton_wna16:WeightOnlyGemmTritonKernel",
            EMULATION,
        ],
        "cpu": [EMULATION],
    },
    # MXFP8 W8A8 on sm100+: FlashInfer's CUTLASS mm_mxfp8, as vLLM. Written, not yet run on Blackwell hardware.
    "mxfp8": {
        "cuda": [
            "flashinfer_mxfp8:FlashInferCutlassMxfp8Kernel",
            # Hopper (and any sm80+): weight-only, activations kept in bf16, with a logged notice
            "cuda_wna16:WeightOnlyGemvCudaKernel@m<=128",
            "dequant_cublas:WeightOnlyDequantCublasKernel",
            # W8A8 on FP8 tensor cores, scales applied every 32 K: the scheme's own numerics, but slower than the
            # weight-only pair above at every M (H200, geo-mean over 8192^2 + Llama-3-8B, M=1..4096: 0.97 / 0.90 /
            # 0.65 / 0.39 / 0.31-0.34x of bf16 vs 1.48 / 1.19 / 0.84 / 0.58 / 0.55-0.96x), so only when named
            # (QUANTOPS_LINEAR_BACKEND=Mxfp8TritonKernel)
            "triton_mxfp8:Mxfp8TritonKernel",
            "triton_wna16:WeightOnlyGemmTritonKernel",
            EMULATION,
        ],
        "cpu": [EMULATION],
    },
    "mxfp8a16": {
        # H200 (8192^2, `quantops bench`): the CUDA op up to M=128 (its wgmma GEMM from 17 rows: NVFP4A16 / MXFP4A16 /
        # MXFP8A16 0.96 / 1.06 / 0.94x at 64, 0.62 / 0.69 / 0.59x at 128 vs dequantize + cuBLAS 0.33x); dequantize
        # + cuBLAS above (0.54x at 512, 0.88-0.96x at 4096); the Triton GEMM's e2m1/e4m3 decode is slow there
        # (0.07x), so it is only a fallback
        "cuda": [
            "cuda_wna16:WeightOnlyGemvCudaKernel@m<=128",
            "dequant_cublas:WeightOnlyDequantCublasKernel",
            "triton_wna16:WeightOnlyGemmTritonKernel",
            EMULATION,
        ],
        "cpu": [EMULATION],
    },
}
