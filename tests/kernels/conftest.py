"""Kernel tests run the Triton kernels through the interpreter on CPU unless told otherwise.

TRITON_INTERPRET is read when a kernel is decorated, i.e. on the first import of
specgen.kernels.similarity / .attention, so it is set here, before any test module imports them.
Run with TRITON_INTERPRET=0 on a CUDA machine to test the compiled kernels instead.
"""
from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session")
def device() -> torch.device:
    """CUDA when the kernels are compiled for real, CPU under the interpreter."""
    interpreting = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    if not interpreting and torch.cuda.is_available():
        return torch.device("cuda")
    if not interpreting:
        pytest.skip("Triton kernels need CUDA or TRITON_INTERPRET=1")
    return torch.device("cpu")
