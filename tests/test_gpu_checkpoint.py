"""Real checkpoints on the GPU machine (pytest -m gpu tests/test_gpu_checkpoint.py): a W4A16 and an NVFP4
compressed-tensors checkpoint of a small Llama (made by compressed-tensors itself, on the CPU) load onto the
GPU, every quantized layer is rewritten onto a GPU kernel (none falls back to emulation), and the compiled
model's logits match a reference:
- where the chosen kernels quantize activations (NVFP4 W4A4 on sm100+), the same model run eagerly on the
  emulation kernels (the numerical reference of every kernel);
- where they do not (W4A16; NVFP4 on Hopper, which runs NVFP4 weight-only with bf16 activations), the model
  with each layer replaced by an nn.Linear holding its dequantized weight.
Tolerance: cosine similarity >= 0.999 and max |diff| <= 5% of max |logits| (bf16 hidden states; Inductor
fuses differently than eager); with FP4-quantized activations 0.95 and 50% (see _close). Then save_pretrained
from the GPU model reloads identically.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("transformers")
pytest.importorskip("compressed_tensors")

from test_checkpoint_helpers import input_ids, make_ct_checkpoint  # noqa: E402

import quantops  # noqa: E402
from quantops import QuantizedLinear, get_scheme  # noqa: E402
from quantops.kernels.weight_only_layout import WEIGHT_ONLY_FAMILIES  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.filterwarnings("ignore::UserWarning")]


def _dense_copy(path):
    """The checkpoint's model with every QuantizedLinear replaced by nn.Linear(its dequantized weight)."""
    model = quantops.load_pretrained(path, device="cuda")
    for name, m in list(model.named_modules()):
        if isinstance(m, QuantizedLinear):
            lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device="cuda", dtype=m.dtype)
            lin.weight.data = m.dequantize()
            if m.bias is not None:
                lin.bias.data = m.bias.data.clone()
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, lin)
    return model


def _close(out, ref, what, fp4_activations=False):
    """FP4-quantized activations: coarse steps, so bf16 rounding differences between the fused compiled graph
    and the reference flip some of them; the logits stay correlated (as in test_checkpoint on the CPU)."""
    tol, min_cos = (0.5, 0.95) if fp4_activations else (0.05, 0.999)
    out, ref = out.float(), ref.float()
    err = (out - ref).abs().max().item()
    cos = torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0).item()
    assert err <= tol * ref.abs().max().item() and cos >= min_cos, f"{what}: max diff {err:.4g}, cosine {cos:.6f}"


@pytest.mark.parametrize("preset", ["W4A16", "NVFP4"])
def test_checkpoint_compiled_on_gpu_kernels(tmp_path, preset):
    make_ct_checkpoint(tmp_path / "ckpt", preset, hidden=256, intermediate=512)
    model = quantops.load_pretrained(tmp_path / "ckpt", device="cuda")
    assert all(t.device.type == "cuda" for t in model.state_dict().values())
    ids = input_ids().cuda()

    explanation = quantops.explain(model, ids)
    quantized = [l for l in explanation.layers if l.kind == "quantized"]
    assert len(quantized) == 14, explanation.table()
    weight_only = True
    for l in quantized:
        assert l.status == "rewritten", explanation.table()
        backends = {cls.backend for _, cls in l.selection.plan}
        assert "emulation" not in backends, f"{l.path}: {l.kernel}\n{explanation.table()}"
        # the weight-only kernels (which Hopper also ranks for NVFP4) keep bf16 activations
        weight_only &= get_scheme(l.scheme).is_weight_only or all(
            cls.families is WEIGHT_ONLY_FAMILIES for _, cls in l.selection.plan)
    print(explanation.table())

    compiled = torch.compile(model, backend="quantops")
    with torch.no_grad():
        out = compiled(ids).logits
        out_again = compiled(input_ids(seed=2, batch=3).cuda()).logits  # another batch size, same graph family
        assert out_again.shape[0] == 3
        eager = model(ids).logits
        _close(out, eager, f"{preset}: compiled vs eager", not weight_only)
        if weight_only:
            ref = _dense_copy(tmp_path / "ckpt")(ids).logits
        else:
            for m in model.modules():
                if isinstance(m, QuantizedLinear):
                    m.linear_backend = "emulation"
            ref = model(ids).logits
        _close(out, ref, f"{preset}: compiled vs reference", not weight_only)

    quantops.save_pretrained(model, tmp_path / "saved")
    again = quantops.load_pretrained(tmp_path / "saved")
    for (k1, a), (k2, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k1 == k2 and torch.equal(a.cpu(), b), k1

