"""The FX rewrite: every linear site of a Dynamo graph -> the registry's kernel, recorded into the graph.

Sites:
- `quantops::quantized_linear(x, tensors, bias, scheme, n, k)`, emitted by a QuantizedLinear under torch.compile;
- with a backend scheme, plain float linears on a module parameter: `torch._C._nn.linear` (nn.Linear,
  F.linear), and `mm` / `matmul` / `@` / `addmm` of an activation by a transposed parameter.

For each site the registry chooses a kernel (or an M plan) for the real N, K, dtype and device capability; the
kernel's `prepare()` runs here, once, on the real weights; `apply()` is called on FX proxies, so what it does
(activation quantization in plain torch, then its custom op) becomes graph nodes that Inductor fuses with their
neighbours. An M plan becomes one `quantops::linear_by_m` node that branches on M inside -- unless this graph's M
is a fixed number (static shapes, which Dynamo guards): then only the plan's kernel for that M is recorded, node
by node like a single kernel (its activation quantization fused instead of run opaquely inside linear_by_m).

Where the tensors a kernel consumes differ from the module's (padded, repacked, or quantized from a float
weight), they enter the graph as extra placeholders that the runtime binds per module instance (a compiled
graph is reused for every instance of the same structure: parameters are unguarded), or, when Dynamo lifted the
weights as attributes (freezing), as buffers of the graph module that Inductor folds into constants.
"""

from __future__ import annotations

import copy
import math
import operator
import re
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.fx

from quantops import formats
from quantops.kernels.base import LinearKernel
from quantops.kernels.dispatch import encode_plan
from quantops.kernels.registry import Selection, select_kernel
from quantops.modules import _matches
from quantops.schemes import QuantScheme

GENERIC_OP = torch.ops.quantops.quantized_linear
LINEAR_TARGETS = {torch._C._nn.linear, torch.nn.functional.linear, torch.ops.aten.linear.default}
MATMUL_FUNCTIONS = {operator.matmul, torch.matmul, torch.mm, torch.ops.aten.mm.default}
MATMUL_METHODS = {"matmul", "mm", "__matmul__"}


# -- what explain() reports -------------------------------------------------------------------------


@dataclass
class LayerDecision:
    """One linear site of one graph: what it is, and what the lowering made of it."""

    path: str  # module path (e.g. model.layers.0.self_attn.q_proj)
    kind: str  # "quantized" (a QuantizedLinear) or "float" (a plain linear)
    n: int | None = None
    k: int | None = None
    dtype: torch.dtype | None = None
    scheme: str | None = None
    selection: Selection | None = None
    status: str = "rewritten"  # rewritten | float (left as is) | generic (the generic op kept)
    reason: str | None = None  # why not rewritten
    notes: list[str] = field(default_factory=list)
    prepared_bytes: int = 0  # bytes of the tensors prepare()/quantization made (beyond the module's own)
    static_m: int | None = None  # M fixed in this graph, with an M plan: only the plan's kernel for it recorded

    @property
    def kernel(self) -> str:
        if self.selection is not None and self.status == "rewritten":
            if self.static_m is not None:
                return (f"{self.selection.for_m(self.static_m).kernel_name()} "
                        f"(M={self.static_m} here; plan: {self.selection.plan_str()})")
            return self.selection.plan_str()
        return self.status


# -- resolving graph values -------------------------------------------------------------------------


def _source_name(source) -> str | None:
    if source is None:
        return None
    name = source.name
    return name() if callable(name) else name  # a method before torch 2.12, a property since


def split_source_path(name: str) -> tuple[str, str] | None:
    """Dynamo source name of a module tensor -> (module path, tensor name), e.g.
    "L['self']._modules['mlp']._modules['up_proj']._parameters['weight']" -> ("mlp.up_proj", "weight")."""
    m = re.search(r"\._(?:parameters|buffers)\[['\"]([^'\"]+)['\"]\]$", name)
    if not m:
        return None
    mods = re.findall(r"_modules\[['\"]([^'\"]+)['\"]\]", name[: m.start()])
    return ".".join(mods), m.group(1)


