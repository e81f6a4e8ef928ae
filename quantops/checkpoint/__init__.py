"""Real checkpoints: load compressed-tensors, ModelOpt, GPTQ and AWQ models; save compressed-tensors.

    model = quantops.load_pretrained("path/to/model")          # a transformers model with QuantizedLinear layers
    model = torch.compile(model, backend="quantops")
    quantops.save_pretrained(model, "path/to/out")             # compressed-tensors, readable by vLLM/transformers

transformers (the `hf` extra) is imported only when a model is loaded.
"""

from .errors import CheckpointError
from .loader import load_pretrained
from .saver import quantization_config, save_pretrained

__all__ = ["load_pretrained", "save_pretrained", "quantization_config", "CheckpointError"]
