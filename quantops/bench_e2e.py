"""End-to-end benchmark: a Llama-3-8B-architecture model, quantized by quantops and by torchao, against bf16.

    python -m quantops.bench_e2e --layers 4 --out bench_e2e      (quantops bench --e2e ...)

Builds a transformers LlamaForCausalLM from the Llama-3-8B config with random, seeded bf16 weights made on the
device (no download), then for every variant -- bf16, each quantops scheme with a real kernel on this machine,
torchao's FP8 per-row and int4 weight-only -- builds the model afresh, quantizes it (lm_head stays bf16 unless
--quantize-lm-head), compiles it with mode="reduce-overhead" (quantops schemes with backend "quantops", bf16 and
torchao with Inductor) and measures:
  decode tokens/s at each --batch-sizes (static KV cache, CUDA graphs; greedy, one token per sequence per step),
  prefill tokens/s of one --prefill-len prompt,
  the relative L2 error of the logits against the bf16 model run eagerly on the same inputs.
It prints a table and writes CSV, Markdown, a PNG chart (when matplotlib is installed) and the versions of
everything involved to --out. With fewer layers than the config's 32 (--layers), every output says so, and on a
GPU a one-layer bf16 model is timed too so that each variant's decode/prefill time is also projected to the full
depth (fixed cost of embedding + final norm + lm_head, plus per-layer cost times 32): an estimate, marked as such.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import gc
import importlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field

import torch
from torch import nn

# Meta-Llama-3-8B's config.json (no rope scaling in Llama 3; 3.1 adds it).
LLAMA3_8B = dict(
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    hidden_act="silu",
    attention_bias=False,
    mlp_bias=False,
    tie_word_embeddings=False,
    initializer_range=0.02,
    bos_token_id=128000,
    eos_token_id=128001,
)
# For CPU smoke tests: the same architecture, tiny.
TINY = dict(LLAMA3_8B, vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2)

QUANTOPS_SCHEMES = ("FP8_DYNAMIC", "FP8_BLOCK", "W8A8", "W4A16", "NVFP4A16", "W4AFP8")
TORCHAO_VARIANTS = ("torchao-fp8-row", "torchao-int4", "torchao-int4-tinygemm")
# Run order: the rows the goals compare first, so that a time budget cuts the least important ones.
DEFAULT_ORDER = ("bf16", "W4A16", "FP8_DYNAMIC", "torchao-int4", "torchao-int4-tinygemm", "torchao-fp8-row",
                 "FP8_BLOCK", "W8A8", "W4AFP8", "NVFP4A16")
# (variant, baseline, metric, factor) from the issue: checked whenever both rows were measured.
GOALS = (
    ("W4A16", "bf16", "decode_bs1", 2.6),
    ("W4A16", "torchao-int4", "decode_bs1", 1.35),
    ("FP8_DYNAMIC", "bf16", "decode_bs1", 1.6),
    ("FP8_DYNAMIC", "torchao-fp8-row", "decode_bs1", 1.3),
)


# A measured row that stands in for an unavailable baseline in the goal lines (said so, never silently).
STAND_INS = {"torchao-int4": "torchao-int4-tinygemm"}


# -- results ----------------------------------------------------------------------------------------


@dataclass
class Row:
    variant: str
    method: str  # "bf16", "quantops", "torchao"
    backend: str = ""  # torch.compile backend
    status: str = "ok"  # ok | emulated | skipped | unavailable | failed
    decode: dict[int, float] = field(default_factory=dict)  # batch size -> tokens/s
    prefill: float | None = None  # tokens/s
    err_prefill: float | None = None  # relative L2 of the logits vs bf16 eager
    err_decode: float | None = None
    err_kernel: float | None = None  # compiled quantops logits vs the same quantized model on EmulationKernel
    model_mib: float | None = None
    compile_s: float | None = None
    kernels: str = ""
    note: str = ""
    projected: dict[str, float] = field(default_factory=dict)  # metric -> tokens/s at the full depth (estimate)

    def metric(self, name: str) -> float | None:
        if name == "prefill":
            return self.prefill
        return self.decode.get(int(name.removeprefix("decode_bs")))


# -- environment ------------------------------------------------------------------------------------


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(device: torch.device) -> dict:
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
    }
    for dist in ("quantops", "transformers", "triton", "torchao", "fbgemm-gpu-genai", "flashinfer-python",
                 "mslk-cuda", "compressed-tensors", "matplotlib"):
        env[dist] = _version(dist)
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["quantops_commit"] = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True,
                                                text=True, timeout=10).stdout.strip() or None
    except Exception:
        env["quantops_commit"] = None
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env["gpu"] = p.name
        env["gpu_capability"] = f"sm{p.major}{p.minor}"
        env["gpu_memory_gib"] = round(p.total_memory / 2**30, 1)
        env["gpu_multiprocessors"] = p.multi_processor_count
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
        except Exception:
            env["driver"] = None
    else:
        env["gpu"] = None
        env["cpu"] = platform.processor() or platform.machine()
        env["cpu_threads"] = torch.get_num_threads()
    return env


def device_label(env: dict) -> str:
    if env.get("gpu"):
        return f"{env['gpu']} ({env['gpu_capability']}, driver {env.get('driver')}, CUDA {env['cuda_runtime']})"
    return f"CPU ({env.get('cpu')}, {env.get('cpu_threads')} threads)"


# -- model ------------------------------------------------------------------------------------------


def llama_config(base: dict, layers: int | None):
    from transformers import LlamaConfig

    kw = dict(base)
    if layers is not None:
        kw["num_hidden_layers"] = layers
    config = LlamaConfig(**kw)
    config._attn_implementation = "sdpa"
    config.use_cache = True
    return config


def build_model(config, device: torch.device, seed: int) -> nn.Module:
    """Random seeded bf16 weights, initialised on `device` (8B parameters take seconds on a GPU, minutes on a
    CPU), so every variant starts from the same weights."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(old)
    return model.to(torch.bfloat16).eval().requires_grad_(False)


