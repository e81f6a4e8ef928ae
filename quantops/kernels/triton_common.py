"""What the Triton GEMMs (FP8, INT8, weight-only) share: the interpreter switch, the SM count their split-K
rules fill, and the grouped order of output tiles."""

from __future__ import annotations

import functools
import os

import torch

try:  # Triton is optional (absent on some platforms): its absence is a reason from is_supported
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None


def interpreting() -> bool:
    """TRITON_INTERPRET=1: kernels run on CPU tensors (the CPU tests), with a nominal machine of 4 SMs."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def launch_sms(t: torch.Tensor) -> int:
    """SMs that the split-K rules of the launchers aim to fill for tensors on t's device."""
    return 4 if interpreting() or not t.is_cuda else sm_count(t.device.index or 0)


if triton is not None:

    @triton.jit
    def grouped_tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
        """(pid_m, pid_n) of program `pid`: GROUP_M row tiles in a row take the same weight tiles, which are then
        re-read from L2 rather than from HBM."""
        num_pid_m = tl.cdiv(M, BLOCK_M)
        num_pid_n = tl.cdiv(N, BLOCK_N)
        in_group = GROUP_M * num_pid_n
        first_m = (pid // in_group) * GROUP_M
        rows = tl.minimum(num_pid_m - first_m, GROUP_M)
        return first_m + (pid % in_group) % rows, (pid % in_group) // rows
