"""gradscope's compiled loops (``native.cpp``), built with torch's C++ extension tools on first use.

On the CPU, torch's operations cost more per call than the arithmetic of a small LSTM step or of one step's
summary statistics. The loop of :class:`~gradscope.kernels.LSTMSequence`, seven calls a step forward and five
backward, took 1.3-2x torch.nn's fused LSTM; compiled, a step is one matrix product and one pass over its
elements, the batch's rows split among torch's threads. In float32 the product is the kernel's own (AVX-512, or
AVX2 with FMA) below M = 512 and oneDNN's from M = 512 (torch.nn's LSTM runs on oneDNN too), else torch's BLAS's;
with its own products, the backward adds up the parameters' gradients in the same loop. Summary recording's statistics
(:func:`~gradscope.trace.norm_stats`, :func:`~gradscope.trace.gates_stats`), five or more calls and passes over the
values, become one pass.

The ops are built once per processor into torch's extension cache (``TORCH_EXTENSIONS_DIR``, by default
``~/.cache/torch_extensions``), about 20 s with a C++ compiler and ninja; where they cannot be built, a warning says
why and the same computations run on torch's operations, with the same results. ``GRADSCOPE_NATIVE=0`` skips the
build; ``GRADSCOPE_NATIVE_CFLAGS`` adds compiler flags.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

__all__ = ["onednn", "ops"]

_SOURCE = Path(__file__).with_name("native.cpp")
_CPUINFO = Path("/proc/cpuinfo")
# no floating-point traps or errno: lets the compiler vectorise the branch-free sigmoid and tanh
_FLAGS = ["-O3", "-fno-trapping-math", "-fno-math-errno"]


def ops(x: torch.Tensor) -> Any | None:
    """The compiled ops (``torch.ops.gradscope``) for ``x`` in float32 or float64 on the CPU; else None."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return None
    return _build()


def onednn(x: torch.Tensor) -> bool:
    """Whether torch's oneDNN is there to take ``x``'s matrix products: ``x`` in float32 on the CPU, with torch built
    with oneDNN and oneDNN enabled (``torch.backends.mkldnn``, as torch.nn's own layers heed it)."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
    )


def _flags() -> list[str]:
    """The compiler's flags: the machine's own vector instructions (``-march=native``, x86's spelling; a build per
    processor, see :func:`_build_name`), then ``GRADSCOPE_NATIVE_CFLAGS``'s, split at spaces (``-mno-avx512f``: the
    tiles of AVX2 where the CPU has AVX-512)."""
    native = ["-march=native"] if platform.machine().lower() in ("x86_64", "amd64") else []
    return [*_FLAGS, *native, *os.environ.get("GRADSCOPE_NATIVE_CFLAGS", "").split()]


def _build_name(flags: list[str]) -> str:
    """The build's name in torch's extension cache, one per processor and flags: torch keys a cached build by its
    sources and flags, and ``-march=native`` reads the same on every machine. A cache shared between machines (a
    home directory on a cluster's nodes) would otherwise load one machine's build, its vector instructions with it,
    on another that lacks them: a crash with an illegal instruction, not an error. Without ``/proc/cpuinfo`` (macOS,
    Windows) only the platform's machine and processor name it, which do not tell one x86 CPU's instruction sets
    from another's."""
    try:  # Linux: the processor's model and instruction sets ("flags" on x86, "Features" on ARM)
        lines = _CPUINFO.read_text().splitlines()
    except OSError:
        lines = []
    keys = ("model name", "flags", "features", "cpu part", "cpu implementer")
    identity = sorted({line for line in lines if line.lower().startswith(keys)})
    identity += [f"{platform.machine()} {platform.processor()}", " ".join(flags)]
    return "gradscope_native_" + hashlib.sha256("\n".join(identity).encode()).hexdigest()[:16]


@functools.cache
def _build() -> Any | None:
    if os.environ.get("GRADSCOPE_NATIVE", "1") == "0":
        return None
    flags = _flags()
    # OpenMP, as torch's own build on Linux (torch's libgomp is the one loaded), for at::parallel_for's threads
    openmp = ["-fopenmp"] if sys.platform.startswith("linux") and torch.backends.openmp.is_available() else []
    try:
        from torch.utils import cpp_extension

        cpp_extension.load(
            name=_build_name(flags),
            sources=[str(_SOURCE)],
            extra_cflags=[*flags, *openmp],
            extra_ldflags=openmp,
            is_python_module=False,
        )
    except Exception as error:  # a missing compiler, ninja or header: whatever fails, torch's operations stand in
        reason = str(error).strip().splitlines()
        warnings.warn(
            "gradscope: the compiled loops could not be built "
            f"({type(error).__name__}: {reason[0] if reason else 'no message'}); LSTMs are recorded on the CPU "
            "through torch's operations instead, with the same results at 1.3-2x the time, and so are summary "
            "statistics (GRADSCOPE_NATIVE=0 skips the build)",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    return torch.ops.gradscope