class Values:
    """Real tensors and module paths behind the placeholder / get_attr nodes of a Dynamo graph."""

    def __init__(self, gm: torch.fx.GraphModule, example_inputs):
        self.gm = gm
        self.placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        self.position = {n: i for i, n in enumerate(self.placeholders)}
        self.example_inputs = list(example_inputs)
        self.fqn = dict(gm.meta.get("dynamo_flat_name_to_original_fqn", {}) or {})

    def tensor(self, node) -> torch.Tensor | None:
        if not isinstance(node, torch.fx.Node):
            return None
        if node.op == "placeholder":
            v = self.example_inputs[self.position[node]]
        elif node.op == "get_attr":
            v = self.gm
            for part in node.target.split("."):
                v = getattr(v, part)
        else:
            return None
        return v if isinstance(v, torch.Tensor) else None

    def is_module_tensor(self, node) -> bool:
        """A parameter or buffer of a module (not a per-call input): safe to prepare at compile time."""
        if not isinstance(node, torch.fx.Node):
            return False
        if node.op == "get_attr":
            return True
        if node.op != "placeholder":
            return False
        name = _source_name(getattr(node, "_dynamo_source", None)) or ""
        return "._parameters[" in name or "._buffers[" in name or isinstance(self.tensor(node), torch.nn.Parameter)

    def path(self, node) -> tuple[str, str]:
        """(module path, tensor name) of a weight node, from its Dynamo source; the node name as a fallback."""
        if node.op == "get_attr":
            fqn = self.fqn.get(node.target)
            if fqn is None:
                src = getattr(self.gm, "_param_name_to_source", {}).get(node.target)
                parsed = split_source_path(_source_name(src) or "")
                if parsed:
                    return parsed
                fqn = node.target
            mod, _, name = fqn.rpartition(".")
            return mod, name
        parsed = split_source_path(_source_name(getattr(node, "_dynamo_source", None)) or "")
        return parsed or (node.name, "")


def _meta(node):
    if isinstance(node, torch.fx.Node):
        return node.meta.get("example_value", node.meta.get("val"))
    return None


# -- sites --------------------------------------------------------------------------------------------


@dataclass
class Site:
    node: torch.fx.Node  # the node whose value the kernel output replaces
    x: torch.fx.Node
    bias: torch.fx.Node | None
    kind: str  # quantized | float
    weight_nodes: list[torch.fx.Node]  # canonical tensors (quantized) or [float weight] (float)
    scheme: QuantScheme | None = None
    n: int | None = None
    k: int | None = None
    dead_after: list[torch.fx.Node] = field(default_factory=list)  # e.g. the weight's transpose


def _static_lead(xv) -> tuple[int, ...] | None:
    """The leading sizes of a [..., K] activation when each is a plain int in this graph (static shapes, which
    Dynamo guards), else None."""
    shape = getattr(xv, "shape", None)
    if shape is None or len(shape) < 1:
        return None
    lead = tuple(shape[:-1])
    return lead if all(isinstance(d, int) for d in lead) else None


def plan_kernels(sel: Selection, xv, layer: LayerDecision) -> list[tuple[int | None, LinearKernel]]:
    """The kernels to record for a site: the selection's plan, or where M is fixed in this graph only the plan's
    kernel for it (recorded node by node rather than inside linear_by_m)."""
    lead = _static_lead(xv)
    if lead is not None and len(sel.plan) > 1:
        m = layer.static_m = math.prod(lead)
        return [(None, sel.for_m(m)(sel.config))]
    return [(max_m, cls(sel.config)) for max_m, cls in sel.plan]


