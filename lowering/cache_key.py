"""The lowering's part of Inductor's cache key.

The rewrite runs before Inductor, so the graph Inductor hashes already names the chosen kernels' ops and plans.
What it cannot show is code: a kernel's prepare() or the lowering itself may change while the graph stays the
same. So the backend installs a `CustomGraphPass` as Inductor's `post_grad_custom_post_pass` whose uuid()
hashes the source files of the lowering, the kernels, the formats and the schemes, the source file of every
kernel class a plan uses (third-party kernels included), the torch version and every backend setting; the FX
graph cache (and AOTAutograd's) then misses whenever any of them changes. The pass runs the user's own
post-grad pass, if one was configured, and hashes its uuid too (a user pass without one disables caching, as
Inductor does).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass

_HERE = os.path.dirname(os.path.abspath(__file__))


def _package_files() -> list[str]:
    import quantops

    root = os.path.dirname(os.path.abspath(quantops.__file__))
    files = []
    for folder in (_HERE, os.path.join(root, "kernels"), os.path.join(root, "formats")):
        files += [os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".py")]
    files += [os.path.join(root, f) for f in ("modules.py", "schemes.py", "__init__.py")]
    return sorted(set(files))


@functools.lru_cache(maxsize=None)
def _file_digest(path: str, mtime_ns: int) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def file_digest(path: str) -> str:
    try:
        return _file_digest(path, os.stat(path).st_mtime_ns)
    except OSError:
        return "missing"


def sources_digest(extra_classes=()) -> str:
    h = hashlib.sha256()
    for path in _package_files():
        h.update(os.path.basename(path).encode() + file_digest(path).encode())
    for cls in sorted(set(extra_classes), key=lambda c: f"{c.__module__}.{c.__qualname__}"):
        h.update(f"{cls.__module__}.{cls.__qualname__}".encode())
        try:
            h.update(file_digest(inspect.getsourcefile(cls) or "").encode())
        except (TypeError, OSError):  # defined in __main__ or a notebook: its name alone goes into the key
            pass
    return h.hexdigest()


def cache_key(settings_repr: str, kernel_classes=(), plans=()) -> str:
    h = hashlib.sha256()
    h.update(torch.__version__.encode())
    h.update(sources_digest(kernel_classes).encode())
    h.update(settings_repr.encode())
    for p in plans:
        h.update(p.encode())
    return h.hexdigest()


class QuantopsCachePass(CustomGraphPass):
    """Post-grad pass that carries the lowering's cache key (and runs the user's post-grad pass, if any)."""

    def __init__(self, key: str, inner=None):
        self.key = key
        self.inner = inner

    def _inner_list(self):
        if self.inner is None:
            return []
        return list(self.inner) if isinstance(self.inner, (list, tuple)) else [self.inner]

    def __call__(self, graph: torch.fx.Graph) -> None:
        for p in self._inner_list():
            p(graph)

    def uuid(self):
        parts = [self.key]
        for p in self._inner_list():
            u = p.uuid() if hasattr(p, "uuid") else None
            if u is None:
                return None  # the user's pass cannot be keyed: Inductor bypasses its cache
            parts.append(repr(u))
        return hashlib.sha256("|".join(parts).encode()).hexdigest()
