"""`quantops bench`: time every kernel that can run here, for the requested schemes, against bf16 F.linear.

    quantops bench                                  # every scheme with a kernel here, all shape presets
    quantops bench --schemes fp8-dynamic,w8a8 --shapes llama3-8b --m 1,16,4096 --out results/
    quantops bench --quick                          # a smoke run (also on the CPU)
    python -m quantops.bench ...

For each scheme, the candidates are the registry's ranking for the scheme's family on this platform (third-
party kernels included), so kernels added later show up without changes here. Each candidate that passes
`is_supported` / `can_implement` is prepared once per weight copy and timed as `apply_2d` (activation
quantization included), compiled by torch.compile (dynamic M) as the quantops backend would hand it to
Inductor. The registry's choice for each M is marked with '*'.

Timing (CUDA): median of `triton.testing.do_bench` (which flushes L2 before each timed call) over a CUDA
graph that calls the layer once per weight copy, the copies rotated so no call finds its weight in L2; the
per-call time is the graph's time over the copies. CPU: `time.perf_counter` medians. Output: a table per
layer, a summary, `bench.csv` and (with matplotlib) `bench.png` in --out.

Bytes moved: what any kernel must read and write once per call -- the weight as stored in the checkpoint layout
(packed values, scales, zero points; bf16 for F.linear), x and the output -- over the time, in TB/s and as a
share of the device's copy bandwidth (a 1 GiB device-to-device copy, read + write, timed at the start of the run).
That share is what a memory-bound (small-M) kernel is measured against; `--chosen-only` times just the registry's
choice at each M (and bf16), for a quick look at what quantops would run.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field

import torch

SHAPE_PRESETS: dict[str, list[tuple[str, int, int]]] = {  # name -> [(layer, N, K)]
    "llama3-8b": [("qkv", 6144, 4096), ("o", 4096, 4096), ("gate_up", 28672, 4096), ("down", 4096, 14336)],
    "llama3-70b": [("qkv", 10240, 8192), ("o", 8192, 8192), ("gate_up", 57344, 8192), ("down", 8192, 28672)],
    "square-4096": [("square", 4096, 4096)],
    "square-8192": [("square", 8192, 8192)],
    "tiny": [("tiny", 256, 512), ("odd", 200, 384)],  # CPU smoke runs
}
DEFAULT_SHAPES = ["llama3-8b", "llama3-70b", "square-4096", "square-8192"]
DEFAULT_M = [1, 16, 64, 128, 512, 2048, 4096]
QUICK = {"cuda": (["square-4096"], [1, 16, 128, 2048]), "cpu": (["tiny"], [1, 16])}
L2_FLUSH_BYTES = 256 << 20  # rotate enough weight copies to exceed any L2 by far


@dataclass
class Result:
    scheme: str
    preset: str
    layer: str
    n: int
    k: int
    m: int
    kernel: str
    backend: str
    us: float | None = None
    bf16_us: float | None = None
    chosen: bool = False
    graph: bool = False
    compiled: bool = False
    rel_err_vs_bf16: float | None = None
    error: str = ""
    bytes_moved: int = 0
    copy_tbps: float | None = None  # the device's copy bandwidth measured in this run (None on the CPU)

    @property
    def ratio(self) -> float | None:
        return None if not self.us or not self.bf16_us else self.bf16_us / self.us

    @property
    def tbps(self) -> float | None:
        """Bytes moved per microsecond, in TB/s."""
        return None if not self.us or not self.bytes_moved else self.bytes_moved / self.us / 1e6

    @property
    def pct_copy_bw(self) -> float | None:
        return None if self.tbps is None or not self.copy_tbps else 100 * self.tbps / self.copy_tbps


@dataclass
class Options:
    device: torch.device
    dtype: torch.dtype
    compile: bool
    graph_max_m: int
    copies: int | None
    warmup_ms: float
    rep_ms: float
    include_emulation: bool
    kernels: list[str] = field(default_factory=list)
    chosen_only: bool = False
    copy_tbps: float | None = None


# -- what to run -------------------------------------------------------------------------------------


def capability_of(device: torch.device):
    return tuple(torch.cuda.get_device_capability(device)) if device.type == "cuda" else None


def runnable_kernels(scheme, n: int, k: int, opts: Options):
    """[(kernel class or None, name, reason)] for the family's ranked candidates on this platform."""
    from .kernels.base import LinearConfig
    from .kernels.registry import candidates, platform_of

    cap = capability_of(opts.device)
    config = LinearConfig(scheme, n, k, opts.dtype)
    out, seen = [], set()
    for cand in candidates(scheme.family, platform_of(cap)):
        cls, why = cand.load()
        name = cand.name if cls is None else cls.kernel_name()
        if name in seen:
            continue
        seen.add(name)
        if cls is not None:
            why = _reason(cls, config, cap, opts)
        if opts.kernels and not any(f.lower() in name.lower() for f in opts.kernels):
            why = why or "not selected by --kernels"
        out.append((cls if why is None else None, name, why))
    return out