def new_cache(model, batch: int, max_len: int, device: torch.device):
    """A transformers StaticCache allocated now, outside compiled code, so its tensors get static addresses
    (CUDA graphs read and update them in place) -- lazily, inside a traced prefill, they would not."""
    from transformers import StaticCache

    cfg = model.config
    cache = StaticCache(config=cfg, max_cache_len=max_len)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    cache.early_initialization(batch_size=batch, num_heads=cfg.num_key_value_heads, head_dim=head_dim,
                               dtype=torch.bfloat16, device=device)
    return cache


def linear_shapes(config) -> list[tuple[str, int, int]]:
    """(name, N, K) of one decoder layer's linears."""
    h, i = config.hidden_size, config.intermediate_size
    hd = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q, kv = config.num_attention_heads * hd, config.num_key_value_heads * hd
    return [("q_proj", q, h), ("k_proj", kv, h), ("v_proj", kv, h), ("o_proj", h, q),
            ("gate_proj", i, h), ("up_proj", i, h), ("down_proj", h, i)]


# -- timing -----------------------------------------------------------------------------------------


class Clock:
    """Device-side timing: CUDA events on a GPU, a host clock after the work on a CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def start(self):
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def stop(self, start) -> float:
        """Seconds since `start`; waits for the work queued since."""
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        return time.perf_counter() - start


def rel_l2(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.float(), ref.float()
    if x.shape != ref.shape:
        raise ValueError(f"logits of shape {tuple(x.shape)} vs reference {tuple(ref.shape)}")
    return float((x - ref).norm() / ref.norm().clamp_min(1e-30))


def _ids(gen: torch.Generator, vocab: int, shape, device) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=gen).to(device)


def _mark_step():
    # cudagraph trees: a new iteration begins, outputs of the previous replay may be overwritten
    mark = getattr(torch.compiler, "cudagraph_mark_step_begin", None)
    if mark is not None:
        mark()


def _last_logits(fn, ids, cache) -> torch.Tensor:
    out = fn(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    return out.logits[:, -1, :]


@dataclass
class Inputs:
    """The same token ids for every variant."""

    prefill_ids: torch.Tensor  # [1, prefill_len]
    prompt_ids: dict[int, torch.Tensor]  # batch -> [batch, prompt_len]
    first_token: dict[int, torch.Tensor]  # batch -> [batch, 1]


def make_inputs(args, vocab: int, device) -> Inputs:
    gen = torch.Generator().manual_seed(args.seed + 1)
    prefill = _ids(gen, vocab, (1, args.prefill_len), device)
    prompts = {b: _ids(gen, vocab, (b, args.prompt_len), device) for b in args.batch_sizes}
    first = {b: _ids(gen, vocab, (b, 1), device) for b in args.batch_sizes}
    return Inputs(prefill, prompts, first)


def decode_phase(model, fn, batch: int, inputs: Inputs, args, clock: Clock, steps: int):
    """Eager prefill of the prompt into a static cache (as transformers' generate does), then `fn` one token per
    step: the first step's input is fixed (its logits are compared across variants), later steps feed back the
    argmax. Returns (tokens/s or None, first-step logits, seconds spent warming up)."""
    warmup = max(args.warmup, 1) if steps else 1
    cache = new_cache(model, batch, args.prompt_len + warmup + steps, _device_of(model))
    with torch.no_grad():
        model(input_ids=inputs.prompt_ids[batch], past_key_values=cache, use_cache=True, logits_to_keep=1)
        t0 = time.perf_counter()
        _mark_step()
        logits = _last_logits(fn, inputs.first_token[batch], cache)
        first = logits.float().clone()
        tok = logits.argmax(-1, keepdim=True)
        for _ in range(warmup - 1):  # the first calls compile and record the CUDA graph
            _mark_step()
            tok = _last_logits(fn, tok, cache).argmax(-1, keepdim=True)
        clock.sync()
        warm_s = time.perf_counter() - t0
        if not steps:
            return None, first, warm_s
        start = clock.start()
        for _ in range(steps):
            _mark_step()
            tok = _last_logits(fn, tok, cache).argmax(-1, keepdim=True)
        secs = clock.stop(start)
    return batch * steps / secs, first, warm_s


def prefill_phase(model, fn, inputs: Inputs, args, clock: Clock, reps: int):
    """One prompt of --prefill-len tokens into an empty static cache, `reps` times after warm-up; median time.
    Returns (tokens/s or None, last-position logits, seconds spent warming up)."""
    n = inputs.prefill_ids.shape[1]
    cache = new_cache(model, 1, n, _device_of(model))
    with torch.no_grad():
        t0 = time.perf_counter()
        _mark_step()
        first = _last_logits(fn, inputs.prefill_ids, cache).float().clone()
        for _ in range(max(args.warmup, 1) - 1 if reps else 0):
            cache.reset()
            _mark_step()
            _last_logits(fn, inputs.prefill_ids, cache)
        clock.sync()
        warm_s = time.perf_counter() - t0
        if not reps:
            return None, first, warm_s
        times = []
        for _ in range(reps):
            cache.reset()
            _mark_step()
            start = clock.start()
            _last_logits(fn, inputs.prefill_ids, cache)
            times.append(clock.stop(start))
    return n / statistics.median(times), first, warm_s


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


# -- variants ---------------------------------------------------------------------------------------


def resolve_backend(name: str):
    """(what torch.compile gets for quantops schemes, its label, a note)."""
    if name == "auto":
        if importlib.util.find_spec("quantops.lowering") is not None:
            name = "quantops"
        else:
            return "inductor", "inductor", "quantops backend not in this tree: schemes compiled with Inductor"
    if name != "quantops":
        return name, name, ""
    if importlib.util.find_spec("quantops.lowering") is None:
        raise SystemExit("bench_e2e: the quantops torch.compile backend (quantops.lowering) is not installed; "
                         "pass --backend inductor to compile the schemes with Inductor instead")
    import torch._dynamo

    if "quantops" in torch._dynamo.list_backends(exclude_tags=()):
        return "quantops", "quantops", ""
    import quantops  # entry point not registered (package not installed): the same backend as an object

    return quantops.backend(), "quantops", "backend passed as quantops.backend() (entry point not registered)"


def free_memory():
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    with contextlib.suppress(Exception):
        from torch._inductor import cudagraph_trees

        cudagraph_trees.reset_cudagraph_trees()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def model_mib(model, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.memory_allocated(device) / 2**20
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        st = t.untyped_storage()
        if st.data_ptr() not in seen:
            seen.add(st.data_ptr())
            total += st.nbytes()
    return total / 2**20


def scheme_support(scheme: str, config, device: torch.device) -> tuple[str, str]:
    """("ok" | "emulated" | "skipped", kernels or reason) for the scheme on this device's decoder linears,
    answered by the registry before anything is built."""
    from quantops import select_kernel

    plans, emulated = {}, []
    for name, n, k in linear_shapes(config):
        try:
            sel = select_kernel(scheme, N=n, K=k, dtype=torch.bfloat16, device=device)
        except ValueError as e:
            return "skipped", f"{name} ({n}x{k}): {e}"
        except Exception as e:  # a broken kernel module must cost one row, not the run
            return "failed", f"kernel selection for {name} ({n}x{k}): {type(e).__name__}: {e}"
        plans.setdefault(sel.plan_str(), []).append(name)
        if any(cls.backend == "emulation" for _, cls in sel.plan):
            emulated.append(f"{name}: " + "; ".join(f"{kn}: {why}" for kn, why in sel.rejected[:4]))
    kernels = " | ".join(f"{p} [{','.join(ns)}]" for p, ns in plans.items())
    if emulated:
        return "emulated", kernels + " -- no real kernel: " + " / ".join(emulated)
    return "ok", kernels


def quantize_quantops(model, scheme: str, args):
    import warnings

    import quantops

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the report below says what stayed float
        quantops.quantize_model(model, scheme, exclude=() if args.quantize_lm_head else ("lm_head",))
    report = quantops.quantization_report(model)
    if report is None or not report.quantized:
        raise _Skip(f"no layer quantized: {report}")
    skipped = {p: why for p, why in report.skipped.items() if why != "excluded"}
    note = f"{len(report.quantized)} linears quantized"
    if skipped:
        note += f", {len(skipped)} left bf16 ({next(iter(skipped.values()))})"
    return note


class _Skip(Exception):
    pass


def torchao_config(variant: str):
    """The torchao config object for a variant; raises _Skip when torchao (or what the config needs) is absent."""
    if importlib.util.find_spec("torchao") is None:
        raise _Skip("torchao not installed")
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, Int4WeightOnlyConfig, PerRow

    # set_inductor_config=False: every variant compiles under the same Inductor settings (torchao's would turn
    # on coordinate-descent tuning, process-wide, for the variants after it).
    if variant == "torchao-fp8-row":
        return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False)
    if variant == "torchao-int4":  # the default packing ("plain"): mslk's bf16i4bf16 kernels on H100
        if importlib.util.find_spec("mslk") is None:
            raise _Skip("torchao 0.17's default int4 packing (plain) runs on mslk, which is not installed "
                        "(the torchao-int4-tinygemm row is its other CUDA packing)")
        return Int4WeightOnlyConfig(group_size=128, set_inductor_config=False)
    if variant == "torchao-int4-tinygemm":  # PyTorch's own tinygemm kernel (aten._weight_int4pack_mm)
        from torchao.quantization.quantize_.workflows import Int4PackingFormat

        return Int4WeightOnlyConfig(group_size=128, int4_packing_format=Int4PackingFormat.TILE_PACKED_TO_4D,
                                    set_inductor_config=False)
    raise ValueError(f"unknown torchao variant {variant!r}")


def quantize_torchao(model, variant: str, args) -> str:
    cfg = torchao_config(variant)
    from torchao.quantization import quantize_

    def wanted(mod, fqn):
        return isinstance(mod, nn.Linear) and (args.quantize_lm_head or not fqn.endswith("lm_head"))

    quantize_(model, cfg, filter_fn=wanted)
    w = model.model.layers[0].self_attn.q_proj.weight
    return f"weight {type(w).__name__}"


def variant_method(variant: str) -> str:
    if variant == "bf16":
        return "bf16"
    if variant.startswith("torchao"):
        return "torchao"
    return "quantops"


def run_variant(variant: str, config, device, inputs: Inputs, refs: dict, args, clock: Clock, backends) -> Row:
    method = variant_method(variant)
    compile_backend, backend_label, backend_note = backends if method == "quantops" else ("inductor", "inductor", "")
    row = Row(variant, method, backend_label if not args.eager else "eager")
    notes = [backend_note] if backend_note else []
    if method == "quantops":
        status, kernels = scheme_support(variant, config, device)
        if status in ("skipped", "failed"):
            row.status, row.note = status, kernels
            return row
        row.kernels = kernels
        if status == "emulated":
            if not args.include_emulated:
                row.status, row.note = "skipped", "only the emulation kernel runs here (--include-emulated runs it)"
                return row
            row.status = "emulated"
    if method == "torchao":
        try:
            torchao_config(variant)
        except _Skip as e:
            row.status, row.note = "unavailable", str(e)
            return row
    model = fn = None
    try:
        model = build_model(config, device, args.seed)
        if method == "quantops":
            notes.append(quantize_quantops(model, variant, args))
        elif method == "torchao":
            notes.append(quantize_torchao(model, variant, args))
        row.model_mib = model_mib(model, device)
        if method == "bf16":  # the reference: the bf16 model, eager
            _, refs["prefill"], _ = prefill_phase(model, model, inputs, args, clock, reps=0)
            _, refs["decode"], _ = decode_phase(model, model, max(args.batch_sizes), inputs, args, clock, steps=0)
        if args.eager:
            fn = model
        else:
            fn = torch.compile(model, backend=compile_backend, mode=args.mode, dynamic=args.dynamic,
                               fullgraph=args.fullgraph)
        compile_s, outputs = 0.0, {}  # outputs: the first logits of the largest-batch decode and of prefill
        for b in args.batch_sizes:
            row.decode[b], outputs["decode"], warm = decode_phase(model, fn, b, inputs, args, clock, steps=args.decode_steps)
            compile_s += warm
        row.prefill, outputs["prefill"], warm = prefill_phase(model, fn, inputs, args, clock, reps=args.prefill_reps)
        row.compile_s = compile_s + warm
        if refs:
            row.err_prefill = rel_l2(outputs["prefill"], refs["prefill"])
            row.err_decode = rel_l2(outputs["decode"], refs["decode"])
        if method == "quantops":
            row.kernels = compiled_kernels(model, args) or row.kernels
            row.err_kernel = kernel_error(model, inputs, args, clock, outputs)
        for v in list(row.decode.values()) + [row.prefill, row.err_prefill, row.err_decode, row.err_kernel]:
            if v is not None and not math.isfinite(v):
                raise FloatingPointError(f"non-finite result {v}")
        if not args.eager:
            notes.append(compile_stats(device))
    except _Skip as e:
        row.status, notes = "skipped", notes + [str(e)]
    except Exception as e:
        row.status = "failed"
        notes.append(f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
        if args.verbose:
            traceback.print_exc()
    finally:
        model = fn = None  # this variant's weights, compiled code and CUDA graph pools go before the next one
        free_memory()
    row.note = "; ".join(n for n in notes if n)
    return row


def kernel_error(model, inputs: Inputs, args, clock: Clock, outputs: dict) -> float:
    """Relative L2 of the benchmarked (compiled) logits against the same quantized model run eagerly on every
    layer's EmulationKernel: the kernels' own error, apart from the scheme's quantization error (which random
    weights amplify through the layers; see err_prefill/err_decode)."""
    from quantops import QuantizedLinear

    layers = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    saved = [m.linear_backend for m in layers]
    try:
        for m in layers:
            m.linear_backend = "emulation"
            m._cache.clear()
        _, emu_prefill, _ = prefill_phase(model, model, inputs, args, clock, reps=0)
        _, emu_decode, _ = decode_phase(model, model, max(args.batch_sizes), inputs, args, clock, steps=0)
    finally:
        for m, lb in zip(layers, saved):
            m.linear_backend = lb
            m._cache.clear()
    return max(rel_l2(outputs["prefill"], emu_prefill), rel_l2(outputs["decode"], emu_decode))


def compile_stats(device: torch.device) -> str:
    """Graphs Dynamo compiled for this variant and, on a GPU, CUDA graph skips (then resets the counters)."""
    from torch._dynamo.utils import counters

    graphs = counters["stats"].get("unique_graphs", 0)
    skips = counters["inductor"].get("cudagraph_skips", 0) if device.type == "cuda" else 0
    counters.clear()
    return f"{graphs} graphs" + (f", {skips} CUDA graph skips" if skips else "")


def compiled_kernels(model, args) -> str:
    """Per M, the kernels the registry gives this model's quantized layers (what eager mode and the lowering
    choose): 'M=1: KernelA x224 | M=2048: KernelB x224'."""
    from quantops import QuantizedLinear

    by_m = {}
    for m in sorted(set(args.batch_sizes) | {args.prefill_len}):
        counts = {}
        for mod in model.modules():
            if isinstance(mod, QuantizedLinear):
                name = mod.selection(m=m).kernel.kernel_name()
                counts[name] = counts.get(name, 0) + 1
        by_m[m] = ", ".join(f"{k} x{v}" for k, v in counts.items())
    return " | ".join(f"M={m}: {s}" for m, s in by_m.items())


# -- projection to the full depth -------------------------------------------------------------------


def project(rows: list[Row], one_layer: Row | None, layers: int, full: int):
    """t(L) = fixed + L * per_layer: the one-layer and L-layer bf16 runs give `fixed` (embedding, final norm,
    lm_head, launch overheads); each variant's own per-layer time follows from its L-layer run."""
    base = next((r for r in rows if r.variant == "bf16" and r.status == "ok"), None)
    if one_layer is None or base is None or layers < 2:
        return
    metrics = [f"decode_bs{b}" for b in base.decode] + ["prefill"]
    for m in metrics:
        t1, tl = _step_time(one_layer, m), _step_time(base, m)
        if t1 is None or tl is None:
            continue
        per_layer = (tl - t1) / (layers - 1)
        fixed = t1 - per_layer
        for r in rows:
            t = _step_time(r, m)
            if t is None or r.status not in ("ok", "emulated"):
                continue
            t_full = fixed + full * (t - fixed) / layers
            if t_full > 0:
                r.projected[m] = _tokens(m) / t_full


