"""Is FBGEMM's shuffled fp8 x int4 GEMM faster than the row-wise one that quantops runs for W4AFP8? (issue 5 asks for
the shuffled variant "if faster"; quantops cannot feed it the canonical layout exactly: it wants e4m3 group scales
under an fp32 row scale, see quantops/kernels/fbgemm_int4.py, so this times it on FBGEMM's own quantization of random
weights.) GEMMs only: x is quantized to fp8 per token once, outside the timed calls, for both.

    python benchmarks/fbgemm_w4afp8_variants.py [--out DIR]      # GPU machine, FBGEMM GenAI installed

Protocol as `quantops bench`: CUDA graphs over weight copies rotated out of L2, median of triton.testing.do_bench,
bf16 F.linear timed in the same run.
"""

from __future__ import annotations

import argparse
import math
import os

import torch

from quantops.bench import L2_FLUSH_BYTES, Options, time_calls, write_dict_csv

SHAPES = [(8192, 8192), (6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)]
MS = [int(m) for m in os.environ.get("VARIANT_MS", "1,16,64,128,512,2048,4096").split(",")]


def copies(nbytes: int) -> int:
    return max(2, min(8, math.ceil(L2_FLUSH_BYTES / nbytes)))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=".")
    args = p.parse_args()
    import fbgemm_gpu.experimental.gen_ai  # noqa: F401
    from fbgemm_gpu.experimental.gen_ai.quantize import quantize_fp8_row, quantize_int4_preshuffle

    dev = torch.device("cuda")
    opts = Options(dev, torch.bfloat16, compile=False, graph_max_m=1 << 30, copies=None, warmup_ms=5, rep_ms=20,
                   include_emulation=False)
    rows = []
    for n, k in SHAPES:
        w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.05
        c = copies(n * k // 2)
        bf16 = [w.clone() for _ in range(c)]
        # row-wise: int4 pairs in int8, fp32 group scales / zeros [K/128, N] (values do not change its speed)
        rw = [(torch.randint(-128, 127, (n, k // 2), device=dev, dtype=torch.int8),
               torch.rand(k // 128, n, device=dev) * 0.01, torch.zeros(k // 128, n, device=dev)) for _ in range(c)]
        sh = [quantize_int4_preshuffle(w.clone(), group_size=128, dtype="fp8") for _ in range(c)]
        for m in MS:
            x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
            xq, xs = quantize_fp8_row(x)
            t_bf16, _ = time_calls([lambda b=b: torch.nn.functional.linear(x, b) for b in bf16], m, opts)
            t_rw, _ = time_calls([lambda r=r: torch.ops.fbgemm.f8i4bf16_rowwise(xq, r[0], xs, r[1], r[2]) for r in rw],
                                 m, opts)
            t_sh, _ = time_calls([lambda s=s: torch.ops.fbgemm.f8i4bf16_shuffled(xq, s[0], xs, s[1][1], s[1][0])
                                  for s in sh], m, opts)
            rows.append({"n": n, "k": k, "m": m, "bf16_us": round(t_bf16, 2), "f8i4_rowwise_us": round(t_rw, 2),
                         "f8i4_shuffled_us": round(t_sh, 2), "rowwise_x_bf16": round(t_bf16 / t_rw, 2),
                         "shuffled_x_bf16": round(t_bf16 / t_sh, 2), "shuffled_over_rowwise": round(t_rw / t_sh, 2)})
            print(" ".join(f"{key}={v}" for key, v in rows[-1].items()), flush=True)
        del bf16, rw, sh
        torch.cuda.empty_cache()
    path = os.path.join(args.out, "fbgemm_w4afp8_variants.csv")
    write_dict_csv(rows, path)
    logs = [math.log(r["shuffled_over_rowwise"]) for r in rows]
    print(f"wrote {path}; shuffled / row-wise speed, geo-mean over {len(rows)} cases: {math.exp(sum(logs) / len(logs)):.2f}x")


if __name__ == "__main__":
    main()