def _reason(cls, config, cap, opts: Options) -> str | None:
    if cls.backend == "emulation" and not opts.include_emulation:
        return "emulation (use --include-emulation)"
    if config.scheme.family not in cls.families:
        return f"does not run the {config.scheme.family} family"
    ok, why = cls.is_supported(cap)
    if not ok:
        return why or "not supported here"
    if config.dtype not in cls.dtypes:
        return f"dtype {config.dtype} not supported"
    ok, why = cls.can_implement(config)
    return None if ok else (why or "cannot implement")


def default_schemes(opts: Options) -> list[str]:
    """Every preset with at least one non-emulation kernel that can run here (checked on a 4096x4096 layer)."""
    from .schemes import PRESETS

    probe = Options(**{**opts.__dict__, "include_emulation": False, "kernels": []})
    names = []
    for name, scheme in PRESETS.items():
        if any(cls is not None for cls, _, _ in runnable_kernels(scheme, 4096, 4096, probe)):
            names.append(name)
    return names or ["FP8_DYNAMIC", "W8A8"]


def chosen_kernel(scheme, n: int, k: int, m: int, opts: Options) -> str | None:
    from .kernels.registry import select_kernel

    try:
        sel = select_kernel(scheme, N=n, K=k, dtype=opts.dtype, device=opts.device, m=m)
        return sel.kernel.kernel_name()
    except Exception:  # nothing selectable: no mark
        return None


# -- timing --------------------------------------------------------------------------------------------


def _time_cpu(calls, opts: Options) -> float:
    for c in calls:
        c()
    samples, deadline = [], time.perf_counter() + max(opts.rep_ms, 1.0) / 1e3
    while len(samples) < 3 or (time.perf_counter() < deadline and len(samples) < 200):
        t0 = time.perf_counter()
        for c in calls:
            c()
        samples.append((time.perf_counter() - t0) / len(calls))
    return statistics.median(samples) * 1e6