def _tokens(metric: str) -> int:
    """Tokens per step: the batch in decode; prefill is handled per token (any constant gives the same ratios)."""
    return int(metric.removeprefix("decode_bs")) if metric.startswith("decode") else 1


def _step_time(r: Row, metric: str) -> float | None:
    v = r.metric(metric)
    return None if not v else _tokens(metric) / v


# -- output -----------------------------------------------------------------------------------------


def _fmt(v, spec=".1f"):
    return "" if v is None else format(v, spec)


def table_rows(rows: list[Row], batch_sizes, projected: bool):
    base = next((r for r in rows if r.variant == "bf16" and r.status == "ok"), None)
    header = ["variant", "method", "backend", "status"]
    for b in batch_sizes:
        header += [f"decode bs{b} tok/s", f"x bf16 (bs{b})"]
    header += ["prefill tok/s", "x bf16 (prefill)", "logits rel L2 (prefill)", "logits rel L2 (decode)",
               "kernel rel L2 vs emulation", "memory MiB", "compile+warmup s"]
    if projected:
        header += [f"proj. decode bs{b} tok/s" for b in batch_sizes] + ["proj. prefill tok/s"]
    header += ["kernels", "note"]
    out = [header]
    for r in rows:
        line = [r.variant, r.method, r.backend, r.status]
        for b in batch_sizes:
            v = r.decode.get(b)
            bv = base.decode.get(b) if base else None
            line += [_fmt(v), _fmt(v / bv, ".2f") if v and bv else ""]
        line += [_fmt(r.prefill, ".0f"),
                 _fmt(r.prefill / base.prefill, ".2f") if r.prefill and base and base.prefill else "",
                 _fmt(r.err_prefill, ".2e"), _fmt(r.err_decode, ".2e"), _fmt(r.err_kernel, ".2e"), _fmt(r.model_mib, ".1f"),
                 _fmt(r.compile_s, ".0f")]
        if projected:
            line += [_fmt(r.projected.get(f"decode_bs{b}")) for b in batch_sizes] + [_fmt(r.projected.get("prefill"), ".0f")]
        line += [r.kernels, r.note]
        out.append(line)
    return out


