"""Ranked kernel candidates per (scheme family, platform): the first that can run a layer wins.

Entries are "module:Class" under quantops.kernels, imported only when a selection needs them (a missing
optional library is then a rejection reason, not an ImportError). An entry may carry "@m<=T": it is a
candidate only for batches of at most T rows, and the registry builds an M plan (decode vs prefill) from it.
Every list ends with the family's emulation kernel: the numerical reference, and the last resort.

Why this order (numbers from `quantops bench` on the device named) is written beside each list.
"""

from __future__ import annotations

EMULATION = "emulation:EmulationKernel"

RANKING: dict[str, dict[str, list[str]]] = {
    # FP8 W8A8 (per-tensor, per-token x per-channel, 128x128 block)
    "fp8": {
        "cuda": [
            "cublas_fp8:Fp8ScaledMMKernel",
            EMULATION,
        ],
        "cpu": [EMULATION],
    },
    # INT8 W8A8
    "int8": {
        "cuda": [EMULATION],
        "cpu": ["cpu_int8:Int8IntMMCpuKernel", EMULATION],
    },
    # INT4 / INT8 weight-only (W4A16, W4A16_ASYM, W8A16)
    "wna16": {
        "cuda": [EMULATION],
        "cpu": ["cpu_wna16:Int8WeightOnlyCpuKernel", "cpu_wna16:Int4WeightOnlyCpuKernel", EMULATION],
    },
    "w4afp8": {"cuda": [EMULATION], "cpu": [EMULATION]},
    "nvfp4": {"cuda": [EMULATION], "cpu": [EMULATION]},
    "nvfp4a16": {"cuda": [EMULATION], "cpu": [EMULATION]},
    "mxfp4": {"cuda": [EMULATION], "cpu": [EMULATION]},
    "mxfp4a16": {"cuda": [EMULATION], "cpu": [EMULATION]},
    "mxfp8": {"cuda": [EMULATION], "cpu": [EMULATION]},
    "mxfp8a16": {"cuda": [EMULATION], "cpu": [EMULATION]},
}
