"""quantops.lowering: the torch.compile backend "quantops" (compile-time kernel selection and FX rewrite).

    torch.compile(model, backend="quantops")                              # QuantizedLinear layers
    torch.compile(model, backend=quantops.backend(scheme="FP8_DYNAMIC"))  # plain linears too
    print(quantops.explain(model, x))                                     # what it chose, and why

Installed as the package quantops.lowering (pyproject maps the top-level lowering/ folder onto it).
"""

from .backend import GraphReport, QuantopsBackend, Settings, backend
from .explain import Explanation, explain
from .rewrite import LayerDecision

__all__ = ["backend", "explain", "QuantopsBackend", "Settings", "Explanation", "GraphReport", "LayerDecision"]