def _transposed_weight(node) -> torch.fx.Node | None:
    """w if `node` is w.t() / w.T / w.transpose(0, 1) / w.permute(1, 0) of a 2-D tensor node, else None."""
    if not isinstance(node, torch.fx.Node):
        return None
    args = list(node.args)
    if node.op == "call_method" and node.target == "t" and len(args) == 1:
        return args[0]
    if node.op == "call_function" and node.target is torch.t and len(args) == 1:
        return args[0]
    if node.op == "call_function" and node.target is getattr and len(args) == 2 and args[1] in ("T", "mT"):
        return args[0]
    if (node.op == "call_method" and node.target == "transpose") or (
            node.op == "call_function" and node.target is torch.transpose):
        if len(args) == 3 and sorted((args[1], args[2])) in ([0, 1], [-2, -1], [-1, 0], [-2, 1]):
            return args[0]
    if (node.op == "call_method" and node.target == "permute") or (
            node.op == "call_function" and node.target is torch.permute):
        dims = args[1:] if node.op == "call_method" and len(args) > 2 else (args[1] if len(args) > 1 else None)
        if dims is not None and list(dims) == [1, 0]:
            return args[0]
    return None


def find_sites(gm: torch.fx.GraphModule) -> list[Site]:
    sites = []
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in (GENERIC_OP, GENERIC_OP.default):
            names = ["x", "tensors", "bias", "scheme", "n", "k"]
            a = dict(zip(names, node.args))
            a.update(node.kwargs)
            sites.append(Site(node, a["x"], a.get("bias"), "quantized", list(a["tensors"]),
                              QuantScheme.from_key(a["scheme"]), int(a["n"]), int(a["k"])))
        elif node.op == "call_function" and node.target in LINEAR_TARGETS:
            x = node.args[0] if node.args else node.kwargs.get("input")
            w = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
            b = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
            sites.append(Site(node, x, b, "float", [w]))
        elif (node.op == "call_function" and node.target in MATMUL_FUNCTIONS) or (
                node.op == "call_method" and node.target in MATMUL_METHODS):
            if len(node.args) == 2 and not node.kwargs:
                w = _transposed_weight(node.args[1])
                if w is not None:
                    sites.append(Site(node, node.args[0], None, "float", [w], dead_after=[node.args[1]]))
        elif node.op == "call_function" and node.target in (torch.addmm, torch.ops.aten.addmm.default):
            if len(node.args) == 3 and all(node.kwargs.get(k, 1) == 1 for k in ("beta", "alpha")):
                w = _transposed_weight(node.args[2])
                if w is not None:
                    sites.append(Site(node, node.args[1], node.args[0], "float", [w], dead_after=[node.args[2]]))
    return sites


# -- the lowering of one graph -----------------------------------------------------------------------


@dataclass
class Derivation:
    """Tensors a site's kernels consume that the module does not hold: made from the module's tensors by
    `fn` (quantize and/or prepare), bound per module instance at run time."""

    path: str
    sources: list[int]  # positions of the source tensors among the graph's original inputs
    fn: Callable[[list[torch.Tensor]], list[torch.Tensor]]
    specs: list[tuple[tuple[int, ...], tuple[int, ...], torch.dtype]]  # (shape, stride, dtype) of each output


@dataclass
class Lowered:
    gm: torch.fx.GraphModule
    layers: list[LayerDecision]
    platform: str
    extra_inputs: list[torch.Tensor]  # example values of the placeholders the lowering appended
    derivations: list[Derivation]  # in the order of those placeholders
    num_original_inputs: int


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a is b:
        return True
    if (a.shape, a.stride(), a.dtype, a.device) != (b.shape, b.stride(), b.dtype, b.device) or a.device.type == "meta":
        return False
    # bytewise (torch.equal has no fp8 kernel on the CPU)
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def _assign_slots(prepared: list[dict], canon: dict):
    """Graph values for every kernel's prepared tensors: ("canon", name) for a module tensor handed through,
    else ("slot", j) for a derived tensor; equal derived tensors (two kernels of an M plan consuming the same
    layout) share a slot, so an M plan does not hold the weights twice."""
    ids = {id(t): nm for nm, t in canon.items()}
    slots, refs = [], []  # slots: (kernel index, name, tensor)
    for ki, p in enumerate(prepared):
        r = {}
        for nm, t in p.items():
            if id(t) in ids:
                r[nm] = ("canon", ids[id(t)])
                continue
            j = next((j for j, (_, _, u) in enumerate(slots) if _same_tensor(t, u)), None)
            if j is None:
                j = len(slots)
                slots.append((ki, nm, t))
            r[nm] = ("slot", j)
        refs.append(r)
    return slots, refs


