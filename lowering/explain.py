"""quantops.explain(): every linear layer's kernel decision, and the rewritten graph.

    print(quantops.explain(model, example_input))                       # this machine
    print(quantops.explain(model, example_input, capability=(9, 0)))    # what an H100 would run (graphs only)

It compiles `model` with a recording quantops backend (Dynamo traces it under torch.no_grad(), as inference
does; the graph runs once, without Inductor) and returns an Explanation: `str()` is a per-layer table (module
path, scheme, N x K, the kernel or M plan, every rejected candidate with its reason, layers left in float with
theirs) followed by each rewritten FX graph, normalised: no memory addresses, no file paths, symbolic sizes
renamed s0, s1, ... in order of appearance.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from .backend import GraphReport, QuantopsBackend, backend
from .rewrite import LayerDecision


def readable_graph(gm: torch.fx.GraphModule, example_inputs=None) -> str:
    """print_readable() of the graph, with shapes where known, normalised for comparison."""
    from torch._dynamo.testing import normalize_gm

    _propagate_shapes(gm, example_inputs)
    text = normalize_gm(gm.print_readable(print_output=False))
    return normalize_symbols(text)


def normalize_symbols(text: str) -> str:
    text = re.sub(r"0x[0-9a-fA-F]+", "0x?", text)
    mapping: dict[str, str] = {}

    def rename(m):
        return mapping.setdefault(m.group(0), f"{m.group(1)}{len([k for k in mapping if k[0] == m.group(1)])}")

    return re.sub(r"\b([su])\d+\b", rename, text)


def _propagate_shapes(gm, example_inputs):
    """Fill in shapes of the nodes the lowering added (FakeTensorProp in Dynamo's fake mode); best effort."""
    try:
        from torch.fx.passes.fake_tensor_prop import FakeTensorProp

        fakes = []
        for node in gm.graph.find_nodes(op="placeholder"):
            v = node.meta.get("example_value", node.meta.get("val"))
            if v is None:
                return
            fakes.append(v)
        modes = {id(f.fake_mode): f.fake_mode for f in fakes if hasattr(f, "fake_mode")}
        if len(modes) != 1:
            return
        fake_mode = next(iter(modes.values()))
        FakeTensorProp(gm, fake_mode).propagate_dont_convert_inputs(*fakes)
    except Exception:  # annotations are a convenience; a graph that does not propagate still prints
        pass


def _fmt_dtype(d) -> str:
    return "" if d is None else str(d).replace("torch.", "")


@dataclass
class Explanation:
    graphs: list[GraphReport]
    settings: str = ""

    @property
    def layers(self) -> list[LayerDecision]:
        return [l for g in self.graphs for l in g.layers]

    def layer(self, path: str) -> LayerDecision:
        for l in self.layers:
            if l.path == path:
                return l
        raise KeyError(path)

    def table(self) -> str:
        layers = self.layers
        rewritten = sum(l.status == "rewritten" for l in layers)
        lines = [f"quantops: {len(self.graphs)} graph(s), {len(layers)} linear layer(s): {rewritten} on quantops kernels, "
                 f"{len(layers) - rewritten} not" + (f"  [{self.settings}]" if self.settings else "")]
        for g in self.graphs:
            lines.append(f"graph {g.index} on {g.platform}:")
            if not g.layers:
                lines.append("  (no linear layers)")
                continue
            rows = [("layer", "scheme", "N x K", "dtype", "kernel")]
            for l in g.layers:
                nk = f"{l.n}x{l.k}" if l.n is not None else "?"
                rows.append((l.path, l.scheme or "-", nk, _fmt_dtype(l.dtype),
                             l.kernel if l.status == "rewritten" else f"{l.status}: {l.reason}"))
            widths = [max(len(r[i]) for r in rows) for i in range(4)]
            shown: dict[tuple, str] = {}  # a rejection list already printed -> the layer it was printed for
            for r, l in zip(rows, [None] + g.layers):
                lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
                if l is None:
                    continue
                for note in l.notes:
                    lines.append(f"      note: {note}")
                if l.selection is not None and l.selection.rejected:
                    rejected = tuple(l.selection.rejected)
                    if rejected in shown:
                        lines.append(f"      rejected: as for {shown[rejected]}")
                        continue
                    shown[rejected] = l.path
                    for name, why in rejected:
                        lines.append(f"      rejected {name}: {why}")
            if g.derived_bytes:
                lines.append(f"  prepared/quantized tensors made at compile time: {g.derived_bytes / 2**20:.2f} MiB")
        return "\n".join(lines)

    def __str__(self) -> str:
        parts = [self.table()]
        for g in self.graphs:
            if g.graph is not None:
                parts.append(f"\ngraph {g.index}, rewritten (as handed to Inductor):\n{g.graph.rstrip()}")
        return "\n".join(parts) + "\n"

    def __repr__(self) -> str:
        return f"<quantops.Explanation: {len(self.graphs)} graph(s), {len(self.layers)} layer(s)>"


def explain(model, *example_inputs, **backend_options) -> Explanation:
    """Compile `model` on `example_inputs` with a recording quantops backend (options as quantops.backend's)
    and return the Explanation. The model runs once, eagerly on the rewritten graph (or, for a simulated
    `capability=`, on the original one)."""
    if isinstance(model, torch._dynamo.eval_frame.OptimizedModule):
        model = model._orig_mod
    backend_options.setdefault("compiler", "eager")
    configured = backend(**backend_options)
    rec = QuantopsBackend(configured.settings, mode=configured.mode, options=configured.options,
                          record_graphs=True, explain_only=True)
    limits = {}
    for new, old in (("recompile_limit", "cache_size_limit"), ("accumulated_recompile_limit", "accumulated_cache_size_limit")):
        name = new if hasattr(torch._dynamo.config, new) else old
        if hasattr(torch._dynamo.config, name):
            limits[name] = max(getattr(torch._dynamo.config, name), 1024)
    with torch.no_grad(), torch._dynamo.config.patch(**limits):
        torch.compile(model, backend=rec)(*example_inputs)
    if not rec.graphs:
        raise RuntimeError("quantops.explain: Dynamo compiled no graph (was the model already traced with this "
                           "backend, or does it run no torch code?)")
    return Explanation(rec.graphs, configured.settings.describe())