def capture_graph(calls) -> "torch.cuda.CUDAGraph":
    """One CUDA graph of the calls in order, after a warm-up on a side stream (allocator, lazy init)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for c in calls:
            c()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for c in calls:
            c()
    return graph


def graph_time(calls, warmup_ms: float = 5, rep_ms: float = 20) -> float:
    """Microseconds per call: the calls captured in one CUDA graph, median of triton.testing.do_bench over its replays
    (which flushes L2 before each). The benchmark scripts' protocol, the same as `quantops bench`'s."""
    import triton.testing

    for c in calls:  # compile, JIT, allocator warm-up
        c()
    torch.cuda.synchronize()
    ms = triton.testing.do_bench(capture_graph(calls).replay, warmup=warmup_ms, rep=rep_ms, return_mode="median")
    return ms * 1e3 / len(calls)


def _time_cuda(calls, use_graph: bool, opts: Options) -> tuple[float, bool]:
    import triton.testing

    if use_graph:
        try:
            return graph_time(calls, opts.warmup_ms, opts.rep_ms), True
        except Exception:  # not capturable: time it eagerly and say so in the CSV
            torch.cuda.synchronize()

    def run():
        for c in calls:
            c()

    run()  # compile, JIT, autotune, allocator warm-up
    torch.cuda.synchronize()
    ms = triton.testing.do_bench(run, warmup=opts.warmup_ms, rep=opts.rep_ms, return_mode="median")
    return ms * 1e3 / len(calls), False


def copy_bandwidth(device: torch.device) -> float:
    """TB/s of a 1 GiB device-to-device copy, counting the read and the write (the bandwidth a streaming kernel
    can hope for; 4.2-4.3 TB/s on an H200)."""
    import triton.testing

    a = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    ms = triton.testing.do_bench(lambda: b.copy_(a), warmup=10, rep=50, return_mode="median")
    a = b = None  # 2 GiB back to the allocator before the layers
    torch.cuda.empty_cache()
    return 2 * (1 << 30) / (ms * 1e-3) / 1e12


def time_calls(calls, m: int, opts: Options) -> tuple[float, bool]:
    if opts.device.type == "cuda":
        return _time_cuda(calls, m <= opts.graph_max_m, opts)
    return _time_cpu(calls, opts), False


# -- one layer --------------------------------------------------------------------------------------


def _n_copies(bytes_per_copy: int, opts: Options) -> int:
    if opts.copies:
        return opts.copies
    if opts.device.type != "cuda":
        return 1
    return max(2, min(8, math.ceil(L2_FLUSH_BYTES / max(bytes_per_copy, 1))))


def _compiled(kernel, opts: Options):
    def layer(x, prepared):
        return kernel.apply_2d(x, prepared, None)

    if not opts.compile:
        return layer
    from torch import _dynamo

    _dynamo.reset()  # a fresh cache per kernel instance (the code object is shared across kernels)
    return torch.compile(layer, dynamic=None)


def bench_layer(scheme, preset: str, layer: str, n: int, k: int, ms: list[int], opts: Options, log) -> list[Result]:
    from .formats import quantize_weight

    dev, dtype = opts.device, opts.dtype
    gen = torch.Generator(device="cpu").manual_seed(n * 31 + k)
    w = (torch.randn(n, k, generator=gen) / math.sqrt(k)).to(dev, dtype)
    max_m = max(ms)
    x_all = torch.randn(max_m, k, generator=gen).to(dev, dtype)
    needs_amax = (not scheme.act_dynamic) or scheme.act == "nvfp4"
    amax = x_all.float().abs().amax().reshape(1) if needs_amax else None
    if needs_amax and scheme.act == "int8" and not scheme.act_symmetric:
        amax = (x_all.float().amin().reshape(1), x_all.float().amax().reshape(1))
    canonical = quantize_weight(w, scheme, input_amax=amax)
    stored_bytes = sum(t.numel() * t.element_size() for t in canonical.values())
    copies = _n_copies(stored_bytes, opts)
    act_bytes = torch.tensor([], dtype=dtype).element_size()

    def moved(m: int, weight_bytes: int) -> int:  # weight as stored, x and the output, once each
        return weight_bytes + m * k * act_bytes + m * n * act_bytes

    bf16_w = [w.clone() for _ in range(max(2, min(8, math.ceil(L2_FLUSH_BYTES / (w.numel() * w.element_size())))))]
    if dev.type != "cuda":
        bf16_w = bf16_w[:1]

    results: list[Result] = []
    kernels = runnable_kernels(scheme, n, k, opts)
    for cls, name, why in kernels:
        if cls is None:
            log(f"    skip {name}: {why}")
    bf16_us: dict[int, float] = {}
    ref_out: dict[int, torch.Tensor] = {}
    for m in ms:
        xs = [x_all[:m].clone() for _ in range(len(bf16_w))]
        calls = [lambda x=x, w=wc: torch.nn.functional.linear(x, w) for x, wc in zip(xs, bf16_w)]
        us, graphed = time_calls(calls, m, opts)
        bf16_us[m] = us
        ref_out[m] = torch.nn.functional.linear(x_all[:m], w).float()
        results.append(Result(scheme.key(), preset, layer, n, k, m, "bf16 F.linear", "cublas", us, us, graph=graphed,
                              bytes_moved=moved(m, n * k * act_bytes), copy_tbps=opts.copy_tbps))

    from .kernels.base import LinearConfig

    config = LinearConfig(scheme, n, k, dtype)
    chosen = {m: chosen_kernel(scheme, n, k, m, opts) for m in ms}
    for cls, name, why in kernels:
        if cls is None:
            continue
        kernel_ms = [m for m in ms if chosen[m] == name] if opts.chosen_only else ms
        if not kernel_ms:
            continue
        try:
            kernel = cls(config)
            prepared = [kernel.prepare({kk: v.clone() for kk, v in canonical.items()}) for _ in range(copies)]
            fn = _compiled(kernel, opts)
        except Exception as e:  # a kernel that cannot even prepare is reported, not fatal
            for m in kernel_ms:
                results.append(Result(scheme.key(), preset, layer, n, k, m, name, cls.backend, error=_err(e)))
            log(f"    {name}: prepare failed: {_err(e)}")
            continue
        for m in kernel_ms:
            r = Result(scheme.key(), preset, layer, n, k, m, name, cls.backend, bf16_us=bf16_us[m],
                       chosen=chosen[m] == name, compiled=opts.compile, bytes_moved=moved(m, stored_bytes),
                       copy_tbps=opts.copy_tbps)
            try:
                xs = [x_all[:m].clone() for _ in range(copies)]
                if opts.compile:
                    for x in xs:
                        torch._dynamo.maybe_mark_dynamic(x, 0)
                out = fn(xs[0], prepared[0]).float()
                ref = ref_out[m]
                r.rel_err_vs_bf16 = float((out - ref).norm() / ref.norm().clamp(min=1e-12)) if m else 0.0
                calls = [lambda x=x, p=p: fn(x, p) for x, p in zip(xs, prepared)]
                r.us, r.graph = time_calls(calls, m, opts)
            except Exception as e:
                r.error = _err(e)
            results.append(r)
        prepared = fn = None  # this kernel's weight copies back to the allocator
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return results


def _err(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0][:160] if msg else ''}"


# -- reporting --------------------------------------------------------------------------------------


def format_layer(results: list[Result], ms: list[int]) -> str:
    names = list(dict.fromkeys(r.kernel for r in results))
    by = {(r.kernel, r.m): r for r in results}
    width = max(len(n) for n in names) + 2
    lines = ["    " + "kernel".ljust(width) + "".join(f"M={m}".rjust(17) for m in ms)]
    for name in names:
        cells = []
        for m in ms:
            r = by.get((name, m))
            if r is None:
                cells.append("".rjust(17))
            elif r.error:
                cells.append("error".rjust(17))
            elif r.kernel == "bf16 F.linear":
                cells.append(f"{r.us:9.1f}us      ".rjust(17))
            else:
                flag = "!" if (r.rel_err_vs_bf16 or 0) > 0.15 else ""
                cells.append(f"{'*' if r.chosen else ' '}{r.us:8.1f}us {r.ratio:4.2f}x{flag}".rjust(17))
        lines.append("    " + name.ljust(width) + "".join(cells))
    errors = {r.kernel: r.error for r in results if r.error}
    lines += [f"    {name}: {err}" for name, err in errors.items()]
    return "\n".join(lines)


def summary(results: list[Result], ms: list[int]) -> str:
    """Per scheme and M: geometric-mean ratio to bf16 over the layers, per kernel, and the registry's choice."""
    lines = ["", "summary: geometric mean of bf16_time / kernel_time over the layers ('*' = registry's choice)"]
    for scheme in dict.fromkeys(r.scheme for r in results):
        rs = [r for r in results if r.scheme == scheme and r.kernel != "bf16 F.linear"]
        names = list(dict.fromkeys(r.kernel for r in rs))
        if not names:
            continue
        width = max(len(n) for n in names) + 2
        lines.append(f"  {scheme}")
        lines.append("    " + "kernel".ljust(max(width, 23)) + "".join(f"M={m}".rjust(10) for m in ms))
        rows = [(name, lambda r, name=name: r.kernel == name, "ratio", "x") for name in names]
        rows.append(("(chosen)", lambda r: r.chosen, "ratio", "x"))
        if any(r.pct_copy_bw for r in rs):
            rows.append(("(chosen) % of copy bw", lambda r: r.chosen, "pct_copy_bw", "%"))
        for label, pick, attr, unit in rows:
            cells = []
            for m in ms:
                sel = [r for r in rs if r.m == m and pick(r)]
                ok = [getattr(r, attr) for r in sel if getattr(r, attr)]
                cells.append((f"{_geomean(ok):.2f}{unit}" if ok and len(ok) == len(sel) else "-").rjust(10))
            lines.append("    " + label.ljust(max(width, 23)) + "".join(cells))
    copy = next((r.copy_tbps for r in results if r.copy_tbps), None)
    if copy:
        lines.append(f"  copy bandwidth {copy:.2f} TB/s (read + write); bytes moved = weight as stored + x + output")
    return "\n".join(lines)