def _slot_names(path: str, slots, n_kernels: int) -> list[str]:
    base = _sanitize(path)
    return [f"{base}__{nm}" if n_kernels == 1 else f"{base}__{ki}_{nm}" for ki, nm, _ in slots]


def _sanitize(s: str) -> str:
    s = re.sub(r"[^0-9a-zA-Z_]", "_", s)
    return s if s and not s[0].isdigit() else "_" + s


def _dtype_str(d) -> str:
    return str(d).replace("torch.", "")


class _Lowering:
    def __init__(self, gm, example_inputs, settings, *, simulated: bool):
        self.gm = gm
        self.graph = gm.graph
        self.values = Values(gm, example_inputs)
        self.settings = settings
        self.simulated = simulated
        self.tracer = torch.fx.proxy.GraphAppendingTracer(self.graph)
        self.extra_inputs: list[torch.Tensor] = []
        self.derivations: list[Derivation] = []
        self.layers: list[LayerDecision] = []
        # the mode of Dynamo's example values (the tracing context holds another one, made for the backend)
        metas = [n.meta.get("example_value") for n in self.values.placeholders]
        self.fake_mode = next((m.fake_mode for m in metas if hasattr(m, "fake_mode")), None)
        self._last_placeholder = self.values.placeholders[-1] if self.values.placeholders else None
        self._used_names: set[str] = set()

    # -- selection -----------------------------------------------------------------------------
    def select(self, scheme, n, k, dtype, device, has_bias) -> Selection:
        s = self.settings
        if s.capability == "cpu":
            where = {"device": "cpu"}
        elif s.capability is not None:
            where = {"capability": s.capability}
        else:
            where = {"device": device}
        return select_kernel(scheme, N=n, K=k, dtype=dtype, has_bias=has_bias, linear_backend=s.linear_backend,
                             disabled_kernels=s.disabled_kernels, batch_invariant=s.batch_invariant,
                             libraries=s.libraries, **where)

    # -- prepared tensors ----------------------------------------------------------------------
    def _prepare(self, kernel: LinearKernel, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            if not self.simulated:
                return kernel.prepare(tensors)
            # A simulated target's prepare may use ops the CPU lacks: shapes are all the graph needs then.
            try:
                return kernel.prepare(tensors)
            except Exception:
                return kernel.prepare({k: v.to("meta") for k, v in tensors.items()})

    def _new_input(self, name: str, value: torch.Tensor) -> torch.fx.Node:
        """An extra graph input, bound at run time (static: its address is stable for CUDA graphs)."""
        name = self._unique(name)
        anchor = self._last_placeholder
        ctx = self.graph.inserting_after(anchor) if anchor is not None else self.graph.inserting_before(None)
        with ctx:
            node = self.graph.placeholder(name)
        self._last_placeholder = node
        if self.fake_mode is not None:
            node.meta["example_value"] = self.fake_mode.from_tensor(value, static_shapes=True)
        node.meta["tensor_dict"] = {"_dynamo_static_input_type": "unguarded"}
        try:
            from torch._dynamo.source import ConstantSource

            node._dynamo_source = ConstantSource(f"__quantops_{node.name}")
        except Exception:  # a torch without it only loses a log label
            node._dynamo_source = None
        self.extra_inputs.append(value)
        return node

    def _new_buffer(self, name: str, value: torch.Tensor) -> torch.fx.Node:
        """A graph-module buffer (weights lifted as attributes, as under freezing: folded into constants)."""
        name = self._unique(name)
        self.gm.register_buffer(name, value)
        pnts = getattr(self.gm, "_param_name_to_source", None)
        if pnts is not None:
            from torch._dynamo.source import ConstantSource

            pnts[name] = ConstantSource(f"__quantops_{name}")
        with self.graph.inserting_before(self._first_compute()):
            node = self.graph.get_attr(name)
        if self.fake_mode is not None:
            node.meta["example_value"] = self.fake_mode.from_tensor(value, static_shapes=True)
        return node

    def _first_compute(self):
        for node in self.graph.nodes:
            if node.op not in ("placeholder", "get_attr"):
                return node
        return None

    def _unique(self, name: str) -> str:
        existing = {n.name for n in self.graph.nodes} | self._used_names | set(dict(self.gm.named_buffers()))
        base, i = name, 1
        while name in existing or hasattr(self.gm, name):
            name, i = f"{base}_{i}", i + 1
        self._used_names.add(name)
        return name

    # -- one site ------------------------------------------------------------------------------
    def lower(self, site: Site):
        xv = _meta(site.x)
        w_nodes = site.weight_nodes
        path = self._path(site)
        if site.kind == "quantized":
            layer = LayerDecision(path, "quantized", site.n, site.k, getattr(xv, "dtype", None), site.scheme.key())
            self.layers.append(layer)
            self._lower_quantized(site, layer, xv)
        else:
            w = self.values.tensor(w_nodes[0])
            n, k = (tuple(w.shape) if w is not None and w.dim() == 2 else (None, None))
            scheme = self.settings.scheme
            layer = LayerDecision(path, "float", n, k, getattr(xv, "dtype", None),
                                  scheme.key() if scheme is not None else None, status="float")
            self.layers.append(layer)
            self._lower_float(site, layer, xv, w)

    def _path(self, site: Site) -> str:
        mod, _ = self.values.path(site.weight_nodes[0]) if isinstance(site.weight_nodes[0], torch.fx.Node) else (site.node.name, "")
        return mod or "(root)"

    def _lower_quantized(self, site: Site, layer: LayerDecision, xv):
        scheme, n, k = site.scheme, site.n, site.k
        names = list(formats.tensor_specs(scheme, n, k))
        if len(names) != len(site.weight_nodes) or not all(self.values.is_module_tensor(t) for t in site.weight_nodes):
            layer.status, layer.reason = "generic", (
                "its tensors are not module parameters here (computed in the graph): the generic "
                "quantops.quantized_linear op stays, selecting and preparing on every call")
            return
        canon_nodes = dict(zip(names, site.weight_nodes))
        canon = {nm: self.values.tensor(nd) for nm, nd in canon_nodes.items()}
        try:
            sel = self.select(scheme, n, k, xv.dtype, xv.device, site.bias is not None)
        except ValueError as e:
            raise ValueError(f"{layer.path}: {e}") from None
        layer.selection = sel
        kernels = plan_kernels(sel, xv, layer)
        prepared = [self._prepare(kern, canon) for _, kern in kernels]
        # Tensors a kernel consumes as the module holds them stay the module's inputs; the rest are derived.
        slots, refs = _assign_slots(prepared, canon)
        slot_nodes = []
        if slots:
            def derive(srcs, kernels=kernels, names=names, slots=slots):
                tensors = dict(zip(names, srcs))
                out = [k_.prepare(tensors) for _, k_ in kernels]
                return [out[ki][nm] for ki, nm, _ in slots]

            slot_nodes = self._bind(layer, site.weight_nodes, derive, [t for _, _, t in slots],
                                    _slot_names(layer.path, slots, len(kernels)))
        proxies = [{nm: self._proxy(canon_nodes[r[1]] if r[0] == "canon" else slot_nodes[r[1]])
                    for nm, r in ref.items()} for ref in refs]
        self._emit(site, layer, kernels, proxies)

    def _lower_float(self, site: Site, layer: LayerDecision, xv, w):
        s = self.settings
        wnode = site.weight_nodes[0]
        why = None
        if s.scheme is None:
            why = "no scheme given to the backend (quantops.backend(scheme=...) quantizes plain linears)"
        elif w is None or not self.values.is_module_tensor(wnode):
            why = "the weight is not a module parameter (a per-call input)"
        elif w.dim() != 2 or not w.is_floating_point() or w.dtype not in (torch.bfloat16, torch.float16, torch.float32):
            why = f"the weight is not a 2-D bf16/fp16/fp32 tensor ({tuple(w.shape)} {_dtype_str(w.dtype)})"
        elif xv is None or not isinstance(xv, torch.Tensor) or xv.dtype != w.dtype:
            why = "the activation's dtype differs from the weight's"
        elif _matches(layer.path, s.exclude):
            why = "excluded"
        elif torch.is_grad_enabled() and w.requires_grad:
            why = "grad mode is on and the weight requires grad (quantized kernels have no backward): compile under torch.no_grad()"
        elif (not s.scheme.act_dynamic) or s.scheme.act == "nvfp4":
            why = f"{s.scheme.name} needs calibrated activation scales: use quantops.quantize_model(..., calibration=...)"
        else:
            why = formats.representable(s.scheme, *w.shape)
        if why is None:
            try:
                layer.selection = self.select(s.scheme, layer.n, layer.k, xv.dtype, xv.device, site.bias is not None)
            except ValueError as e:
                why = f"no kernel: {e}"
        if why is not None:
            layer.reason = why
            return
        sel = layer.selection
        scheme = s.scheme
        kernels = plan_kernels(sel, xv, layer)

        with torch.no_grad():
            canon = formats.quantize_weight(w.detach(), scheme)
        # every tensor is derived (the module holds only the float weight)
        slots, refs = _assign_slots([self._prepare(kern, canon) for _, kern in kernels], {})

        def derive(srcs, kernels=kernels, scheme=scheme, slots=slots):
            canon = formats.quantize_weight(srcs[0].detach(), scheme)
            out = [k_.prepare(canon) for _, k_ in kernels]
            return [out[ki][nm] for ki, nm, _ in slots]

        slot_nodes = self._bind(layer, [wnode], derive, [t for _, _, t in slots],
                                _slot_names(layer.path, slots, len(kernels)))
        proxies = [{nm: self._proxy(slot_nodes[r[1]]) for nm, r in ref.items()} for ref in refs]
        layer.status = "rewritten"
        self._emit(site, layer, kernels, proxies)

    def _bind(self, layer, source_nodes, derive, values, names) -> list[torch.fx.Node]:
        """Graph nodes for derived tensors: extra inputs bound per instance, or buffers when the sources
        are attributes of the graph module (freezing)."""
        sources = {self.values.tensor(nd).untyped_storage().data_ptr() for nd in source_nodes
                   if self.values.tensor(nd) is not None and self.values.tensor(nd).device.type != "meta"}
        layer.prepared_bytes += sum(t.untyped_storage().nbytes() for t in values  # views of the module's own tensors are free
                                    if t.device.type != "meta" and t.untyped_storage().data_ptr() not in sources)
        if all(nd.op == "get_attr" for nd in source_nodes):
            layer.notes.append("weights are graph attributes (freezing): prepared tensors become constants")
            return [self._new_buffer(nm, t) for nm, t in zip(names, values)]
        positions = [self.values.position[nd] for nd in source_nodes if nd.op == "placeholder"]
        if len(positions) != len(source_nodes):
            attrs = {i: self.values.tensor(nd) for i, nd in enumerate(source_nodes) if nd.op == "get_attr"}
            order = [i for i, nd in enumerate(source_nodes) if nd.op == "placeholder"]

            def derive_mixed(srcs, derive=derive, attrs=attrs, order=order, n=len(source_nodes)):
                full = [None] * n
                for i, t in zip(order, srcs):
                    full[i] = t
                for i, t in attrs.items():
                    full[i] = t
                return derive(full)

            fn = derive_mixed
        else:
            fn = derive
        self.derivations.append(Derivation(layer.path, positions, fn,
                                           [(tuple(t.shape), tuple(t.stride()), t.dtype) for t in values]))
        return [self._new_input(nm, t) for nm, t in zip(names, values)]

    def _proxy(self, node):
        return torch.fx.Proxy(node, self.tracer)

    def _emit(self, site: Site, layer: LayerDecision, kernels, proxies):
        """Record the kernel's apply on proxies before the site node, then let its users read the result."""
        xv = _meta(site.x)
        cfg = kernels[0][1].config
        x = self._proxy(site.x)
        bias = self._proxy(site.bias) if site.bias is not None else None
        before = set(self.graph.nodes)
        out = None
        with self.graph.inserting_before(site.node):
            if len(kernels) == 1:
                kern = kernels[0][1]
                try:
                    if type(kern).apply is LinearKernel.apply:  # the usual [..., K] <-> [M, K] reshapes
                        out = self._unflatten(kern.apply_2d(self._flatten(x, xv, cfg.k), proxies[0], bias), x, xv, cfg.n)
                    else:
                        out = kern.apply(x, proxies[0], bias)
                    if not isinstance(out, torch.fx.Proxy):
                        raise TypeError(f"apply returned {type(out).__name__}, not a graph value")
                except Exception as e:  # not recordable on proxies: run it as an opaque op instead
                    for node in reversed([n for n in self.graph.nodes if n not in before]):
                        if not node.users:
                            self.graph.erase_node(node)
                    out = None
                    layer.notes.append(f"{kern.kernel_name()}.apply could not be recorded ({type(e).__name__}: "
                                       f"{str(e).splitlines()[0] if str(e) else ''}); it runs inside quantops::linear_by_m")
            if out is None:
                plan, flat = [], []
                for (max_m, kern), p in zip(kernels, proxies):
                    plan.append((max_m, type(kern), list(p)))
                    flat.extend(p.values())
                out2d = torch.ops.quantops.linear_by_m(self._flatten(x, xv, cfg.k), flat, bias, encode_plan(cfg, plan))
                out = self._unflatten(out2d, x, xv, cfg.n)
        site.node.replace_all_uses_with(out.node)
        self.graph.erase_node(site.node)
        for node in site.dead_after:
            if not node.users:
                self.graph.erase_node(node)
        layer.status = "rewritten"

    @staticmethod
    def _flatten(x, xv, k):
        return x if xv is not None and xv.dim() == 2 else x.reshape(-1, k)

    @staticmethod
    def _unflatten(out, x, xv, n):
        if xv is not None and xv.dim() == 2:
            return out
        lead = _static_lead(xv)
        if lead is not None:
            return out.reshape(*lead, n)  # static sizes: a readable reshape
        return out.reshape(x.shape[:-1] + (n,))


def copy_dynamo_graph(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A copy to rewrite: Dynamo reads its own graph's placeholders after the backend returns, and AOTAutograd
    reads the Dynamo metadata (placeholder sources, parameter sources, compile id) of the graph it gets."""
    graph = copy.deepcopy(gm.graph)
    new = torch.fx.GraphModule(gm, graph, class_name=type(gm).__name__)
    for old, node in zip(gm.graph.find_nodes(op="placeholder"), graph.find_nodes(op="placeholder")):
        if hasattr(old, "_dynamo_source"):
            node._dynamo_source = old._dynamo_source
    new.meta = dict(gm.meta)
    if hasattr(gm, "_param_name_to_source"):
        new._param_name_to_source = dict(gm._param_name_to_source)
    return new


def lower_graph(gm: torch.fx.GraphModule, example_inputs, settings, *, simulated: bool = False) -> Lowered:
    """Rewrite every linear site of a copy of `gm` (see the module docstring)."""
    gm = copy_dynamo_graph(gm)
    low = _Lowering(gm, example_inputs, settings, simulated=simulated)
    n_inputs = len(low.values.placeholders)
    for site in find_sites(gm):
        low.lower(site)
    gm.graph.lint()
    gm.recompile()
    return Lowered(gm, low.layers, "", low.extra_inputs, low.derivations, n_inputs)
