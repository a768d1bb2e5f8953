"""The acceptance calibration `specgen generate` keeps on disk, so each run starts from the last one's.

A server shares one `AcceptanceModel` per method across its requests (serve/worker.py); a one-shot
`specgen generate` would otherwise start every run from the Beta prior and spend its first steps
learning what the previous run already knew (on the 1.5B target at 32 tokens that learning is most of
a request, and it was what kept generate's prompt-lookup speedup 11.8 points under the server's).

Key: the model's identity (a hash of its config, as cost profiles use), device, dtype, the method and
its config, greedy or sampled, the tree-sizing prior, and the calibration's bins. File:
`$SPECGEN_CALIBRATION_DIR/<key>.json`, by default `$SPECGEN_CACHE/calibration/`, written atomically
at the end of a run; an absent or unreadable file starts from the prior. Two runs at once both load
the old file and the last to finish wins: a lost update, never a torn file. The stored model keeps
about the last `SHARED_WINDOW` nodes per bin, as a server's does, so it follows a change of workload.
`rm -r ~/.cache/specgen/calibration` forgets every method's.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .calibration import SHARED_WINDOW, AcceptanceModel
from .profiles import model_identity

_FORMAT = 1


def calibration_dir() -> Path:
    """Where stored calibrations live: `SPECGEN_CALIBRATION_DIR`, else `$SPECGEN_CACHE/calibration`."""
    from ..models import cache_dir

    override = os.environ.get("SPECGEN_CALIBRATION_DIR")
    return Path(override) if override else cache_dir() / "calibration"


def calibration_key(model: Any, method: str, method_config: Any, gen: Any) -> str:
    """A hash of everything that decides what the calibration of (model, method) should learn."""
    mcfg = dataclasses.asdict(method_config) if dataclasses.is_dataclass(method_config) else repr(method_config)
    ts = gen.tree_sizing
    raw = json.dumps({"config": model_identity(model), "device": str(model.device), "dtype": str(model.dtype), "method": method,
                      "method_config": mcfg, "greedy": gen.sampling.temperature == 0,
                      "prior": [ts.prior_mean, ts.prior_weight, ts.prior_depth],
                      "bins": [list(AcceptanceModel.EDGES), list(AcceptanceModel.DEPTHS)], "format": _FORMAT},
                     sort_keys=True, default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:20]


def calibration_path(model: Any, method: str, method_config: Any, gen: Any) -> Path:
    return calibration_dir() / f"{calibration_key(model, method, method_config, gen)}.json"


def load_calibration(model: Any, method: str, method_config: Any, gen: Any) -> AcceptanceModel:
    """The stored shared calibration of (model, method), or a fresh one with the prior when there is none."""
    path = calibration_path(model, method, method_config, gen)
    try:
        cal = AcceptanceModel.from_dict(json.loads(path.read_text(encoding="utf-8")))
        cal.window = SHARED_WINDOW
        return cal
    except (OSError, ValueError, KeyError, TypeError):
        return AcceptanceModel.for_sizing(gen.tree_sizing, window=SHARED_WINDOW)  # absent or unreadable


def save_calibration(model: Any, method: str, method_config: Any, gen: Any, cal: AcceptanceModel) -> None:
    """Store `cal` for the next run of (model, method); a read-only cache only costs the learning."""
    from ..fileio import atomic_write_text

    path = calibration_path(model, method, method_config, gen)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({**cal.to_dict(), "method": method}) + "\n")
    except OSError:
        pass
