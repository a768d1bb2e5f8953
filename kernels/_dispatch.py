"""Backend choice: Triton on CUDA tensors, the torch reference otherwise.

SPECGEN_KERNELS=triton|torch|auto (default auto) overrides the choice; it is read on every call so
tests and the CLI can change it at run time. Triton is imported only when a Triton kernel is about
to run, so `import specgen.kernels` works without triton and without a GPU. TRITON_INTERPRET=1
must be set before that first import for the kernels to run on CPU tensors (Triton reads it when
the kernels are decorated).
"""
from __future__ import annotations

import importlib.util
import os
from functools import cache
from typing import Literal

import torch

Backend = Literal["triton", "torch"]
ENV_VAR = "SPECGEN_KERNELS"
_MODES = ("auto", "triton", "torch")


def requested_mode() -> str:
    """The SPECGEN_KERNELS setting, validated."""
    mode = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if mode not in _MODES:
        raise ValueError(f"{ENV_VAR} must be one of {', '.join(_MODES)}, got {mode!r}")
    return mode


@cache
def triton_available() -> bool:
    """Whether triton is installed (found, not imported: importing it is deferred)."""
    return importlib.util.find_spec("triton") is not None


def interpreter_requested() -> bool:
    """Whether TRITON_INTERPRET asks Triton to run kernels on the CPU."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def choose(device: torch.device) -> Backend:
    """Pick the backend for tensors on `device` under the current SPECGEN_KERNELS mode."""
    mode = requested_mode()
    if mode == "torch":
        return "torch"
    if mode == "triton":
        if not triton_available():
            raise RuntimeError(f"{ENV_VAR}=triton but triton is not installed")
        if device.type != "cuda" and not interpreter_requested():
            raise RuntimeError(
                f"{ENV_VAR}=triton with {device.type} tensors needs TRITON_INTERPRET=1 set before the first kernel call"
            )
        return "triton"
    return "triton" if device.type == "cuda" and triton_available() else "torch"


def backend_info() -> dict[str, object]:
    """What the dispatcher would do right now: mode, triton/CUDA availability, interpreter flag."""
    info: dict[str, object] = {
        "mode": requested_mode(),
        "triton_installed": triton_available(),
        "cuda": torch.cuda.is_available(),
        "interpreter": interpreter_requested(),
    }
    info["cpu_backend"] = _safe_choose(torch.device("cpu"))
    info["cuda_backend"] = _safe_choose(torch.device("cuda")) if torch.cuda.is_available() else None
    return info


def _safe_choose(device: torch.device) -> str:
    try:
        return choose(device)
    except RuntimeError as exc:
        return f"error: {exc}"
