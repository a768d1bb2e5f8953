"""Cost profiles cached on disk, so a process times verification once per machine, not once per start.

Key: the model's identity (a hash of its config), device, dtype, torch thread count, the timed sizes
and the torch version. File: `$SPECGEN_CACHE/profiles/<key>.json`, written atomically. A profile
timed while the machine was busy heals: on the CPU every verification forward of a timed size that
runs faster than the profile lowers it (`TreeSizer.observe_time`), and the lowered profile is saved
at the end of the generation; `rm -r ~/.cache/specgen/profiles` re-times every model on the next run.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

from ..linear import linear_backend
from .sizing import _PROFILES, CostProfile, TreeSizingConfig, measure_cost_profile, profile_memory_key


def model_identity(model: Any) -> dict[str, Any]:
    """The model's config without what differs between two loads of the same weights (its path,
    the transformers version): what on-disk caches keyed by model (profiles, calibrations) hash."""
    conf = model.config.to_dict()
    for k in ("_name_or_path", "transformers_version", "_attn_implementation_autoset"):
        conf.pop(k, None)
    return conf


def profile_key(model: Any, cfg: TreeSizingConfig) -> str:
    raw = json.dumps({"config": model_identity(model), "device": str(model.device), "dtype": str(model.dtype),
                      "threads": torch.get_num_threads(), "sizes": list(cfg.sizes), "torch": torch.__version__,
                      "format": 2, "pad": cfg.pad_forwards, "linear": linear_backend(model)},  # format 2: interleaved timing rounds, pads
                     sort_keys=True, default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:20]


def cost_profile(model: Any, cache: Any, n_kv: int, cfg: TreeSizingConfig) -> tuple[CostProfile, bool]:
    """The cost profile for `model` on this machine and whether it was timed now (False: given,
    or read from memory or disk)."""
    from ..models import cache_dir

    if cfg.costs is not None:
        return CostProfile(list(cfg.sizes), list(cfg.costs)), False
    mem_key = profile_memory_key(model, cfg)
    known = _PROFILES.get(model, {})
    if mem_key in known:
        return known[mem_key], False
    path = cache_dir() / "profiles" / f"{profile_key(model, cfg)}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        profile = CostProfile(list(data["sizes"]), [float(s) for s in data["seconds"]],
                              [int(p) for p in data["pads"]] if "pads" in data else None)
        if profile.sizes == list(cfg.sizes):
            _PROFILES.setdefault(model, {})[mem_key] = profile
            return profile, False
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        pass  # absent or unreadable: time it again
    profile = measure_cost_profile(model, cache, n_kv, cfg)
    _write(path, model, profile)
    return profile, True


def _write(path: Any, model: Any, profile: CostProfile) -> None:
    from ..fileio import atomic_write_text

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"sizes": profile.sizes, "seconds": profile.seconds, "pads": profile.pads,
                                            "device": str(model.device), "dtype": str(model.dtype),
                                            "threads": torch.get_num_threads()}) + "\n")
    except OSError:
        pass  # a read-only cache only costs the timing next time


def save_refined(model: Any, cfg: TreeSizingConfig, profile: CostProfile) -> None:
    """Keep a profile that this run's own verification forwards made faster (elementwise minimum)."""
    from ..models import cache_dir

    _write(cache_dir() / "profiles" / f"{profile_key(model, cfg)}.json", model, profile)
