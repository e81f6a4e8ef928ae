"""The quantops backend on a CUDA GPU (run on the H100/H200 machine: `pytest -m gpu tests/test_gpu_lowering.py`).

For every scheme with a real (non-emulation) kernel on this GPU: the default model's decoder (one layer, lm_head
in bf16) compiled with mode="reduce-overhead" and graph partitioning off (an unsafe op would then skip CUDA
graphs for the whole graph instead of being split out) records CUDA graphs without a single skip, compiles once
for two batch sizes (M = 32 and 256: both sides of the M plans' thresholds; the README's dynamic-batch
settings: mark_dynamic on the first input, backed_size_oblivious), and gives the eager quantized model's
logits: relative L2 error <= 2e-2 (the same kernels run; Inductor's fused elementwise code runs with emulate_precision_casts, so the remaining
difference is the order of fp32 reductions).
"""

from __future__ import annotations

import time

import pytest
import torch

import quantops
from quantops.model import LlamaConfig, build_default_model, example_tokens

pytestmark = pytest.mark.gpu

CONFIG = LlamaConfig(num_hidden_layers=1)
TOL = 2e-2


def native_schemes() -> list[str]:
    """Schemes with at least one non-emulation kernel for the default model's layer shapes on this GPU."""
    out = []
    for name in quantops.scheme_names():
        try:
            plans = [quantops.select_kernel(name, N=n, K=k, device="cuda").plan for n, k in ((256, 256), (768, 256))]
        except ValueError:
            continue
        if all(any(cls.backend != "emulation" for _, cls in plan) for plan in plans):
            out.append(name)
    return out


def _quantized_model(scheme: str, tokens):
    model = build_default_model(CONFIG, device="cuda")
    s = quantops.get_scheme(scheme)
    calibration = [(tokens,)] if (not s.act_dynamic or s.act == "nvfp4") else None
    return quantops.quantize_model(model, s, exclude=["lm_head"], calibration=calibration)


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_every_native_scheme_under_cuda_graphs():
    from torch._dynamo.utils import counters
    from torch._inductor import config as inductor_config

    schemes = native_schemes()
    assert {"FP8_DYNAMIC", "W8A8", "W4A16"} <= set(schemes), schemes
    shapes = [example_tokens(2, 16, vocab_size=CONFIG.vocab_size, device="cuda"),   # M = 32
              example_tokens(16, 16, vocab_size=CONFIG.vocab_size, device="cuda", seed=1)]  # M = 256
    failures, rows = [], []
    for scheme in schemes:
        torch._dynamo.reset()
        counters.clear()
        model = _quantized_model(scheme, shapes[0])
        with torch.no_grad():
            refs = [model(t) for t in shapes]
            be = quantops.backend(emulate_precision_casts=True)
            compiled = torch.compile(model, backend=be, mode="reduce-overhead")
            start = time.perf_counter()
            first = shapes[0].clone()
            torch._dynamo.mark_dynamic(first, 0)
            with inductor_config.patch(graph_partition=False), \
                    torch.fx.experimental._config.patch(backed_size_oblivious=True):
                compiled(first)
                outs = []
                for t in shapes:
                    for _ in range(3):  # warm-up, record, replay
                        out = compiled(t)
                    outs.append(out.clone())
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        skips = counters["inductor"]["cudagraph_skips"]
        errs = [_rel(o, r) for o, r in zip(outs, refs)]
        kernels = sorted({l.kernel for g in be.graphs for l in g.layers if l.status == "rewritten"})
        rows.append(f"{scheme:12s} compiles={len(be.graphs)} cudagraph_skips={skips} err={max(errs):.2e} "
                    f"lowering={sum(g.lowering_seconds for g in be.graphs):.2f}s total={seconds:.1f}s kernels={kernels}")
        if skips or len(be.graphs) != 1 or max(errs) > TOL or not all(torch.isfinite(o).all() for o in outs):
            failures.append(rows[-1])
    print("\n" + "\n".join(rows))
    assert not failures, "\n".join(failures)


def test_pass_time_against_inductor():
    """The time quantops adds to a compile: its passes (selection, prepare, rewrite) and the whole compile,
    next to backend="inductor" on the same quantized model (which runs the generic op unlowered)."""
    tokens = example_tokens(2, 16, vocab_size=2048, device="cuda")
    rows = []
    for scheme in ("FP8_DYNAMIC", "W4A16"):
        model = quantops.quantize_model(build_default_model(device="cuda"), scheme, exclude=["lm_head"])
        with torch.no_grad():
            times = {}
            for name in ("inductor", "quantops"):
                torch._dynamo.reset()
                be = quantops.backend() if name == "quantops" else "inductor"
                start = time.perf_counter()
                torch.compile(model, backend=be)(tokens)
                torch.cuda.synchronize()
                times[name] = time.perf_counter() - start
                if name == "quantops":
                    times["passes"] = sum(g.lowering_seconds for g in be.graphs)
        rows.append(f"{scheme}: inductor {times['inductor']:.1f}s, quantops {times['quantops']:.1f}s "
                    f"(passes {times['passes']:.2f}s)")
        assert times["passes"] < 10
    print("\n" + "\n".join(rows))
