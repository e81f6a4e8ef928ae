"""Fresh processes: backend="quantops" through the entry point, and the FX graph cache honouring every setting.

Each process compiles the same small model with the FX graph cache on (one cache directory for all), then
reports which kernel ops really ran and the cache's hits and misses. Changing an override (a disabled kernel,
through the environment) or the backend's scheme must change what runs; the same settings again must hit the
cache and run the same kernels.
"""

from __future__ import annotations

import json
import subprocess
import textwrap

from test_lowering_support import PYTHON, subprocess_env

SCRIPT = textwrap.dedent('''
    import json, os, sys
    import torch
    assert "quantops" not in sys.modules
    torch._dynamo.lookup_backend("quantops")          # the entry point, without importing quantops first
    entry_point_loaded = "quantops.lowering.entry" in sys.modules
    from torch import nn
    import quantops
    from test_lowering_support import CALLS, CountingFp8Kernel, registered
    from torch._dynamo.utils import counters
    torch._inductor.config.fx_graph_cache = True

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = quantops.QuantizedLinear.from_float(nn.Linear(64, 64, bias=False), "FP8_DYNAMIC")
            self.plain = nn.Linear(64, 32, bias=False)
        def forward(self, x):
            return self.plain(torch.relu(self.q(x)))

    torch.manual_seed(0)
    model = Model().to(torch.bfloat16)
    x = torch.randn(4, 64, dtype=torch.bfloat16)
    scheme = sys.argv[1] if len(sys.argv) > 1 else None
    with registered(CountingFp8Kernel), torch.no_grad():
        be = quantops.backend(scheme=scheme) if scheme else "quantops"
        out = torch.compile(model, backend=be)(x)
    print(json.dumps({
        "entry_point": entry_point_loaded,
        "counting_calls": CALLS.get("CountingFp8Kernel", 0),
        "hit": counters["inductor"]["fxgraph_cache_hit"],
        "miss": counters["inductor"]["fxgraph_cache_miss"],
        "aot_hit": counters["aot_autograd"]["autograd_cache_hit"],
        "aot_miss": counters["aot_autograd"]["autograd_cache_miss"],
        "checksum": float(out.float().abs().sum()),
    }))
''')


def _run(tmp_path, *args, **env):
    return subprocess.Popen([PYTHON, "-c", SCRIPT, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=subprocess_env(TORCHINDUCTOR_CACHE_DIR=tmp_path / "inductor", TORCHINDUCTOR_FX_GRAPH_CACHE=1,
                                               TORCHINDUCTOR_AUTOGRAD_CACHE=1, **env))


def _result(p):
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def test_entry_point_and_cache_key_in_fresh_processes(tmp_path):
    first = _result(_run(tmp_path))
    assert first["entry_point"] and first["miss"] >= 1
    assert first["counting_calls"] == 1  # the QuantizedLinear ran on the registered kernel; plain stays float
    same, disabled, scheme = (
        _run(tmp_path),
        _run(tmp_path, QUANTOPS_DISABLED_KERNELS="CountingFp8Kernel"),
        _run(tmp_path, "FP8_DYNAMIC"),
    )
    same, disabled, scheme = _result(same), _result(disabled), _result(scheme)
    # the same settings: served from the cache, same kernels, same numbers
    assert same["hit"] >= 1 and same["miss"] == 0, (first, same)
    assert same["counting_calls"] == 1 and same["checksum"] == first["checksum"]
    # an override changed: recompiled, and the disabled kernel no longer runs
    assert disabled["miss"] >= 1 and disabled["counting_calls"] == 0
    # the backend's scheme changed: the plain linear is quantized too (two layers on the counting kernel)
    assert scheme["miss"] >= 1 and scheme["counting_calls"] == 2
