"""Entry point of the `torch_dynamo_backends` group: `torch.compile(model, backend="quantops")` finds
`quantops_backend` here in a fresh process, without importing quantops first.

Deliberately no @register_backend: registering the same name while the entry point is being loaded fails the
first lookup with "duplicate name" (see the project's COMPILE_NOTES).
"""

from __future__ import annotations


def quantops_backend(gm, example_inputs, **kwargs):
    """The default quantops backend: QuantizedLinear layers on the registry's kernels, then Inductor.
    `mode=` and `options=` given to torch.compile are honoured."""
    from .backend import QuantopsBackend

    return QuantopsBackend()(gm, example_inputs, **kwargs)
