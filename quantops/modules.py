"""QuantizedLinear and quantize_model.

A QuantizedLinear holds its weights in the scheme's canonical layout, under compressed-tensors names, so its
state_dict() keys are a checkpoint's keys. It states its scheme; which kernel runs it is decided by the
registry: in eager mode per input device (cached), under torch.compile by the quantops backend at graph-compile
time (the forward then emits the generic `quantops::quantized_linear` op for the lowering to rewrite).
"""

from __future__ import annotations

import fnmatch
import os
import re
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from . import formats
from .kernels.registry import ENV_BACKEND, ENV_BATCH_INVARIANT, ENV_DISABLED, _names, select_kernel
from .schemes import QuantScheme, get_scheme


class QuantizedLinear(nn.Module):
    """y = x W^T + b with W stored quantized. `dtype` is the activation/output dtype (the float model's)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        scheme: "str | QuantScheme",
        bias: bool = False,
        dtype: torch.dtype = torch.bfloat16,
        device=None,
        name: str | None = None,
    ):
        super().__init__()
        self.scheme = get_scheme(scheme)
        why = formats.representable(self.scheme, out_features, in_features)
        if why:
            raise ValueError(f"{name or 'QuantizedLinear'}: {why}")
        self.in_features, self.out_features = in_features, out_features
        self.dtype = dtype
        self.layer_name = name or f"QuantizedLinear({in_features}->{out_features})"
        self.linear_backend: str | None = None
        self.disabled_kernels: tuple[str, ...] = ()
        for tname, (shape, tdtype) in formats.tensor_specs(self.scheme, out_features, in_features).items():
            tdtype = dtype if tdtype == "float" else tdtype
            self.register_parameter(tname, nn.Parameter(torch.zeros(shape, dtype=tdtype, device=device), requires_grad=False))
        if "weight_shape" in self._parameters:
            self.weight_shape.data.copy_(torch.tensor([out_features, in_features]))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device), requires_grad=False) if bias else None
        self._validated = None  # stamp of the tensors last validated
        self._cache: dict = {}
        self.register_load_state_dict_post_hook(_after_load)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], scheme, *, bias=None, dtype=None, name=None):
        scheme = get_scheme(scheme)
        n, k = formats.infer_shape(tensors, scheme)
        if dtype is None:
            dtype = bias.dtype if bias is not None else next(
                (t.dtype for nm, t in tensors.items() if nm == "weight_scale" and t.dtype.is_floating_point
                 and t.dtype != torch.float8_e4m3fn), torch.bfloat16)
        mod = cls(k, n, scheme, bias=bias is not None, dtype=dtype, device="meta", name=name)
        formats.validate_tensors(tensors, scheme, n, k, where=mod.layer_name)
        for tname, t in tensors.items():
            mod._parameters[tname] = nn.Parameter(t, requires_grad=False)
        if bias is not None:
            mod.bias = nn.Parameter(bias.to(dtype), requires_grad=False)
        mod._validated = mod._stamp()
        return mod

    @classmethod
    def from_float(cls, linear: nn.Linear, scheme, *, input_amax=None, g_idx=None, name=None, device=None):
        scheme = get_scheme(scheme)
        w = linear.weight.detach()
        if device is not None:
            w = w.to(device)
        tensors = formats.quantize_weight(w, scheme, input_amax=input_amax, g_idx=g_idx)
        bias = None if linear.bias is None else linear.bias.detach().to(w.device)
        return cls.from_tensors(tensors, scheme, bias=bias, dtype=w.dtype, name=name)

    # -- views ----------------------------------------------------------------------------------
    def quant_tensors(self) -> dict[str, torch.Tensor]:
        """The canonical tensors, by compressed-tensors name, in checkpoint order."""
        return {name: self._parameters[name] for name in formats.tensor_specs(self.scheme, self.out_features, self.in_features)}

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The float weight [N, K] these tensors represent (computed in fp32, returned in `dtype`)."""
        return formats.dequantize_weight(
            {k: v.detach() for k, v in self.quant_tensors().items()}, self.scheme, dtype or self.dtype,
            shape=(self.out_features, self.in_features))

    @property
    def device(self) -> torch.device:
        return next(iter(self.quant_tensors().values())).device

    def validate(self):
        """Check every tensor's name, shape, dtype and values (NaN/Inf scales); raises naming this layer."""
        formats.validate_tensors(self.quant_tensors(), self.scheme, self.out_features, self.in_features, where=self.layer_name)
        if self.bias is not None and self.bias.shape != (self.out_features,):
            raise ValueError(f"{self.layer_name}: bias has shape {tuple(self.bias.shape)}, expected ({self.out_features},)")
        self._validated = self._stamp()

    def _stamp(self):
        """Identity and version of the quantized tensors: any change (load, in-place edit, .to) changes it.
        (Inference-mode tensors have no version counter: their identity alone.)"""
        return tuple((t.data_ptr(), -1 if t.is_inference() else t._version, t.dtype)
                     for t in self.quant_tensors().values())

    def selection(self, device=None, m: int | None = None):
        """The registry's choice for this layer on `device` (default: where its weights are)."""
        return select_kernel(
            self.scheme, N=self.out_features, K=self.in_features, dtype=self.dtype,
            device=device if device is not None else self.device, m=m, has_bias=self.bias is not None,
            linear_backend=self.linear_backend, disabled_kernels=self.disabled_kernels)

    # -- forward --------------------------------------------------------------------------------
    def check_input(self, x: torch.Tensor):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{self.layer_name}: expected a tensor, got {type(x).__name__}")
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"{self.layer_name}: input last dimension must be {self.in_features}, got shape {tuple(x.shape)}")
        if x.dtype != self.dtype:
            raise ValueError(f"{self.layer_name}: input dtype must be {self.dtype} (the layer's dtype), got {x.dtype}")
        if x.device != self.device:
            raise ValueError(f"{self.layer_name}: input is on {x.device}, weights are on {self.device}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        if torch.compiler.is_compiling():
            tensors = list(self.quant_tensors().values())
            return torch.ops.quantops.quantized_linear(
                x, tensors, self.bias, self.scheme.key(), self.out_features, self.in_features)
        stamp = self._stamp()
        if self._validated != stamp:  # first call, or the tensors changed since: check them before any kernel
            self.validate()
        kernel, prepared = self._kernel_for(x, stamp)
        return kernel.apply(x, prepared, self.bias)

    def _kernel_for(self, x, stamp=None):
        """(kernel, prepared tensors) for this input: selected and prepared once, then cached until the tensors,
        the device/dtype or the overrides change."""
        tensors = self.quant_tensors()
        stamp = self._stamp() if stamp is None else stamp
        # the environment overrides are part of the key: changing them changes the choice, as in select_kernel
        env = tuple(os.environ.get(v) for v in (ENV_BACKEND, ENV_DISABLED, ENV_BATCH_INVARIANT))
        key = (x.device, x.dtype, self.linear_backend, self.disabled_kernels, env)
        entry = self._cache.get(key)
        if entry is None or entry[0] != stamp:
            entry = (stamp, self.selection(x.device), {})
            self._cache[key] = entry
        _, sel, prepared_by_kernel = entry
        cls = sel.for_m(x.numel() // self.in_features)
        if cls not in prepared_by_kernel:
            kernel = cls(sel.config)
            with torch.no_grad():
                prepared_by_kernel[cls] = (kernel, kernel.prepare({k: v.detach() for k, v in tensors.items()}))
        return prepared_by_kernel[cls]

    def kernel_name(self) -> str:
        try:
            return self.selection().plan_str()
        except Exception as e:  # repr must not raise
            return f"none ({e})"

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"scheme={self.scheme.key()}, dtype={str(self.dtype).replace('torch.', '')}, kernel={self.kernel_name()}")

    # load_state_dict: check the incoming tensors as a set before anything is copied (PyTorch would raise a
    # RuntimeError without the layer's expectation for a wrong shape, and silently cast a wrong dtype), and keep
    # a checkpoint's float scale dtype (copying fp32 scales into bf16 parameters would round them).
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        specs = formats.tensor_specs(self.scheme, self.out_features, self.in_features)
        incoming = {name: state_dict[prefix + name] for name in specs if prefix + name in state_dict}
        where = f"{self.layer_name} (loading {prefix or 'state_dict'})"
        if len(incoming) == len(specs):
            formats.validate_tensors(incoming, self.scheme, self.out_features, self.in_features, where=where)
        else:  # a partial load (strict=False): check what is there, one tensor at a time
            for name, t in incoming.items():
                shape, dtype = specs[name]
                ok = t.dtype in (torch.bfloat16, torch.float16, torch.float32) if dtype == "float" else t.dtype == dtype
                if tuple(t.shape) != tuple(shape) or not ok:
                    raise ValueError(f"{where}: {name} is {tuple(t.shape)} {t.dtype}, expected {tuple(shape)} "
                                     f"{'bf16/fp16/fp32' if dtype == 'float' else dtype}")
        for name, t in incoming.items():
            p = self._parameters[name]
            if specs[name][1] == "float" and p.dtype != t.dtype:
                p.data = torch.empty_like(t, device=p.device)  # adopt the checkpoint's dtype; copied below
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    # Moving the module moves its tensors; a dtype change changes the activation dtype (and the bias) but
    # never the quantized tensors, which must keep their checkpoint dtypes.
    def _apply(self, fn, recurse=True):
        probe = fn(torch.zeros(1, dtype=self.dtype, device=self.device))
        for name, p in self._parameters.items():
            if p is None:
                continue
            new = fn(p.data) if name == "bias" else p.data.to(probe.device)
            if torch._has_compatible_shallow_copy_type(p.data, new):
                p.data = new
            else:  # e.g. to the meta device: a new Parameter, as nn.Module._apply makes
                self._parameters[name] = nn.Parameter(new, requires_grad=False)
        self.dtype = probe.dtype
        self._cache.clear()
        return self


def _after_load(module: QuantizedLinear, incompatible_keys):
    module._cache.clear()
    module.validate()


# -- the generic op that torch.compile sees ---------------------------------------------------------


@torch.library.custom_op("quantops::quantized_linear", mutates_args=())
def quantized_linear(
    x: torch.Tensor, tensors: list[torch.Tensor], bias: torch.Tensor | None, scheme: str, n: int, k: int
) -> torch.Tensor:
    """Scheme-level linear: the quantops backend rewrites it into the chosen kernel. Run as is (another
    backend, or no lowering), it selects and prepares on every call, which is correct but slow."""
    s = QuantScheme.from_key(scheme)
    sel = select_kernel(s, N=n, K=k, dtype=x.dtype, device=x.device, m=x.numel() // k if k else 0, has_bias=bias is not None)
    kernel = sel.kernel(sel.config)
    names = list(formats.tensor_specs(s, n, k))
    return kernel.apply(x, kernel.prepare(dict(zip(names, tensors))), bias)


@quantized_linear.register_fake
def _(x, tensors, bias, scheme, n, k):
    return x.new_empty(x.shape[:-1] + (n,))


# -- quantize_model ---------------------------------------------------------------------------------


@dataclass
class QuantizationReport:
    scheme: QuantScheme
    quantized: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # module path -> reason it stays float

    def __str__(self):
        lines = [f"quantops: {len(self.quantized)} linear layers quantized to {self.scheme.key()}, {len(self.skipped)} left in float"]
        lines += [f"  {path}: {why}" for path, why in self.skipped.items()]
        return "\n".join(lines)


def _matches(path: str, patterns) -> bool:
    for p in patterns:
        if p.startswith("re:"):
            if re.fullmatch(p[3:], path):
                return True
        elif path == p or fnmatch.fnmatchcase(path, p) or path.endswith("." + p):
            return True
    return False


def calibrate(model: nn.Module, batches, names=None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Run `batches` (tensors, tuples of args or dicts of kwargs) through the model and record the (min, max)
    of every nn.Linear's input."""
    stats: dict[str, list[torch.Tensor]] = {}
    hooks = []
    for path, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and (names is None or path in names):
            def hook(m, args, path=path):
                x = args[0].detach().float()
                lo, hi = x.amin(), x.amax()
                old = stats.get(path)
                stats[path] = [lo, hi] if old is None else [torch.minimum(old[0], lo), torch.maximum(old[1], hi)]
            hooks.append(mod.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            for b in batches:
                model(**b) if isinstance(b, dict) else model(*b) if isinstance(b, (tuple, list)) else model(b)
    finally:
        for h in hooks:
            h.remove()
    return {k: (v[0], v[1]) for k, v in stats.items()}


def quantize_model(
    model: nn.Module,
    scheme: "str | QuantScheme",
    *,
    exclude=(),
    device=None,
    calibration=None,
    linear_backend: str | None = None,
    disabled_kernels=(),
) -> nn.Module:
    """Replace every nn.Linear by a QuantizedLinear in place and return the model.

    exclude: module paths, globs ("*.lm_head") or "re:" regexes to leave in float. Layers the scheme cannot
    represent (K not a multiple of the group) stay float too; the reasons are in `quantization_report(model)`.
    calibration: batches for schemes with static activation scales (FP8, NVFP4): their inputs' amax sets
    input_scale / input_global_scale. linear_backend / disabled_kernels: eager-mode kernel overrides.
    """
    scheme = get_scheme(scheme)
    if isinstance(model, nn.Linear) and not isinstance(model, QuantizedLinear):  # a bare layer cannot change in place
        input_amax = None
        if (not scheme.act_dynamic) or scheme.act == "nvfp4":
            if calibration is None:
                raise ValueError(f"{scheme.name} has static activation scales: pass calibration=[example inputs]")
            lo, hi = calibrate(model, calibration)[""]
            input_amax = (lo, hi) if (scheme.act == "int8" and not scheme.act_symmetric) else torch.maximum(-lo, hi)
        return QuantizedLinear.from_float(model, scheme, input_amax=input_amax, device=device)
    report = QuantizationReport(scheme)
    targets = []
    for path, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and not isinstance(mod, QuantizedLinear):
            if _matches(path, exclude):
                report.skipped[path] = "excluded"
                continue
            why = formats.representable(scheme, mod.out_features, mod.in_features)
            if why:
                report.skipped[path] = why
                continue
            if not mod.weight.is_floating_point() or mod.weight.dtype == torch.float8_e4m3fn:
                report.skipped[path] = f"weight dtype {mod.weight.dtype} is not a float model dtype"
                continue
            targets.append((path, mod))
    needs_amax = (not scheme.act_dynamic) or scheme.act == "nvfp4"
    amax = {}
    if needs_amax and targets:
        if calibration is None:
            raise ValueError(f"{scheme.name} has static activation scales: pass calibration=[example inputs]")
        amax = calibrate(model, calibration, {p for p, _ in targets})
    for path, mod in targets:
        lohi = amax.get(path)
        input_amax = None
        if lohi is not None:
            input_amax = lohi if (scheme.act == "int8" and not scheme.act_symmetric) else torch.maximum(-lohi[0], lohi[1])
        elif needs_amax:
            report.skipped[path] = "not reached by the calibration data"
            continue
        q = QuantizedLinear.from_float(mod, scheme, input_amax=input_amax, name=path, device=device)
        q.linear_backend, q.disabled_kernels = linear_backend, tuple(sorted(_names(disabled_kernels)))
        _set_submodule(model, path, q)
        report.quantized.append(path)
    model._quantops_report = report
    if report.skipped:
        warnings.warn(str(report), stacklevel=2)
    return model


def load_quantized_state_dict(model: nn.Module, state_dict, scheme: "str | QuantScheme", *, strict: bool = True,
                              assign: bool = False) -> nn.Module:
    """Load a state_dict saved from a quantized model (state_dict() or safetensors) into a float model of the
    same architecture, in place; returns the model.

    Every nn.Linear whose scheme tensors are in `state_dict` becomes a QuantizedLinear built from them
    (validated, naming the layer); the other layers keep their float form and are loaded as usual. The
    structure therefore comes from the checkpoint itself: no quantization, calibration or `exclude` list has
    to be repeated. The float model may live on the meta device (then pass assign=True).
    """
    scheme = get_scheme(scheme)
    report = QuantizationReport(scheme)
    for path, mod in list(model.named_modules()):
        if not isinstance(mod, nn.Linear) or isinstance(mod, QuantizedLinear):
            continue
        prefix = f"{path}." if path else ""
        names = formats.tensor_specs(scheme, mod.out_features, mod.in_features) if not formats.representable(
            scheme, mod.out_features, mod.in_features) else {}
        # "weight" is also a float layer's key (FP8/INT8/MXFP8 keep that name): judge by the other tensors
        if not names or not any(prefix + name in state_dict for name in names if name != "weight"):
            report.skipped[path] = "float in the checkpoint"
            continue
        missing = [prefix + name for name in names if prefix + name not in state_dict]
        if missing:
            raise ValueError(f"{path}: the checkpoint has some {scheme.name} tensors of this layer but not {', '.join(missing)}")
        tensors = {name: state_dict[prefix + name] for name in names}
        bias = state_dict.get(prefix + "bias") if mod.bias is not None else None
        if path == "":
            raise ValueError("load_quantized_state_dict needs a model that contains nn.Linear layers, not a bare "
                             "nn.Linear (use QuantizedLinear.from_tensors)")
        q = QuantizedLinear.from_tensors(tensors, scheme, bias=bias, dtype=mod.weight.dtype, name=path)
        _set_submodule(model, path, q)
        report.quantized.append(path)
    # the quantized layers' tensors are loaded again (a no-op copy) so that strict checks cover every key
    model.load_state_dict(state_dict, strict=strict, assign=assign)
    model._quantops_report = report
    return model


def quantization_report(model: nn.Module) -> QuantizationReport | None:
    return getattr(model, "_quantops_report", None)


def _set_submodule(root: nn.Module, path: str, new: nn.Module):
    if path == "":
        raise ValueError("quantize_model needs a model that contains nn.Linear layers, not a bare nn.Linear")
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, new)
