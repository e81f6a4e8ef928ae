"""torch.library.opcheck for every quantops op that runs on the CPU: the generic `quantized_linear` and
`emulated_mm` for every preset, and the CPU kernels' ops (int8_mm_cpu, int8_weight_only_mm_cpu,
int4_weight_only_mm_cpu), on 2-D and 3-D inputs and M = 0.

The kernel ops are checked with the exact arguments a QuantizedLinear's eager forward passes them (recorded
by a dispatch mode), so what is checked is what runs; they take 2-D [M, K] (a 3-D input reaches them
flattened), while `quantized_linear` takes the 2-D or 3-D input itself. opcheck validates the schema (no
mutation, no aliasing), the fake impl against the real op (shapes, dtypes AND strides) and tracing with dynamic
shapes.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from quantops import QuantizedLinear, get_scheme, scheme_names

N, K = 40, 128  # N not a multiple of 16 (the int4 op pads), K a multiple of every group size
INPUT_SHAPES = [(0, K), (3, K), (2, 3, K)]
STATIC_AMAX = torch.tensor(3.0)

# (preset, changes, dtype): every preset in bf16, plus variants that reach other CPU ops or code paths
CASES = [(name, {}, torch.bfloat16) for name in scheme_names()] + [
    ("W8A8", {"act_dynamic": False, "act_strategy": "tensor", "act_symmetric": False}, torch.float32),
    ("W4A16_ASYM", {"actorder": True, "group_size": 32}, torch.float32),  # fp32 int4 op (M <= 8), act-order
]


class RecordQuantopsOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "quantops":
            self.calls.append((func, args, kwargs or {}))
        return func(*args, **(kwargs or {}))


FP8_DTYPES = {torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz}


@pytest.fixture(autouse=True)
def _fp8_allclose(monkeypatch):
    """opcheck's schema check compares every input before/after the op with torch.allclose, which has no fp8 CPU
    kernel ("mul_cpu_reduced_float" not implemented for 'Float8_e4m3fn'); compare fp8 tensors bit for bit."""
    allclose = torch.allclose

    def fp8_aware_allclose(a, b, *args, **kwargs):
        if a.dtype in FP8_DTYPES:
            return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.uint8), b.view(torch.uint8))
        return allclose(a, b, *args, **kwargs)

    monkeypatch.setattr(torch, "allclose", fp8_aware_allclose)


def make_layer(preset, changes, dtype, bias=True):
    scheme = get_scheme(preset, **changes)
    torch.manual_seed(0)
    lin = nn.Linear(K, N, bias=bias).to(dtype)
    amax = None
    if (not scheme.act_dynamic) or scheme.act == "nvfp4":
        amax = (torch.tensor(-2.0), torch.tensor(3.0)) if (scheme.act == "int8" and not scheme.act_symmetric) else STATIC_AMAX
    return QuantizedLinear.from_float(lin, scheme, input_amax=amax, name=f"{preset}.layer")


def _id(case):
    preset, changes, dtype = case
    return preset + ("{" + ",".join(f"{k}={v}" for k, v in changes.items()) + "}" if changes else "") + f"-{str(dtype)[6:]}"


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_opcheck_every_op_a_layer_runs(case):
    preset, changes, dtype = case
    layer = make_layer(preset, changes, dtype)
    tensors = list(layer.quant_tensors().values())
    seen = set()
    for shape in INPUT_SHAPES:
        x = torch.randn(shape, dtype=dtype) + 0.1
        # the generic op the compiled graph holds (it selects and prepares inside)
        torch.library.opcheck(
            torch.ops.quantops.quantized_linear.default,
            (x, tensors, layer.bias, layer.scheme.key(), N, K),
        )
        # every op the eager forward launches, with its real arguments
        with RecordQuantopsOps() as rec:
            y = layer(x)
        assert y.shape == shape[:-1] + (N,)
        assert rec.calls, "an eager forward launches at least one quantops op"
        for func, args, kwargs in rec.calls:
            # kernel ops see 2-D [M, K]: a 3-D input reaches them as M = 6, the same check as M = 3
            key = (func.name(), args[0].shape[0] == 0)
            if key not in seen:
                seen.add(key)
                torch.library.opcheck(func, args, kwargs)
    ops = {name for name, _ in seen}
    cpu_op = {  # the CPU kernel these layers get (W8A16: K == 128 == its group, so one scale per channel)
        "W8A8": "quantops::int8_mm_cpu",
        "W4A16": "quantops::int4_weight_only_mm_cpu",
        "W4A16_ASYM": "quantops::int4_weight_only_mm_cpu",
        "W8A16": "quantops::int8_weight_only_mm_cpu",
    }.get(preset)
    assert ops == ({cpu_op} if cpu_op else {"quantops::emulated_mm"}), ops
    assert len(seen) == 2 * len(ops)  # every op checked with M = 0 and M > 0


def test_opcheck_batch_invariant_emulation():
    """emulated_mm's row-at-a-time path (batch-invariant mode) passes too."""
    from quantops.formats import quantize_activation
    from quantops.kernels.emulation import weight_tensor_names

    for preset in ("W8A8", "NVFP4", "MXFP8A16"):
        layer = make_layer(preset, {}, torch.bfloat16, bias=False)
        s, tensors = layer.scheme, layer.quant_tensors()
        weights = [tensors[n] for n in weight_tensor_names(s, N, K)]
        for m in (0, 3):
            xq, params = quantize_activation(torch.randn(m, K, dtype=torch.bfloat16), s, K, tensors)
            torch.library.opcheck(
                torch.ops.quantops.emulated_mm.default, (xq, params, weights, s.key(), N, K, torch.bfloat16, True))
