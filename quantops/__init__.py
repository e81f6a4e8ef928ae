"""quantops: quantized linear layers that run on the fastest correct kernel, chosen when torch.compile compiles.

    model = quantops.quantize_model(model, "fp8-dynamic")
    model = torch.compile(model, backend="quantops")
    print(quantops.explain(model, example_input))
"""

from __future__ import annotations

from .checkpoint import load_pretrained, save_pretrained
from .formats import dequantize_weight, quantize_weight
from .kernels.base import LinearConfig, LinearKernel
from .kernels.registry import Selection, register_kernel, select_kernel, unregister_kernel
from .modules import QuantizedLinear, calibrate, load_quantized_state_dict, quantization_report, quantize_model
from .schemes import PRESETS, QuantScheme, get_scheme, scheme_names

__version__ = "0.1.0"

__all__ = [
    "QuantScheme",
    "get_scheme",
    "scheme_names",
    "PRESETS",
    "quantize_weight",
    "dequantize_weight",
    "LinearKernel",
    "LinearConfig",
    "Selection",
    "select_kernel",
    "register_kernel",
    "unregister_kernel",
    "QuantizedLinear",
    "quantize_model",
    "load_quantized_state_dict",
    "quantization_report",
    "calibrate",
    "backend",
    "explain",
    "load_pretrained",
    "save_pretrained",
]


def backend(*args, **kwargs):
    """A configured torch.compile backend: quantops.backend(scheme=None, linear_backend=None, disabled_kernels=(),
    **inductor_options). See quantops.lowering."""
    from .lowering import backend as _backend

    return _backend(*args, **kwargs)


def explain(model, *example_inputs, **backend_options):
    """Per-layer kernel choices (and every rejected candidate with its reason) plus the rewritten graph."""
    from .lowering import explain as _explain

    return _explain(model, *example_inputs, **backend_options)