def _geomean(values) -> float:
    return math.exp(sum(map(math.log, values)) / len(values))


def write_csv(results: list[Result], path: str):
    cols = ["scheme", "preset", "layer", "n", "k", "m", "kernel", "backend", "us", "bf16_us", "ratio", "chosen",
            "graph", "compiled", "rel_err_vs_bf16", "bytes_moved", "tbps", "pct_copy_bw", "error"]
    with open(path, "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(cols)
        for r in results:
            wr.writerow([getattr(r, c) for c in cols])


def write_dict_csv(rows: list[dict], path: str):
    """Rows of one set of keys (the first row's, in order) as a CSV: the benchmark scripts' sweeps."""
    with open(path, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)


def write_plot(results: list[Result], path: str) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:
        return f"matplotlib is not installed ({type(e).__name__}): wrote the CSV only"
    schemes = list(dict.fromkeys(r.scheme for r in results))
    layers = list(dict.fromkeys((r.preset, r.layer, r.n, r.k) for r in results))
    fig, axes = plt.subplots(len(schemes), len(layers), figsize=(3.2 * len(layers), 2.8 * len(schemes)),
                             squeeze=False, sharex=True)
    for i, scheme in enumerate(schemes):
        for j, (preset, layer, n, k) in enumerate(layers):
            ax = axes[i][j]
            rs = [r for r in results if r.scheme == scheme and (r.preset, r.layer) == (preset, layer)
                  and r.kernel != "bf16 F.linear" and r.ratio]
            for name in dict.fromkeys(r.kernel for r in rs):
                pts = sorted((r.m, r.ratio) for r in rs if r.kernel == name)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=name)
            ax.axhline(1.0, color="grey", lw=0.8)
            ax.set_xscale("log", base=2)
            ax.set_title(f"{scheme} {preset}:{layer} {n}x{k}", fontsize=7)
            ax.tick_params(labelsize=6)
            if rs:
                ax.legend(fontsize=5)
    fig.supxlabel("M (tokens)")
    fig.supylabel("speed-up over bf16 F.linear")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"wrote {path}"


