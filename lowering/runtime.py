"""Binding a compiled graph's derived tensors to the module instance it is called with.

Dynamo does not guard parameters: a graph compiled for one module is reused for every module of the same
structure (all decoder layers of a model compiled layer by layer, or a second model instance), with that
module's parameters as inputs. Tensors made from the weights at compile time (prepare()'s padding and repacks,
plain linears quantized by the backend) therefore cannot be baked into the graph: they are extra inputs, and
this wrapper passes the set that belongs to the weights of the call. It keeps one set per instance, keyed by
the identity of the source tensors and checked against their (data_ptr, _version): weights replaced or
updated in place (load_state_dict, `p.data = ...`, `p.copy_(...)`) are prepared again, never used stale (an
edit through `p.data.mul_(...)` bypasses the version counter, as it does for autograd: avoid it). A set is
dropped when its source tensors are freed. The check costs ~0.25 us per source tensor per call on a slow CPU
(two per layer: ~30 us for 64 layers); `quantops.backend(weight_check=False)` keeps only the identity lookup
(~0.07 us a tensor), for weights that never change after compiling.
"""

from __future__ import annotations

import operator
import weakref

import torch

from .rewrite import Derivation


class InstanceBinder:
    def __init__(self, derivations: list[Derivation], example_inputs, extra_inputs, *, check_versions: bool = True):
        self.derivations = derivations
        self.positions = [p for d in derivations for p in d.sources]
        self._sources = (operator.itemgetter(*self.positions) if len(self.positions) > 1
                         else (lambda args, i=self.positions[0]: (args[i],)))
        self.check_versions = check_versions
        self.entries: dict[tuple, tuple[tuple, list[torch.Tensor]]] = {}
        self.prepare_calls = 0  # derivations run at call time (another instance, or updated weights)
        self._add(self._sources(example_inputs), list(extra_inputs))

    def _stamp(self, srcs):
        if not self.check_versions:
            return ()
        return tuple(map(_DATA_PTR, srcs)), tuple(map(_VERSION, srcs))  # map over C getters: ~0.25 us a tensor

    def _add(self, srcs, extra):
        key = tuple(map(id, srcs))
        self.entries[key] = (self._stamp(srcs), extra)
        ref = weakref.ref(self)
        for t in srcs:
            weakref.finalize(t, _evict, ref, key)
        return extra

    def extra(self, args) -> list[torch.Tensor]:
        srcs = self._sources(args)
        key = tuple(map(id, srcs))
        entry = self.entries.get(key)
        if entry is not None and (not self.check_versions or entry[0] == self._stamp(srcs)):
            return entry[1]
        return self._add(srcs, self._derive(srcs))

    def _derive(self, srcs) -> list[torch.Tensor]:
        out, i = [], 0
        with torch.no_grad():
            for d in self.derivations:
                made = d.fn(srcs[i:i + len(d.sources)])
                i += len(d.sources)
                got = [(tuple(t.shape), tuple(t.stride()), t.dtype) for t in made]
                if got != d.specs:
                    raise ValueError(
                        f"{d.path}: the compiled graph was built for prepared tensors {d.specs}, but this module's "
                        f"weights give {got}; compile this module separately (torch._dynamo.reset())")
                out.extend(made)
        self.prepare_calls += 1
        return out


_DATA_PTR = torch.Tensor.data_ptr
_VERSION = operator.attrgetter("_version")


def _evict(ref, key):
    binder = ref()
    if binder is not None:
        binder.entries.pop(key, None)


class BoundCompiledGraph:
    """compiled(*args, *derived tensors of args' weights)."""

    def __init__(self, compiled, binder: InstanceBinder):
        self.compiled = compiled
        self.binder = binder

    def __call__(self, *args):
        return self.compiled(*args, *self.binder.extra(args))
