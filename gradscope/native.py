"""gradscope's compiled LSTM step loops (``lstm_kernel.cpp``), built with torch's C++ extension tools on first use.

On the CPU, torch's operations cost more per call than a small LSTM step's arithmetic: the loop of
:class:`~gradscope.kernels.LSTMSequence`, seven calls a step forward and five backward, took 1.3-2x torch.nn's
fused LSTM. The compiled loop takes one matrix product and one pass over the step's elements. It is built once
per machine into torch's extension cache (``TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``),
about 20 s with a C++ compiler and ninja; where it cannot be built, a warning says why and the LSTM runs on
torch's operations, with the same results. ``GRADSCOPE_NATIVE=0`` skips the build.
"""

from __future__ import annotations

import functools
import os
import platform
import warnings
from pathlib import Path
from typing import Any

import torch

__all__ = ["lstm_ops"]

_SOURCE = Path(__file__).with_name("lstm_kernel.cpp")
# no floating-point traps or errno: lets the compiler vectorise the branch-free sigmoid and tanh
_FLAGS = ["-O3", "-fno-trapping-math", "-fno-math-errno"]


def lstm_ops(x: torch.Tensor) -> Any | None:
    """The compiled ops (``torch.ops.gradscope``) for ``x`` in float32 or float64 on the CPU; else None."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return None
    return _build()


@functools.cache
def _build() -> Any | None:
    if os.environ.get("GRADSCOPE_NATIVE", "1") == "0":
        return None
    # the machine's own vector instructions (the build is cached per machine); -march=native is x86's spelling
    flags = [*_FLAGS, "-march=native"] if platform.machine().lower() in ("x86_64", "amd64") else _FLAGS
    try:
        from torch.utils import cpp_extension

        cpp_extension.load(name="gradscope_lstm", sources=[str(_SOURCE)], extra_cflags=flags, is_python_module=False)
    except Exception as error:  # a missing compiler, ninja or header: whatever fails, the LSTM falls back
        reason = str(error).strip().splitlines()
        warnings.warn(
            "gradscope: the compiled LSTM kernel could not be built "
            f"({type(error).__name__}: {reason[0] if reason else 'no message'}); LSTMs are recorded on the CPU "
            "through torch's operations instead, with the same results at 1.3-2x the time "
            "(GRADSCOPE_NATIVE=0 skips the build)",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    return torch.ops.gradscope
