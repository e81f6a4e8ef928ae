"""A/B of the CUDA weight-only op: this checkout's csrc/ against another csrc/ tree (e.g. the last commit's), both
built in one process and timed on the same prepared weights, alternating, against bf16 F.linear.

    git archive HEAD csrc | tar -x -C /tmp/base            # the tree to compare with
    python benchmarks/csrc_ab.py --base /tmp/base/csrc [--schemes NVFP4A16,...] [--m 1,16,64] [--producer] [--out DIR]

Protocol as `quantops bench`: CUDA graphs over weight copies rotated so that no call finds its weight in L2, median
of triton.testing.do_bench; the launcher's own path and K split (the op's default). Each case is timed base, new,
base, new and the faster of each pair is kept, so that clock drift hits both alike. The base build gets the same
arguments (alpha included), so the two must agree on the op's signature.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import torch

from quantops import get_scheme, quantize_weight
from quantops.bench import SHAPE_PRESETS, graph_time, write_dict_csv
from quantops.kernels import cuda_ext
from quantops.kernels.base import LinearConfig
from quantops.kernels.cuda_wna16 import WeightOnlyGemvCudaKernel

FLUSH = 256 << 20


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, type=Path, help="the csrc/ directory to compare with")
    p.add_argument("--schemes", default="NVFP4A16,MXFP4A16,MXFP8A16,W4A16")
    p.add_argument("--shapes", default="square-8192,llama3-8b", help="presets of quantops bench")
    p.add_argument("--m", default="1,16,32,64,128")
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    p.add_argument("--producer", action="store_true",
                   help="each call after a kernel that writes its x (x *= 1, as a norm before a layer would)")
    args = p.parse_args(argv)
    base_dir = os.path.join(os.environ.get("TMPDIR", "/tmp"), "quantops_cuda_base")
    base, new = cuda_ext.load_sources(args.base, "quantops_cuda_base", base_dir), cuda_ext.extension
    shapes = [(layer, n, k) for preset in args.shapes.split(",") for layer, n, k in SHAPE_PRESETS[preset]]
    rows = []
    for name in args.schemes.split(","):
        scheme = get_scheme(name)
        for layer, n, k in shapes:
            w = torch.randn(n, k, device="cuda") / math.sqrt(k)
            kernel = WeightOnlyGemvCudaKernel(LinearConfig(scheme, n, k, torch.bfloat16))
            prepared = kernel.prepare(quantize_weight(w, scheme))
            wbytes = sum(t.numel() * t.element_size() for t in prepared.values())
            preps = [{key: t.clone() for key, t in prepared.items()} for _ in range(max(2, min(16, math.ceil(FLUSH / wbytes))))]
            wbf = w.to(torch.bfloat16)
            bf_copies = [wbf.clone() for _ in range(max(2, min(8, math.ceil(FLUSH / (wbf.numel() * 2)))))]
            for m in (int(v) for v in args.m.split(",")):
                x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)

                def call(ext, pp):
                    if args.producer:
                        x.mul_(1.0)
                    return ext.weight_only_gemv(x, pp["qweight"], pp["scales"], pp.get("zeros"), pp.get("alpha"),
                                                kernel.fmt, kernel.group_size, n, k, cuda_ext.stream_handle(x), 0, -1)

                def calls(ext):
                    return [lambda pp=pp: call(ext, pp) for pp in preps]

                out_base, out_new = calls(base)[0](), calls(new)[0]()
                diff = float((out_base.float() - out_new.float()).norm() / out_base.float().norm().clamp(min=1e-12))
                bf16_us = graph_time([lambda wc=wc: (x.mul_(1.0) if args.producer else x,
                                                     torch.nn.functional.linear(x, wc)) for wc in bf_copies])
                t = {"base": [], "new": []}
                for _ in range(2):
                    for key, ext in (("base", base), ("new", new)):
                        t[key].append(graph_time(calls(ext)))
                b, nw = min(t["base"]), min(t["new"])
                rows.append(dict(scheme=name, layer=layer, n=n, k=k, m=m, base_us=round(b, 2), new_us=round(nw, 2),
                                 speedup=round(b / nw, 3), bf16_us=round(bf16_us, 2), base_ratio=round(bf16_us / b, 2),
                                 new_ratio=round(bf16_us / nw, 2), rel_diff=f"{diff:.1e}"))
                r = rows[-1]
                print(f"{name:9s} {layer:8s} {n:5d}x{k:<5d} M={m:<4d} bf16 {bf16_us:7.1f}us  base {b:7.1f}us "
                      f"({r['base_ratio']:.2f}x)  new {nw:7.1f}us ({r['new_ratio']:.2f}x)  {r['speedup']:.3f}x  "
                      f"diff {diff:.1e}", flush=True)
            preps = bf_copies = None  # the copies back to the allocator
            torch.cuda.empty_cache()
    path = os.path.join(args.out, "csrc_ab_producer.csv" if args.producer else "csrc_ab.csv")
    write_dict_csv(rows, path)
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
