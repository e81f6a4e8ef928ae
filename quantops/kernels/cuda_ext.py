"""The CUDA C++ kernels of csrc/, built on first import on a CUDA machine.

`torch.utils.cpp_extension.load` compiles csrc/ once per version of its files (ninja, cached under
$TORCH_EXTENSIONS_DIR/quantops_cuda_<hash>, by default in ~/.cache/torch_extensions) for sm_80 and sm_90a. Importing this module IS the
build: where it cannot happen (no GPU, no nvcc, a compile error) the import raises ImportError("not built:
<reason>"), which `needs_library("quantops_cuda")` turns into the registry's rejection reason. The torch.library
ops (with their fake impls) live beside each kernel's class (cuda_wna16.py) and call `extension` lazily, so the
package imports and its CPU tests pass without a compiler.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import torch

CSRC = Path(__file__).resolve().parents[2] / "csrc"
SOURCES = (
    "bindings.cpp",
    "weight_only_gemv_int.cu",
    "weight_only_gemv_fp.cu",
    "weight_only_gemm_int.cu",
    "weight_only_gemm_fp.cu",
    "weight_only_wgmma_int.cu",
    "weight_only_wgmma_fp.cu",
)
# sm_80 for Ampere; sm_90a for Hopper (the 'a' target allows Hopper-only instructions; explicit -gencode
# flags also stop torch from adding its own arch list)
NVCC_FLAGS = (
    "-O3",
    "-lineinfo",
    "-gencode=arch=compute_80,code=sm_80",
    "-gencode=arch=compute_90a,code=sm_90a",
)


def unavailable_reason() -> str | None:
    """Why the extension cannot be built here, or None if a build can be tried."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    if torch.version.cuda is None:
        return "torch was built without CUDA"
    from torch.utils.cpp_extension import CUDA_HOME

    nvcc = Path(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else None
    if not (nvcc and nvcc.exists()) and shutil.which("nvcc") is None:
        return "nvcc not found (set CUDA_HOME)"
    missing = [s for s in SOURCES if not (CSRC / s).exists()]
    if missing:
        return f"sources missing under {CSRC}: {', '.join(missing)}"
    return None


def source_hash() -> str:
    """Hash of every file under csrc/ (headers included), the flags and the torch/CUDA versions: the build
    directory and module name carry it, so a changed header can never link against stale objects."""
    h = hashlib.sha256()
    for path in sorted(CSRC.iterdir()):
        if path.is_file():
            h.update(path.name.encode())
            h.update(path.read_bytes())
    h.update(" ".join(NVCC_FLAGS).encode())
    h.update(f"{torch.__version__} {torch.version.cuda}".encode())
    return h.hexdigest()[:16]


def load_sources(csrc: Path, name: str, build_dir: str):
    """Build (or load the cached build of) the extension from the csrc/ tree `csrc` as module `name`: this package's
    sources and flags (benchmarks/csrc_ab.py builds another tree with it, to compare)."""
    from torch.utils.cpp_extension import load

    os.makedirs(build_dir, exist_ok=True)
    return load(
        name=name,
        build_directory=build_dir,
        sources=[str(csrc / s) for s in SOURCES],
        extra_cflags=["-O3"],
        extra_cuda_cflags=list(NVCC_FLAGS),
        extra_include_paths=[str(csrc)],
        verbose=os.environ.get("QUANTOPS_VERBOSE_BUILD", "0") not in ("", "0"),
    )


def _build():
    reason = unavailable_reason()
    if reason is not None:
        raise ImportError(f"not built: {reason}")
    name = f"quantops_cuda_{source_hash()}"
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "torch_extensions")
    try:
        return load_sources(CSRC, name, os.path.join(root, name))
    except Exception as e:  # compiler missing pieces, a compile error, an unwritable cache: all are reasons
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ImportError(f"not built: {type(e).__name__}: {first}") from e


extension = _build()


def stream_handle(x: torch.Tensor) -> int:
    """torch's current stream on x's device (the capture stream under CUDA graphs), for the C++ launcher."""
    return torch.cuda.current_stream(x.device).cuda_stream
