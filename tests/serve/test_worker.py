"""The worker thread on a tiny model: it times the cost profile before the first request."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


def test_worker_times_the_cost_profile_at_start(tiny_bundle: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from specgen.decoding.sizing import _PROFILES
    from specgen.serve.config import ServeConfig
    from specgen.serve.metrics import ServerMetrics
    from specgen.serve.worker import Worker

    monkeypatch.setenv("SPECGEN_CACHE", str(tmp_path))
    worker = Worker(tiny_bundle, ServeConfig(), ServerMetrics("tiny"))
    assert tiny_bundle.model not in _PROFILES
    worker._warm()
    assert tiny_bundle.model in _PROFILES  # a request now reads it instead of timing it
    files = list((tmp_path / "profiles").glob("*.json"))
    assert len(files) == 1 and '"seconds"' in files[0].read_text()
