"""The verification cost curve: time of one target forward over n fed tokens after a prefix,
relative to feeding one token (the figure that bounds token-level speculation on a machine).

Measured exactly as the decode loop's cost sizing times it (`decoding.sizing.measure_cost_profile`:
chains of each size on the live KV cache, one warm-up then the fastest of `reps`), here after a
`prefix`-token prompt of real text, so the curve matches what a step sees mid-generation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..decoding.sizing import TreeSizingConfig, measure_cost_profile
from ..decoding.verify import prefill
from ..linear import linear_backend

PREFIX_TEXT = ("Speculative decoding drafts several tokens cheaply and verifies them with one forward of "
               "the target model, keeping the tokens the target agrees with. ")


@dataclass(frozen=True)
class CostCurve:
    """One model's curve on one device, dtype and thread count."""

    model: str
    device: str
    dtype: str
    threads: int
    linear: str  # "onednn" or "aten" (specgen/linear.py)
    prefix: int
    sizes: tuple[int, ...]
    seconds: tuple[float, ...]  # best forward time per size

    @property
    def relative(self) -> tuple[float, ...]:
        return tuple(s / self.seconds[0] for s in self.seconds)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "device": self.device, "dtype": self.dtype, "threads": self.threads,
                "linear": self.linear, "prefix": self.prefix, "sizes": list(self.sizes), "seconds": [round(s, 5) for s in self.seconds],
                "relative": [round(r, 3) for r in self.relative]}


def cost_curve(bundle: Any, sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32), prefix: int = 256,
               reps: int = 3) -> CostCurve:
    """Time forwards of each size in `sizes` (must start at 1) after a `prefix`-token prompt."""
    tok = bundle.tokenizer
    ids = tok(PREFIX_TEXT * (prefix // 8 + 1), add_special_tokens=False)["input_ids"][:prefix]  # [prefix]
    cache, _, _ = prefill(bundle.model, ids)
    cfg = TreeSizingConfig(sizes=tuple(sizes), reps=reps)
    profile = measure_cost_profile(bundle.model, cache, len(ids), cfg)
    return CostCurve(bundle.name, str(bundle.model.device), str(bundle.model.dtype).removeprefix("torch."),
                     torch.get_num_threads(), linear_backend(bundle.model), len(ids), tuple(sizes), tuple(profile.seconds))
