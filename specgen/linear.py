"""CPU linear layers (fp32, bf16) on oneDNN with their weights reordered once, at load.

Why: on the CPU, `torch.nn.functional.linear` sends one row through MKL's GEMV but two or more rows
through SGEMM, which repacks the whole weight matrix on every call. For a memory-bound decoder that
makes a verification of 2-8 tokens cost about two plain steps (README, "The Qwen2.5-Coder pair":
the 1.5B at 1.00 / 2.18 / 3.05 for 1 / 2 / 4 tokens), so token-level speculation could hardly pay on
the CPU. oneDNN's linear with a weight reordered ahead of time (the path PyTorch's Inductor takes
for frozen CPU weights, `torch.ops.mkldnn._linear_pointwise`) reads each weight once per forward
whatever the row count: measured on this repo's AMD EPYC VM, a 8960x1536 fp32 layer costs 3.4 ms
(aten) against 2.1 ms (oneDNN) for one row and 5.8 against 2.1 ms for eight.

The numbers are the same operation in a different summation order (fp32 accumulation; max abs
difference ~1e-5 relative), applied to every forward of the model alike, so `ar` and every method
share it. `SPECGEN_CPU_LINEAR=aten` keeps PyTorch's own path (`specgen.device.resolve_linear`).
"""
from __future__ import annotations

import types
from typing import Any

import torch

PACKED_ATTR = "_specgen_packed_weight"
BACKEND_ATTR = "_specgen_linear"
PACKED_DTYPES = (torch.float32, torch.bfloat16)


def onednn_available() -> bool:
    """Whether this torch build has oneDNN's prepacked linear (`mkldnn._linear_pointwise`)."""
    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise") \
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def _packed_forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`self(x)` for x [..., in_features] -> [..., out_features] through the reordered weight."""
    if x.numel() == 0:  # oneDNN rejects empty inputs; nothing to compute
        return x.new_empty(*x.shape[:-1], self.out_features)
    if x.dtype != self.weight.dtype or x.requires_grad:
        raise RuntimeError("a prepacked linear runs inference only, in its weight's dtype")
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), getattr(self, PACKED_ATTR), self.bias,
                                              "none", [], "")


def pack_linears(model: torch.nn.Module) -> int:
    """Route every fp32 or bf16 CPU `nn.Linear` of `model` through a reordered oneDNN weight; returns how
    many were packed. A weight another module shares (a tied LM head) is kept; the others are
    replaced by a meta tensor of the same shape and dtype, so the model does not hold each matrix
    twice, and any code that would read them fails loudly instead of silently."""
    shared = {id(p) for mod in model.modules() if not isinstance(mod, torch.nn.Linear)
              for p in mod.parameters(recurse=False)}
    packed = 0
    for mod in model.modules():
        if type(mod) is not torch.nn.Linear or hasattr(mod, PACKED_ATTR):
            continue
        w = mod.weight  # [out_features, in_features]
        if w.device.type != "cpu" or w.dtype not in PACKED_DTYPES:
            continue
        with torch.no_grad():
            setattr(mod, PACKED_ATTR, torch.ops.mkldnn._reorder_linear_weight(w.detach(), None))
        if id(w) not in shared:
            mod.weight = torch.nn.Parameter(torch.empty(w.shape, dtype=w.dtype, device="meta"),
                                            requires_grad=False)
        mod.forward = types.MethodType(_packed_forward, mod)
        packed += 1
    setattr(model, BACKEND_ATTR, "onednn" if packed else "aten")
    return packed


def linear_backend(model: Any) -> str:
    """`onednn` when `pack_linears` packed this model's linears, else `aten` (cost-profile keys)."""
    return str(getattr(model, BACKEND_ATTR, "aten"))