def format_table(table) -> str:
    # the last two columns (kernels, note) are long: printed under the table instead
    body = [line[:-2] for line in table]
    widths = [max(len(str(line[i])) for line in body) for i in range(len(body[0]))]
    lines = ["  ".join(str(c).rjust(w) if i >= 4 else str(c).ljust(w) for i, (c, w) in enumerate(zip(line, widths)))
             for line in body]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for line in table[1:]:
        if line[-2] or line[-1]:
            lines.append(f"  {line[0]}: " + " -- ".join(s for s in (line[-2], line[-1]) if s))
    return "\n".join(lines)


def markdown(table, env: dict, args, title: str) -> str:
    keep = [i for i, h in enumerate(table[0]) if h not in ("backend", "kernels", "note")]
    lines = [f"### {title}", "",
             "| " + " | ".join(table[0][i] for i in keep) + " |",
             "|" + "|".join("---" for _ in keep) + "|"]
    for line in table[1:]:
        lines.append("| " + " | ".join(str(line[i]) for i in keep) + " |")
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in env.items() if v and k not in ("date",)), ""]
    lines += [f"- {line[0]}: " + " -- ".join(s for s in (line[-2], line[-1]) if s) for line in table[1:]
              if line[-2] or line[-1]]
    lines += ["", "Logits errors are relative L2 norms against the bf16 model run eagerly on the same tokens (prefill: "
              "the prompt's last position; decode: the first step at the largest batch). Random weights make the "
              "model chaotic, so small differences grow through the layers (the bf16 compiled row shows how much "
              "rounding alone moves); compare schemes with each other. 'kernel rel L2 vs emulation' compares the "
              "compiled quantops model with the same quantized weights run on the EmulationKernel reference.",
              "", f"Command: `python -m quantops.bench_e2e {' '.join(args.argv)}`", ""]
    return "\n".join(lines)


