"""The `quantops` command (console script, and `python -m quantops`).

    quantops run                     quantize the embedded default model, compile it with backend "quantops",
                                     print the kernel table, the logits error against bf16 and tokens/s
    quantops run --scheme W4A16      another scheme (default: the best one this machine runs natively)
    quantops run --model DIR         a local Hugging Face model directory (quantops.load_pretrained)
    quantops explain                 the explain() output (kernel table and rewritten graph) for the same model
    quantops explain --capability 9.0    ... what an H100 would run (graphs only)
    quantops bench                   time every kernel that runs here against bf16 F.linear (quantops.bench)
    quantops bench --e2e             end-to-end Llama-3-8B-architecture benchmark (quantops.bench_e2e)

Subcommands are registered in SUBCOMMANDS: a function that adds its parser to the subparsers and sets
`func`, the handler that gets the parsed arguments and returns the exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import sys
import threading
import time

import torch
from torch import nn

# Schemes in order of preference per platform: the first whose kernel here is not the emulation wins.
NATIVE_PREFERENCE = {
    "cpu": ("W8A8", "W4A16", "W8A16", "FP8_DYNAMIC"),
    "sm100": ("NVFP4", "MXFP8", "FP8_DYNAMIC", "W8A8", "W4A16"),
    "sm89": ("FP8_DYNAMIC", "W8A8", "W4A16"),
    "cuda": ("W8A8", "W4A16", "FP8_DYNAMIC"),
}


# -- progress ---------------------------------------------------------------------------------------


class Progress:
    """Numbered steps with their durations; a spinner on a terminal while a step runs."""

    def __init__(self, total: int, out=None):
        self.total, self.i = total, 0
        self.out = out or sys.stdout
        self.tty = hasattr(self.out, "isatty") and self.out.isatty()

    @contextlib.contextmanager
    def step(self, what: str):
        self.i += 1
        prefix = f"[{self.i}/{self.total}] {what} "
        self.out.write(prefix)
        self.out.flush()
        start = time.perf_counter()
        stop = threading.Event()
        spinner = None
        if self.tty:
            def spin():
                for c in itertools.cycle("|/-\\"):
                    if stop.wait(0.2):
                        return
                    self.out.write(f"\r{prefix}{c} {time.perf_counter() - start:5.1f}s")
                    self.out.flush()
            spinner = threading.Thread(target=spin, daemon=True)
            spinner.start()
        try:
            yield
        except BaseException:
            stop.set()
            self.out.write(f"\r{prefix}failed\n" if self.tty else "failed\n")
            raise
        finally:
            stop.set()
            if spinner is not None:
                spinner.join()
        done = f"done ({time.perf_counter() - start:.1f}s)\n"
        self.out.write(f"\r{prefix}{done}" if self.tty else done)
        self.out.flush()


# -- model and scheme -------------------------------------------------------------------------------


def _device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _platform(device: torch.device) -> tuple[str, "tuple[int, int] | None"]:
    if device.type != "cuda":
        return "cpu", None
    cap = tuple(torch.cuda.get_device_capability(device))
    return ("sm100" if cap >= (10, 0) else "sm89" if cap >= (8, 9) else "cuda"), cap


def native_scheme(device: torch.device, n: int = 256, k: int = 256, dtype=torch.bfloat16) -> tuple[str, str]:
    """(scheme, why): the first preferred scheme whose kernel on this device is a real one, not the emulation."""
    from quantops import select_kernel

    platform, _ = _platform(device)
    for name in NATIVE_PREFERENCE[platform]:
        try:
            sel = select_kernel(name, N=n, K=k, dtype=dtype, device=device)
        except ValueError:
            continue
        if sel.kernel.backend != "emulation":
            return name, f"the best scheme with a native kernel here ({sel.plan_str()})"
    name = NATIVE_PREFERENCE[platform][0]
    return name, "no native kernel found here: emulation"


def _linear_shape(model: nn.Module) -> tuple[int, int]:
    for m in model.modules():
        if isinstance(m, nn.Linear):
            return m.out_features, m.in_features
    return 256, 256


def _vocab_size(model: nn.Module) -> int:
    cfg = getattr(model, "config", None)
    v = getattr(cfg, "vocab_size", None)
    if v:
        return int(v)
    emb = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
    return emb.num_embeddings if emb is not None else 256


def _logits(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    return out[0]


def _load_model(args, device) -> tuple[nn.Module, str]:
    if args.model:
        try:
            from quantops import load_pretrained
        except ImportError as e:
            raise SystemExit(f"quantops: --model needs quantops.load_pretrained, which this installation lacks ({e})")
        return load_pretrained(args.model, device=device), f"{args.model}"
    from quantops.model import LlamaConfig, build_default_model

    cfg = LlamaConfig(**{k: v for k, v in dict(
        hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=args.layers,
        vocab_size=args.vocab).items() if v is not None})
    desc = (f"embedded default: Llama-architecture, {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
            f"MLP {cfg.intermediate_size}, vocab {cfg.vocab_size}, seeded random bf16 weights")
    return build_default_model(cfg, device=device), desc


def _has_quantized(model) -> bool:
    from quantops import QuantizedLinear

    return any(isinstance(m, QuantizedLinear) for m in model.modules())


def _dequantized_copy(model: nn.Module) -> nn.Module:
    """The float model a quantized checkpoint represents (each QuantizedLinear's weights dequantized)."""
    from quantops import QuantizedLinear
    from quantops.modules import _set_submodule

    ref = copy.deepcopy(model)
    for path, m in list(ref.named_modules()):
        if isinstance(m, QuantizedLinear):
            lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
            lin.weight = nn.Parameter(m.dequantize(), requires_grad=False)
            if m.bias is not None:
                lin.bias = nn.Parameter(m.bias.detach().clone(), requires_grad=False)
            _set_submodule(ref, path, lin)
    return ref


def _prepare(args, progress: Progress):
    """Shared by run and explain: (device, model description, reference model, quantized model, scheme,
    why, tokens)."""
    import quantops
    from quantops.model import example_tokens

    device = _device(args.device)
    with progress.step("building the model"):
        model, desc = _load_model(args, device)
    vocab = _vocab_size(model)
    tokens = example_tokens(args.batch, args.seq, vocab_size=vocab, seed=args.seed, device=device)
    if _has_quantized(model):
        scheme, why = "as loaded", "the checkpoint's quantization"
        reference, quantized = None, model
        with progress.step("dequantizing a float reference"):
            reference = _dequantized_copy(model)
    else:
        if args.scheme:
            scheme, why = quantops.get_scheme(args.scheme).name, "--scheme"
        else:
            scheme, why = native_scheme(device, *_linear_shape(model))
        reference = model
        with progress.step(f"quantizing to {scheme}"):
            s = quantops.get_scheme(scheme)
            calibration = [(tokens,)] if (not s.act_dynamic or s.act == "nvfp4") else None
            exclude = () if args.quantize_lm_head else ("lm_head",)
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantized = quantops.quantize_model(copy.deepcopy(model), s, exclude=exclude, calibration=calibration)
    return device, desc, reference, quantized, scheme, why, tokens


def _throughput(fn, tokens, min_seconds: float, sync) -> float:
    """tokens/s of fn(tokens) (whole forward passes over the batch), after one warm-up call."""
    fn(tokens)
    sync()
    n, start = 0, time.perf_counter()
    while True:
        fn(tokens)
        n += 1
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds and n >= 2:
            return n * tokens.numel() / elapsed


def _errors(out: torch.Tensor, ref: torch.Tensor) -> dict:
    o, r = out.float().reshape(-1, out.shape[-1]), ref.float().reshape(-1, ref.shape[-1])
    return {
        "rel_l2": float((o - r).norm() / r.norm().clamp(min=1e-12)),
        "max_abs": float((o - r).abs().max()),
        "top1": float((o.argmax(-1) == r.argmax(-1)).float().mean()),
    }


# -- run ----------------------------------------------------------------------------------------------


def cmd_run(args) -> int:
    import quantops
    from quantops.lowering import Explanation

    progress = Progress(5 if args.model is None else 6)
    out = progress.out
    device, desc, reference, quantized, scheme, why, tokens = _prepare(args, progress)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    be = quantops.backend(mode=args.mode, **({"emulate_precision_casts": True} if args.match_eager else {}))
    compiled = torch.compile(quantized, backend=be)
    with torch.no_grad():
        with progress.step("running the bf16 reference and the eager quantized model"):
            ref_logits = _logits(reference(tokens))
            eager_logits = _logits(quantized(tokens))
        with progress.step('compiling with backend="quantops" (kernel selection, FX rewrite, Inductor)'):
            start = time.perf_counter()
            logits = _logits(compiled(tokens)).clone()  # CUDA graphs (reduce-overhead) reuse their outputs
            sync()
            compile_s = time.perf_counter() - start
        with progress.step(f"timing eager and compiled ({args.seconds:g} s each)"):
            tps = {
                "bf16 eager": _throughput(reference, tokens, args.seconds, sync) if not args.skip_bf16_timing else None,
                "quantized eager": _throughput(quantized, tokens, args.seconds, sync),
                "quantized compiled": _throughput(compiled, tokens, args.seconds, sync),
            }
    err = _errors(logits, ref_logits)
    err_eager = _errors(logits, eager_logits)
    err_quant = _errors(eager_logits, ref_logits)
    n_compiles = len(be.graphs)

    w = out.write
    w("\n")
    w(f"model:   {desc}\n")
    w(f"device:  {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "") +
      f", torch {torch.__version__}\n")
    w(f"scheme:  {scheme} ({why}); lm_head " + ("quantized" if args.quantize_lm_head else "kept in bf16") + "\n")
    w(f"input:   tokens [{args.batch}, {args.seq}] ({tokens.numel()} tokens per forward)\n\n")
    w(Explanation(be.graphs).table() + "\n\n")
    w("logits (relative L2 error, max |diff|, top-1 agreement)\n")
    w(f"  eager quantized vs bf16 model: relative L2 error {err_quant['rel_l2']:.4f}, max |diff| "
      f"{err_quant['max_abs']:.4f}, top-1 agreement {100 * err_quant['top1']:.1f}%\n")
    w(f"  compiled vs bf16 model:        relative L2 error {err['rel_l2']:.4f}, max |diff| {err['max_abs']:.4f}, "
      f"top-1 agreement {100 * err['top1']:.1f}%\n")
    w(f"  compiled vs eager quantized:   relative L2 error {err_eager['rel_l2']:.4f}, max |diff| "
      f"{err_eager['max_abs']:.4f}, top-1 agreement "
      f"{100 * err_eager['top1']:.1f}%\n")
    w("  (Inductor keeps fused intermediates in fp32 where eager rounds them to bf16, so some quantized activations\n"
      "   land one rounding step apart; quantops.backend(emulate_precision_casts=True) reproduces eager's roundings)\n\n")
    w(f"tokens/s (forward passes over [{args.batch}, {args.seq}], {args.seconds:g} s each)\n")
    for name, v in tps.items():
        if v is not None:
            w(f"  {name:<20} {v:>12,.0f}\n")
    if tps["quantized eager"]:
        w(f"  compiled / eager quantized: {tps['quantized compiled'] / tps['quantized eager']:.2f}x\n")
    w(f"compile: {compile_s:.1f} s for {n_compiles} graph(s)\n")
    out.flush()
    return 0


# -- explain ----------------------------------------------------------------------------------------


def cmd_explain(args) -> int:
    import quantops

    progress = Progress(3 if args.model is None else 4)
    device, desc, _, quantized, scheme, why, tokens = _prepare(args, progress)
    options = {}
    if args.capability:
        options["capability"] = args.capability if args.capability == "cpu" else tuple(int(p) for p in args.capability.split("."))
    if args.libraries is not None:
        options["libraries"] = args.libraries
    with progress.step("tracing and rewriting (no Inductor)"):
        ex = quantops.explain(quantized, tokens, **options)
    progress.out.write(f"\nmodel:  {desc}\nscheme: {scheme} ({why})\n\n")
    progress.out.write((ex.table() if args.no_graph else str(ex)) + "\n")
    return 0


# -- the parser ------------------------------------------------------------------------------------


def _model_options(p: argparse.ArgumentParser):
    p.add_argument("--scheme", help="quantization scheme (FP8_DYNAMIC, W8A8, W4A16, NVFP4, ...; default: the best "
                                    "this machine runs natively)")
    p.add_argument("--model", metavar="DIR", help="a local Hugging Face model directory instead of the embedded "
                                                  "default (loaded with quantops.load_pretrained)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--batch", type=int, default=4, help="batch size of the example input (default 4)")
    p.add_argument("--seq", type=int, default=64, help="sequence length of the example input (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layers", type=int, help="embedded model: number of decoder layers (default 2)")
    p.add_argument("--hidden", type=int, help="embedded model: hidden size (default 256)")
    p.add_argument("--intermediate", type=int, help="embedded model: MLP size (default 768)")
    p.add_argument("--vocab", type=int, help="embedded model: vocabulary size (default 2048)")
    p.add_argument("--quantize-lm-head", action="store_true", help="quantize lm_head too (kept in bf16 by default)")


def add_run_parser(sub):
    p = sub.add_parser("run", help="quantize, compile and measure the default model (the main job)",
                       description="Quantize the model, compile it with backend 'quantops', print the kernel table, "
                                   "the logits error against the bf16 model and tokens/s of eager vs compiled.")
    _model_options(p)
    p.add_argument("--mode", help="torch.compile mode, e.g. reduce-overhead (CUDA graphs)")
    p.add_argument("--match-eager", action="store_true",
                   help="compile with Inductor's emulate_precision_casts (eager's bf16 roundings between fused ops)")
    p.add_argument("--seconds", type=float, default=1.0, help="time per throughput measurement (default 1)")
    p.add_argument("--skip-bf16-timing", action="store_true", help="do not time the bf16 model")
    p.set_defaults(func=cmd_run)


def add_explain_parser(sub):
    p = sub.add_parser("explain", help="print the kernel table and the rewritten graph",
                       description="Print quantops.explain() for the model: every linear layer's kernel (and the "
                                   "rejected candidates with their reasons), then the rewritten FX graph.")
    _model_options(p)
    p.add_argument("--capability", help="select for another target: e.g. 9.0 (H100), 10.0, or cpu (graphs only)")
    p.add_argument("--libraries", type=lambda s: [x for x in s.split(",") if x], default=None,
                   help="with --capability: the optional libraries to assume installed there, e.g. triton,fbgemm")
    p.add_argument("--no-graph", action="store_true", help="the table only")
    p.set_defaults(func=cmd_explain)


def add_bench_parser(sub):
    from .bench import add_bench_parser as add_kernel_bench

    add_kernel_bench(sub)
    sub.choices["bench"].add_argument(
        "--e2e", action="store_true",
        help="the end-to-end Llama-3-8B-architecture benchmark instead (quantops.bench_e2e; see quantops bench --e2e --help)")


# Each adds one subcommand.
SUBCOMMANDS = [add_run_parser, add_explain_parser, add_bench_parser]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quantops", description="Quantized linear layers for torch.compile.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"] and "--e2e" in argv:  # the end-to-end benchmark has its own options
        from .bench_e2e import main as e2e_main

        return e2e_main([a for a in argv[1:] if a != "--e2e"])
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