# -- entry point ------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser):
    p.add_argument("--schemes", help="comma-separated schemes (default: every scheme with a kernel that runs here)")
    p.add_argument("--shapes", help=f"comma-separated presets {sorted(SHAPE_PRESETS)} or NxK (default: "
                                    f"{','.join(DEFAULT_SHAPES)} on CUDA, tiny on the CPU)")
    p.add_argument("--m", help=f"comma-separated batch sizes (default {','.join(map(str, DEFAULT_M))})")
    p.add_argument("--out", default="bench-results", help="directory for bench.csv and bench.png")
    p.add_argument("--quick", action="store_true", help="one small preset and four M values (a smoke run)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    p.add_argument("--kernels", help="only kernels whose name contains one of these (comma-separated)")
    p.add_argument("--no-compile", action="store_true", help="time eager apply (unfused activation quantization)")
    p.add_argument("--graph-max-m", type=int, default=1 << 30,
                   help="capture CUDA graphs up to this M (default: every M; host launch overhead stays out)")
    p.add_argument("--copies", type=int, help="weight copies to rotate (default: enough to defeat L2)")
    p.add_argument("--warmup-ms", type=float, default=None)
    p.add_argument("--rep-ms", type=float, default=None)
    p.add_argument("--include-emulation", action="store_true", help="also time the emulation kernels on CUDA")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="start no new layer after this many seconds (the summary and plot are still written)")
    p.add_argument("--chosen-only", action="store_true",
                   help="time only the registry's choice at each M (and bf16), not every candidate")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="quantops bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return p.parse_args(argv)