def chart(rows: list[Row], batch_sizes, path: str, title: str, full_layers: int | None = None) -> str | None:
    """Speed-up over bf16 per variant for each decode batch size and prefill, measured (and, when the run was
    projected, a second panel at the full depth). Returns why there is no chart, or None."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no chart"
    import textwrap

    base = next((r for r in rows if r.variant == "bf16" and r.status == "ok"), None)
    measured = [r for r in rows if r.status in ("ok", "emulated")]
    if base is None or not measured:
        return "no bf16 baseline measured: no chart"
    metrics = [(f"decode bs{b}", f"decode_bs{b}") for b in batch_sizes] + [("prefill", "prefill")]
    panels = [("measured", lambda r, m: r.metric(m))]
    if full_layers and base.projected:
        panels.append((f"projected to {full_layers} layers (estimate)", lambda r, m: r.projected.get(m)))
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(7, 1.1 * len(measured) + 3), 3.6 * len(panels) + 0.8),
                             squeeze=False)
    width = 0.8 / len(metrics)
    for ax, (panel, get) in zip(axes[:, 0], panels):
        for j, (label, m) in enumerate(metrics):
            bv = get(base, m)
            xs, ys = [], []
            for i, r in enumerate(measured):
                v = get(r, m)
                if v and bv:
                    xs.append(i + (j - (len(metrics) - 1) / 2) * width)
                    ys.append(v / bv)
            ax.bar(xs, ys, width, label=f"{label} (bf16 {bv:,.0f} tok/s)" if bv else label)
            for x, y in zip(xs, ys):
                ax.annotate(f"{y:.2f}", (x, y), ha="center", va="bottom", fontsize=7)
        ax.axhline(1.0, color="gray", lw=0.8, ls="--")
        ax.set_xticks(range(len(measured)))
        ax.set_xticklabels([r.variant for r in measured], rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(f"tokens/s / bf16 ({panel})", fontsize=8)
        ax.legend(fontsize=7, loc="upper right")
    fig.suptitle("\n".join(textwrap.wrap(title, 110)), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def write_csv(rows: list[Row], batch_sizes, path: str, meta: dict):
    cols = (["variant", "method", "backend", "status"] + [f"decode_bs{b}_tok_s" for b in batch_sizes]
            + ["prefill_tok_s", "logits_rel_l2_prefill", "logits_rel_l2_decode", "kernel_rel_l2_vs_emulation",
               "memory_mib", "compile_warmup_s"]
            + [f"projected_decode_bs{b}_tok_s" for b in batch_sizes] + ["projected_prefill_tok_s"]
            + ["layers", "full_layers", "prefill_len", "device", "torch", "kernels", "note"])
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in rows:
            w.writerow([r.variant, r.method, r.backend, r.status]
                       + [_fmt(r.decode.get(b), ".3f") for b in batch_sizes]
                       + [_fmt(r.prefill, ".3f"), _fmt(r.err_prefill, ".4e"), _fmt(r.err_decode, ".4e"), _fmt(r.err_kernel, ".4e"),
                          _fmt(r.model_mib, ".3f"), _fmt(r.compile_s, ".1f")]
                       + [_fmt(r.projected.get(f"decode_bs{b}"), ".3f") for b in batch_sizes]
                       + [_fmt(r.projected.get("prefill"), ".3f")]
                       + [meta["layers"], meta["full_layers"], meta["prefill_len"], meta["device"], meta["torch"],
                          r.kernels, r.note])


def goal_lines(rows: list[Row], projected: bool) -> list[str]:
    by = {r.variant: r for r in rows if r.status in ("ok", "emulated")}
    lines = []
    for v, b, m, factor in GOALS:
        if v in by and b in by and by[v].metric(m) and by[b].metric(m):
            ratio = by[v].metric(m) / by[b].metric(m)
            s = f"{v} {m} >= {factor}x {b}: {ratio:.2f}x {'reached' if ratio >= factor else 'NOT reached'}"
            pv, pb = by[v].projected.get(m), by[b].projected.get(m)
            if projected and pv and pb:
                s += f" (projected to the full depth: {pv / pb:.2f}x)"
            lines.append(s)
        else:
            lines.append(f"{v} {m} >= {factor}x {b}: not measured")
            alt = STAND_INS.get(b)
            if v in by and alt in by and by[v].metric(m) and by[alt].metric(m):
                s = f"  (against {alt} instead: {by[v].metric(m) / by[alt].metric(m):.2f}x"
                pv, pa = by[v].projected.get(m), by[alt].projected.get(m)
                lines.append(s + (f", projected {pv / pa:.2f}x)" if projected and pv and pa else ")"))
    base = by.get("bf16")
    if base and base.prefill:
        slower = [r.variant for r in by.values() if r.prefill and r.prefill < base.prefill and r.method == "quantops"]
        lines.append("no quantops scheme slower than bf16 in prefill: " + ("yes" if not slower else "NO: " + ", ".join(slower)))
    return lines


def _print_row(row: Row, secs: float):
    dec = ", ".join(f"bs{b} {_fmt(t)}" for b, t in row.decode.items())
    print(f"  {row.variant:<22} {row.status:<10} decode {dec or '-'} | prefill {_fmt(row.prefill, '.0f') or '-'} tok/s | "
          f"err {_fmt(row.err_prefill, '.2e') or '-'} / {_fmt(row.err_decode, '.2e') or '-'}"
          + (f" (kernels vs emulation {row.err_kernel:.2e})" if row.err_kernel is not None else "") + f" | {secs:.0f} s"
          + (f" | {row.note}" if row.note else ""), flush=True)


# -- main -------------------------------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(prog="quantops bench --e2e", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=None, help="decoder layers (default: the config's 32); fewer for quick runs")
    p.add_argument("--tiny", action="store_true", help="a tiny config of the same architecture (hidden 64): smoke tests")
    p.add_argument("--variants", default=",".join(DEFAULT_ORDER),
                   help=f"comma-separated, run in this order (default: {','.join(DEFAULT_ORDER)})")
    p.add_argument("--batch-sizes", default="1,16", help="decode batch sizes (default 1,16)")
    p.add_argument("--prefill-len", type=int, default=2048)
    p.add_argument("--prompt-len", type=int, default=32, help="prompt prefilled before decoding (eagerly, like generate)")
    p.add_argument("--decode-steps", type=int, default=128, help="timed decode steps per batch size")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls first (compile, CUDA graph recording)")
    p.add_argument("--prefill-reps", type=int, default=5)
    p.add_argument("--backend", default="quantops", help="torch.compile backend for the quantops schemes: quantops "
                   "(default), inductor (the generic op, unlowered), or auto (quantops if present, else inductor)")
    p.add_argument("--mode", default="reduce-overhead", help="torch.compile mode for every variant")
    p.add_argument("--dynamic", action="store_true",
                   help="torch.compile(dynamic=True) (default False: one static graph per shape, each its own CUDA graph)")
    p.add_argument("--no-fullgraph", dest="fullgraph", action="store_false", help="allow graph breaks")
    p.add_argument("--eager", action="store_true", help="no torch.compile at all (debugging)")
    p.add_argument("--include-emulated", action="store_true", help="also run schemes that only have the emulation kernel here")
    p.add_argument("--quantize-lm-head", action="store_true", help="quantize lm_head too (default: it stays bf16)")
    p.add_argument("--no-project", dest="project", action="store_false",
                   help="with --layers below the full depth, skip the one-layer run that projects to it")
    p.add_argument("--time-budget", type=float, default=None, help="seconds: variants not started by then are skipped")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench_e2e", help="folder for e2e.csv, e2e.md, e2e.png, e2e_env.json")
    p.add_argument("-v", "--verbose", action="store_true", help="print tracebacks of failed variants")
    args = p.parse_args(argv)
    args.argv = list(argv)
    args.batch_sizes = sorted({int(b) for b in str(args.batch_sizes).split(",") if b.strip()})
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    known = set(DEFAULT_ORDER)
    bad = [v for v in args.variants if v not in known]
    if bad:
        p.error(f"unknown variants {bad}; known: {', '.join(DEFAULT_ORDER)}")
    for name in ("prefill_len", "prompt_len", "decode_steps", "prefill_reps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if not args.batch_sizes or min(args.batch_sizes) < 1:
        p.error("--batch-sizes must be positive integers")
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    base_cfg = TINY if args.tiny else LLAMA3_8B
    full = base_cfg["num_hidden_layers"]
    layers = args.layers or full
    config = llama_config(base_cfg, layers)
    clock = Clock(device)
    backends = resolve_backend(args.backend) if any(variant_method(v) == "quantops" for v in args.variants) else ("", "", "")
    env = environment(device)
    depth = f"{layers} of {full} layers" + (" (REDUCED: a quick run, not the full model)" if layers < full else "")
    name = "Llama-3-8B architecture" if not args.tiny else "tiny Llama-3 architecture (hidden 64)"
    title = (f"{name}, {depth}, random bf16 weights; {device_label(env)}; torch {env['torch']}; "
             f"mode={args.mode}; prefill {args.prefill_len} tokens")
    print(f"bench_e2e: {title}", flush=True)
    os.makedirs(args.out, exist_ok=True)
    inputs = make_inputs(args, config.vocab_size, device)
    refs: dict = {}
    rows: list[Row] = []
    t_start = time.perf_counter()
    variants = list(args.variants)
    if "bf16" not in variants:
        print("bench_e2e: no bf16 row: speed-ups and logits errors are not available", flush=True)
    # below the full depth on a GPU: also time a one-layer bf16 model, to project every variant to the full depth
    want_projection = args.project and 2 <= layers < full and device.type == "cuda" and not args.eager
    one_layer = None
    for v in variants:
        if args.time_budget is not None and time.perf_counter() - t_start > args.time_budget:
            rows.append(Row(v, variant_method(v), status="skipped", note=f"time budget of {args.time_budget:.0f} s spent"))
            continue
        t0 = time.perf_counter()
        row = run_variant(v, config, device, inputs, refs, args, clock, backends)
        rows.append(row)
        _print_row(row, time.perf_counter() - t0)
        if v == "bf16" and row.status == "ok" and want_projection:
            # the one-layer bf16 model: with the L-layer one, it separates fixed from per-layer cost
            t0 = time.perf_counter()
            one_layer = run_variant("bf16", llama_config(base_cfg, 1), device, inputs, {}, args, clock, backends)
            one_layer.variant = "bf16 (1 layer)"
            _print_row(one_layer, time.perf_counter() - t0)
    projected = False
    if one_layer is not None and one_layer.status == "ok":
        project(rows, one_layer, layers, full)
        projected = True

    table = table_rows(rows, args.batch_sizes, projected)
    meta = dict(layers=layers, full_layers=full, prefill_len=args.prefill_len, device=device_label(env), torch=env["torch"])
    csv_path = os.path.join(args.out, "e2e.csv")
    write_csv(rows, args.batch_sizes, csv_path, meta)
    md_title = title + (f"; 'proj.' columns: estimated at {full} layers from this run and a 1-layer bf16 run" if projected else "")
    with open(os.path.join(args.out, "e2e.md"), "w") as f:
        f.write(markdown(table, env, args, md_title))
        f.write("\nGoals (issue 8; full-depth figures are the targets):\n\n" + "\n".join(f"- {g}" for g in goal_lines(rows, projected)) + "\n")
    if one_layer is not None:
        env["projection_one_layer_bf16"] = dict(status=one_layer.status, decode_tok_s=one_layer.decode,
                                                 prefill_tok_s=one_layer.prefill, note=one_layer.note)
    env.update(dict(layers=layers, full_layers=full, args=args.argv, backend_for_schemes=backends[1] or None,
                    compile_mode=args.mode, dynamic=args.dynamic, fullgraph=args.fullgraph))
    with open(os.path.join(args.out, "e2e_env.json"), "w") as f:
        json.dump(env, f, indent=1, default=str)
    why_no_chart = chart(rows, args.batch_sizes, os.path.join(args.out, "e2e.png"), title, full if projected else None)

    print()
    print(title)
    print(format_table(table))
    print()
    for g in goal_lines(rows, projected):
        print("goal: " + g)
    print(f"wrote {csv_path}, e2e.md, e2e_env.json" + (f"; {why_no_chart}" if why_no_chart else ", e2e.png") + f" in {args.out}")
    return 0 if any(r.status in ("ok", "emulated") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
