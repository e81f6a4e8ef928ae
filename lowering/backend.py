"""The torch.compile backend "quantops": kernel selection and the FX rewrite, then Inductor.

    model = torch.compile(model, backend="quantops")                        # QuantizedLinear layers
    model = torch.compile(model, backend=quantops.backend(scheme="FP8_DYNAMIC"))   # plain nn.Linear too

Dynamo hands the backend its graph with the weights as inputs (their real tensors in `example_inputs`); the
rewrite (rewrite.py) replaces every linear site by the chosen kernel's ops, the graph goes to Inductor's
`compile_fx` with the options of `mode=` / `options=`, and the compiled function is wrapped so that tensors
derived from the weights follow the module instance it is called with (runtime.py).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import torch
import torch.fx

from quantops.kernels.registry import device_capability
from quantops.schemes import QuantScheme, get_scheme

from .cache_key import QuantopsCachePass, cache_key
from .rewrite import LayerDecision, lower_graph
from .runtime import BoundCompiledGraph, InstanceBinder

COMPILERS = ("inductor", "eager")


@dataclass(frozen=True)
class Settings:
    scheme: QuantScheme | None = None
    linear_backend: str | None = None
    disabled_kernels: tuple[str, ...] = ()
    capability: "tuple[int, int] | str | None" = None  # None: the device of the inputs; "cpu"; (9, 0)
    libraries: "frozenset[str] | None" = None  # simulated installed libraries (None: as installed)
    exclude: tuple[str, ...] = ()  # plain linears to leave in float (paths, globs, "re:" regexes)
    batch_invariant: bool | None = None
    weight_check: bool = True
    compiler: str = "inductor"
    inductor_options: tuple = ()  # sorted (key, value) pairs

    def describe(self) -> str:
        parts = [f"scheme={self.scheme.key()}"] if self.scheme else []
        for name in ("linear_backend", "disabled_kernels", "capability", "libraries", "exclude", "batch_invariant"):
            v = getattr(self, name)
            if v not in (None, (), frozenset()):
                parts.append(f"{name}={sorted(v) if isinstance(v, frozenset) else v}")
        return ", ".join(parts)


@dataclass
class GraphReport:
    """What the backend did to one Dynamo graph."""

    index: int
    platform: str
    layers: list[LayerDecision]
    graph: str | None = None  # the rewritten graph, normalised (when recorded)
    simulated: bool = False
    cache_key: str | None = None
    derived_bytes: int = 0
    lowering_seconds: float = 0.0  # kernel selection, prepare() and the rewrite (the time quantops adds)
    num_inputs: int = 0  # graph inputs from Dynamo
    num_extra_inputs: int = 0  # inputs the lowering appended (derived tensors)
    static_input_indices: list[int] | None = None  # as AOTAutograd marked them (CUDA graphs do not copy these)


def _norm_capability(capability):
    if capability is None or capability == "cpu":
        return capability
    if isinstance(capability, str):
        if capability.lower() in ("cpu", "none"):
            return "cpu"
        capability = capability.lower().removeprefix("sm").removeprefix("cuda").strip(": ")
        capability = int(capability.replace(".", "")) if capability.replace(".", "").isdigit() else capability
    if isinstance(capability, (int, float)):
        c = int(capability)
        return (c // 10, c % 10) if c >= 10 else (c, 0)
    if isinstance(capability, (tuple, list)) and len(capability) == 2:
        return (int(capability[0]), int(capability[1]))
    raise ValueError(f"capability must be None, 'cpu', (major, minor) or e.g. 90 / 'sm90', got {capability!r}")


def _names(value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = value.split(",")
    return tuple(sorted({v.strip() for v in value if v and v.strip()}))


def _device_of(example_inputs) -> torch.device:
    for t in example_inputs:
        if isinstance(t, torch.Tensor) and t.device.type == "cuda":
            return t.device
    return torch.device("cpu")


class QuantopsBackend:
    """A configured backend. Call it as torch.compile does: backend(gm, example_inputs, mode=, options=).

    `graphs` lists a GraphReport per graph it compiled (layers, kernels, reasons); `binders` the runtime
    state of each compiled graph (how often derived tensors were made again at call time)."""

    __name__ = "quantops"

    def __init__(self, settings: Settings | None = None, *, mode=None, options=None, record_graphs: bool = False,
                 explain_only: bool = False):
        self.settings = settings or Settings()
        self.mode, self.options = mode, dict(options or {})
        self.record_graphs = record_graphs
        self.explain_only = explain_only  # graphs are recorded and the original graph runs (explain())
        self.graphs: list[GraphReport] = []
        self.binders: list[InstanceBinder] = []
        if any(k == "freezing" for k, _ in self.settings.inductor_options) or "freezing" in self.options:
            warnings.warn("quantops: freezing in compile options does nothing (Dynamo decides while tracing): set "
                          "torch._inductor.config.freezing = True globally and trace under torch.no_grad()",
                          stacklevel=3)

    def __repr__(self):
        return f"quantops.backend({self.settings.describe()})"

    def __call__(self, gm: torch.fx.GraphModule, example_inputs, **kwargs):
        mode = kwargs.pop("mode", None) or self.mode
        options = {**self.options, **(kwargs.pop("options", None) or {})}
        if kwargs:
            raise TypeError(f"quantops backend: unexpected arguments {sorted(kwargs)}")
        s = self.settings
        device = _device_of(example_inputs)
        real = None if device.type == "cpu" else device_capability(device)
        wanted = s.capability
        simulated = wanted is not None and (None if wanted == "cpu" else wanted) != real
        if simulated and not self.explain_only:
            raise ValueError(
                f"quantops.backend(capability={wanted!r}) describes another machine than this {device.type} "
                f"device: use quantops.explain(model, *inputs, capability={wanted!r}) to see its graphs")
        start = time.perf_counter()
        lowered = lower_graph(gm, example_inputs, s, simulated=simulated)
        lowering_seconds = time.perf_counter() - start
        cap = (None if wanted == "cpu" else wanted) if wanted is not None else real
        platform = "cpu" if cap is None else f"cuda sm{cap[0]}{cap[1]}"
        report = GraphReport(len(self.graphs), platform + (" (simulated)" if simulated else ""), lowered.layers,
                             simulated=simulated, derived_bytes=sum(l.prepared_bytes for l in lowered.layers),
                             lowering_seconds=lowering_seconds, num_inputs=lowered.num_original_inputs,
                             num_extra_inputs=len(lowered.extra_inputs))
        self.graphs.append(report)
        if self.record_graphs or self.explain_only:
            from .explain import readable_graph

            report.graph = readable_graph(lowered.gm, list(example_inputs) + lowered.extra_inputs)
        if simulated:
            return gm.forward

        inputs = list(example_inputs) + lowered.extra_inputs
        if s.compiler == "eager" or (self.explain_only and s.compiler != "inductor"):
            compiled = lowered.gm.forward
        else:
            compiled = self._inductor(lowered, inputs, mode, options, report)
        if not lowered.derivations:
            return compiled
        binder = InstanceBinder(lowered.derivations, example_inputs, lowered.extra_inputs,
                                check_versions=s.weight_check)
        self.binders.append(binder)
        return BoundCompiledGraph(compiled, binder)

    def _inductor(self, lowered, inputs, mode, options, report):
        from torch._inductor import config as inductor_config
        from torch._inductor.compile_fx import compile_fx

        patches = {}
        if mode is not None:
            patches.update(torch._inductor.list_mode_options(mode))
        patches.update(options)
        patches.update(dict(self.settings.inductor_options))
        classes = {cls for l in lowered.layers if l.selection is not None for _, cls in l.selection.plan}
        plans = [f"{l.path}:{l.status}:{l.kernel}" for l in lowered.layers]
        report.cache_key = cache_key(repr(self.settings), classes, plans)
        inner = patches.get("post_grad_custom_post_pass", inductor_config.post_grad_custom_post_pass)
        patches["post_grad_custom_post_pass"] = QuantopsCachePass(report.cache_key, inner)
        _static_shapes_for(lowered.extra_inputs)
        compiled = compile_fx(lowered.gm, inputs, config_patches=patches)
        ctx = torch._guards.TracingContext.try_get()
        meta = getattr(ctx, "fw_metadata", None)
        if meta is not None:
            report.static_input_indices = list(meta.static_input_indices)
        return compiled


def _static_shapes_for(extra_inputs):
    """AOTAutograd fakifies an input Dynamo did not see with fresh size symbols that have no source; a guard
    on one (e.g. a [1, N] scale broadcast under backed_size_oblivious) then fails. The derived tensors have
    fixed shapes: say so in the tracing context, which AOTAutograd consults first."""
    ctx = torch._guards.TracingContext.try_get()
    if ctx is None:
        return
    from torch._dynamo.source import ConstantSource
    from torch.fx.experimental.symbolic_shapes import DimDynamic, StatefulSymbolicContext

    for i, t in enumerate(extra_inputs):
        if t not in ctx.tensor_to_context:
            ctx.tensor_to_context[t] = StatefulSymbolicContext(
                dynamic_sizes=[DimDynamic.STATIC] * t.dim(), tensor_source=ConstantSource(f"__quantops_derived_{i}"))


def backend(
    scheme=None,
    linear_backend: str | None = None,
    disabled_kernels=(),
    *,
    capability=None,
    libraries=None,
    exclude=(),
    batch_invariant: bool | None = None,
    weight_check: bool = True,
    compiler: str = "inductor",
    mode: str | None = None,
    options: dict | None = None,
    record_graphs: bool = False,
    **inductor_options,
) -> QuantopsBackend:
    """A configured "quantops" backend for torch.compile.

    scheme: also quantize every eligible plain linear (nn.Linear, F.linear, mm/addmm on a parameter) of the
        graph to this scheme at compile time (ineligible ones stay float; explain() says why). The float
        weights stay referenced by the model: freeze to drop them (see the README).
    linear_backend / disabled_kernels: force a backend or kernel class, or remove some (names or backends);
        they default to $QUANTOPS_LINEAR_BACKEND / $QUANTOPS_DISABLED_KERNELS.
    capability: select for another target, e.g. (9, 0) or "cpu" (explain() only: such graphs cannot run here);
        libraries: the optional libraries to assume installed there (default: as installed here).
    exclude: plain-linear paths to keep in float ("lm_head", "*.gate", "re:..."). batch_invariant: kernels whose
        output rows do not depend on the batch. weight_check: re-prepare when weights change (see runtime.py).
    compiler: "inductor" (default) or "eager" (run the rewritten graph without Inductor, for debugging).
    mode / options / **inductor_options: as torch.compile's, for Inductor ("reduce-overhead" -> CUDA graphs).
    """
    if compiler not in COMPILERS:
        raise ValueError(f"compiler must be one of {COMPILERS}, got {compiler!r}")
    settings = Settings(
        scheme=None if scheme is None else get_scheme(scheme),
        linear_backend=linear_backend or None,
        disabled_kernels=_names(disabled_kernels),
        capability=_norm_capability(capability),
        libraries=None if libraries is None else frozenset(_names(libraries)),
        exclude=tuple(exclude) if not isinstance(exclude, str) else (exclude,),
        batch_invariant=batch_invariant,
        weight_check=bool(weight_check),
        compiler=compiler,
        inductor_options=tuple(sorted(inductor_options.items())),
    )
    return QuantopsBackend(settings, mode=mode, options=options, record_graphs=record_graphs)