def _shapes(spec: str) -> list[tuple[str, str, int, int]]:
    out = []
    for item in spec.split(","):
        item = item.strip()
        if item in SHAPE_PRESETS:
            out += [(item, layer, n, k) for layer, n, k in SHAPE_PRESETS[item]]
        elif "x" in item:
            n, k = (int(v) for v in item.lower().split("x"))
            out.append(("custom", item, n, k))
        else:
            raise SystemExit(f"quantops bench: unknown shape preset {item!r}; known: {', '.join(SHAPE_PRESETS)} or NxK")
    return out


def main(argv=None) -> int:
    """`quantops bench` / `python -m quantops.bench`: argv as on the command line (default sys.argv[1:])."""
    return run(parse_args(sys.argv[1:] if argv is None else argv))


def run(args) -> int:
    from .schemes import get_scheme

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    plat = "cuda" if device.type == "cuda" else "cpu"
    quick_shapes, quick_m = QUICK[plat]
    opts = Options(
        device=device,
        dtype=getattr(torch, args.dtype),
        compile=not args.no_compile and device.type == "cuda",
        graph_max_m=args.graph_max_m,
        copies=args.copies,
        warmup_ms=args.warmup_ms if args.warmup_ms is not None else (5 if args.quick else 10),
        rep_ms=args.rep_ms if args.rep_ms is not None else (20 if args.quick else 40),
        include_emulation=args.include_emulation or device.type == "cpu",
        kernels=[s.strip() for s in args.kernels.split(",")] if args.kernels else [],
        chosen_only=args.chosen_only,
    )
    shapes = _shapes(args.shapes or ",".join(quick_shapes if args.quick or plat == "cpu" else DEFAULT_SHAPES))
    ms = [int(v) for v in args.m.split(",")] if args.m else (quick_m if args.quick or plat == "cpu" else DEFAULT_M)
    schemes = [get_scheme(s) for s in args.schemes.split(",")] if args.schemes else [get_scheme(s) for s in default_schemes(opts)]
    if opts.compile:
        import torch.fx.experimental._config as fx_config
        from torch import _dynamo

        _dynamo.config.cache_size_limit = max(_dynamo.config.cache_size_limit, 64)
        fx_config.backed_size_oblivious = True  # one graph for every M, M = 1 included
    os.makedirs(args.out, exist_ok=True)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    if device.type == "cuda":
        opts.copy_tbps = copy_bandwidth(device)
    print(f"quantops bench on {where} (torch {torch.__version__}); schemes {', '.join(s.key() for s in schemes)}; "
          f"{len(shapes)} layers x M {ms}; {'compiled' if opts.compile else 'eager'}"
          + (f"; copy bandwidth {opts.copy_tbps:.2f} TB/s" if opts.copy_tbps else ""), flush=True)

    results: list[Result] = []
    total, step, started = len(schemes) * len(shapes), 0, time.time()
    with torch.no_grad():
        for preset, layer, n, k in shapes:  # shape-major: a --max-seconds cut leaves every scheme some layers
            for scheme in schemes:
                step += 1
                if args.max_seconds is not None and time.time() - started > args.max_seconds:
                    print(f"[{step}/{total}] {scheme.key()} {preset}:{layer}: skipped (--max-seconds)", flush=True)
                    continue
                t0 = time.time()
                print(f"[{step}/{total}] {scheme.key()} {preset}:{layer} N={n} K={k}", flush=True)
                try:
                    rs = bench_layer(scheme, preset, layer, n, k, ms, opts, lambda s: print(s, flush=True))
                except Exception as e:  # e.g. the scheme cannot represent the shape
                    print(f"    failed: {_err(e)}", flush=True)
                    continue
                results += rs
                print(format_layer(rs, ms) + f"\n    ({time.time() - t0:.1f}s)", flush=True)
                write_csv(results, os.path.join(args.out, "bench.csv"))  # partial results survive a timeout
    print(summary(results, ms))
    print(f"wrote {os.path.join(args.out, 'bench.csv')}")
    print(write_plot(results, os.path.join(args.out, "bench.png")))
    return 0


def add_bench_parser(sub):
    """The `bench` subcommand for quantops.cli (append it to SUBCOMMANDS): same options as main()."""
    p = sub.add_parser("bench", help="time every kernel that runs here against bf16 F.linear",
                       description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)


if __name__ == "__main__":
    sys.exit(main())
