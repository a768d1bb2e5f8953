"""`specgen bench --suite gsm8k --verifier`: how well the target's own signals tell a corrupted
reasoning step from a correct one (issue 5, item 6), measurable on any hardware.

The study itself is `specgen.specguard.verifier.run_verifier_study`; this module resolves the
suite file, loads the target and shapes the result for the report (no printing here).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..errors import SpecgenError
from .suites import suite_path

SIGNAL_LABELS = {
    "conf_mean_exp": "confidence, exp(mean log p)",
    "conf_min": "confidence, min p",
    "grounding_min": "grounding, min over tokens",
    "grounding_q": "grounding, low quantile",
    "grounding_mean": "grounding, mean",
    "grounding_effective": "grounding as configured",
    "ensemble": "ensemble beta*C+(1-beta)*G",
    "ensemble_z": "ensemble on z-scores",
}


def gsm8k_file(suite: str) -> Path:
    """The GSM8K JSONL of `suite`: the shared file for 'gsm8k', else a path given by the user."""
    if suite != "gsm8k" and not Path(suite).expanduser().is_file():
        raise SpecgenError(f"--verifier needs --suite gsm8k or a GSM8K-format JSONL file, got {suite}")
    return suite_path(suite)


def run_verifier_bench(suite: str, limit: int | None, *, model: str | None = None, dtype: str = "float32",
                       seed: int = 0, config: Any = None, bundle: Any = None) -> dict[str, Any]:
    """Score gold GSM8K steps and their corrupted twins; AUROC per signal plus run metadata."""
    from ..specguard.verifier import load_gsm8k, run_verifier_study

    problems = load_gsm8k(gsm8k_file(suite), limit=limit)
    if bundle is None:
        from ..models import load_model

        bundle = load_model(model, dtype)
    t0 = time.perf_counter()
    study = run_verifier_study(bundle, problems, config, seed=seed)
    study["wall_s"] = time.perf_counter() - t0
    study["model"] = getattr(bundle, "name", model)
    return study
