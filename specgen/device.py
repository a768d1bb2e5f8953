"""The one place that decides the device and dtype a run uses (`--device`, `--dtype`).

`auto` = the first CUDA device when one is available, else the CPU. Anything a user types that
cannot be honoured here (`cuda` on a machine without CUDA, `cuda:3` on a one-GPU machine, an
unknown name) is a one-line SpecgenError, before any model loads.
"""
from __future__ import annotations

import os
import re

from .errors import SpecgenError

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


def check_device_spec(spec: str) -> str:
    """`spec` normalised (lower case), or a SpecgenError when it is not auto|cpu|cuda|cuda:N."""
    s = (spec or "").strip().lower()
    m = _DEVICE_RE.match(s)
    if m is None or (m.group(2) is not None and m.group(1) != "cuda"):
        raise SpecgenError(f"--device must be {DEVICE_CHOICES}, got {spec!r}")
    return s


def resolve_device(spec: str = "auto") -> "torch.device":  # noqa: F821 - torch is imported lazily
    """The torch.device for `spec`; `cuda` without CUDA is a one-line error."""
    import torch

    s = check_device_spec(spec)
    if s == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if s.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SpecgenError(f"--device {spec}: CUDA is not available on this machine (use --device cpu or auto)")
        index = int(s.split(":")[1]) if ":" in s else 0
        if index >= torch.cuda.device_count():
            raise SpecgenError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return torch.device("cuda", index)
    return torch.device("cpu")


DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16")
# dtype "auto": bf16 on CUDA (Ampere/Hopper tensor cores); fp32 on CPU, where bf16 matmuls run
# slower than fp32 on the machines measured (README, "Device and dtype").
AUTO_DTYPE = {"cuda": "bfloat16", "cpu": "float32"}


def check_dtype_spec(spec: str) -> str:
    """`spec` normalised, or a SpecgenError when it is not a dtype specgen loads models in."""
    s = (spec or "").strip().lower()
    if s not in DTYPE_NAMES:
        raise SpecgenError(f"--dtype must be one of auto, float32, bfloat16, float16, got {spec!r}")
    return s


def resolve_dtype(spec: str, device: "torch.device") -> "torch.dtype":  # noqa: F821
    """The torch dtype for `spec` on `device` (`auto`: AUTO_DTYPE)."""
    import torch

    s = check_dtype_spec(spec)
    if s == "auto":
        s = AUTO_DTYPE.get(device.type, "float32")
    return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
            "float16": torch.float16, "fp16": torch.float16}[s]


LINEAR_ENV = "SPECGEN_CPU_LINEAR"
LINEAR_CHOICES = ("auto", "onednn", "aten")


def resolve_linear(device: "torch.device", dtype: "torch.dtype") -> str:  # noqa: F821
    """How fp32 and bf16 CPU linears run (`SPECGEN_CPU_LINEAR`, default auto): `onednn` (weights reordered once
    at load, specgen.linear) where this torch build has it, else `aten`; other devices and dtypes
    keep `aten`. An unknown value, or `onednn` where it is missing, is a one-line SpecgenError."""
    import torch

    from .linear import PACKED_DTYPES, onednn_available

    spec = os.environ.get(LINEAR_ENV, "auto").strip().lower() or "auto"
    if spec not in LINEAR_CHOICES:
        raise SpecgenError(f"{LINEAR_ENV} must be one of {', '.join(LINEAR_CHOICES)}, got {spec!r}")
    if spec == "onednn" and not onednn_available():
        raise SpecgenError(f"{LINEAR_ENV}=onednn: this torch build has no oneDNN prepacked linear")
    if spec == "aten" or device.type != "cpu" or dtype not in PACKED_DTYPES or not onednn_available():
        return "aten"
    return "onednn"
