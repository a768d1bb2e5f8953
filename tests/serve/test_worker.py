"""The worker thread on a tiny model: it times the cost profile before the first request."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


def _serve_once(worker: Any, method: str, prompt: list[int], gen: Any) -> Any:
    import queue

    from specgen.serve.protocol import Job

    events: "queue.Queue[Any]" = queue.Queue()
    worker.submit(Job("completion", "tiny", prompt, gen, method, stream=False, raw=True), events.put)
    while (event := events.get(timeout=120))[0] == "text":
        pass
    assert event[0] == "done", event
    return event[1]


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


@pytest.mark.parametrize("shared", [True, False])
def test_requests_of_a_method_share_one_acceptance_calibration(tiny_bundle: Any, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch, shared: bool) -> None:
    from specgen.config import GenerationConfig, SamplingConfig
    from specgen.serve.config import ServeConfig
    from specgen.serve.metrics import ServerMetrics
    from specgen.serve.worker import Worker

    monkeypatch.setenv("SPECGEN_CACHE", str(tmp_path))
    worker = Worker(tiny_bundle, ServeConfig(shared_calibration=shared), ServerMetrics("tiny"))
    worker.start()
    prompt = [3, 1, 4, 1, 5, 9, 2, 6, 3, 1, 4, 1, 5, 9, 2, 6]
    try:
        seen = []
        for temperature in (0.0, 0.0, 0.8):
            gen = GenerationConfig(max_new_tokens=24, sampling=SamplingConfig(temperature=temperature, seed=1))
            _serve_once(worker, "pld", prompt, gen)
            seen.append({k: sum(m.drafted) for k, m in worker.calibrations.items()})
    finally:
        worker.stop()
    if not shared:
        assert worker.calibrations == {} and seen == [{}, {}, {}]
        return
    greedy = ("pld", True)
    # one model per (method, greedy): the second greedy request updated the first one's counts
    assert set(seen[1]) == {greedy} and set(seen[2]) == {greedy, ("pld", False)}
    assert seen[1][greedy] >= seen[0][greedy] and seen[2][greedy] == seen[1][greedy]
    prior = 2.0 * len(worker.calibrations[greedy].drafted)  # prior_weight pseudo-counts per bin
    assert seen[1][greedy] > prior  # drafts were verified, and counted


def test_a_stored_calibration_is_what_generate_keeps_and_the_server_writes_it_back(
        tiny_bundle: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _own_calibration_dir: Path) -> None:
    """`--stored-calibration`: the server's first pld request starts from the file `specgen generate`
    left; at shutdown the server writes its shared estimates to that same file (ar writes none)."""
    import json

    from specgen.config import GenerationConfig
    from specgen.decoding.stored import calibration_path
    from specgen.generate import generate
    from specgen.serve.config import ServeConfig
    from specgen.serve.metrics import ServerMetrics
    from specgen.serve.worker import Worker

    monkeypatch.setenv("SPECGEN_CACHE", str(tmp_path))
    prompt = [3, 1, 4, 1, 5, 9, 2, 6, 3, 1, 4, 1, 5, 9, 2, 6]
    gen = GenerationConfig(max_new_tokens=24)
    generate(tiny_bundle, prompt, method="pld", gen=gen, calibration="stored")
    files = list(_own_calibration_dir.glob("*.json"))
    assert len(files) == 1
    left = sum(json.loads(files[0].read_text())["drafted"])

    worker = Worker(tiny_bundle, ServeConfig(stored_calibration=True), ServerMetrics("tiny"))
    assert calibration_path(tiny_bundle.model, "pld", worker.configs["pld"], gen) == files[0]
    worker.start()
    try:
        _serve_once(worker, "ar", prompt, gen)
        _serve_once(worker, "pld", prompt, gen)
        started = sum(worker._stored[("pld", True)][1]["drafted"])
        served = sum(worker.calibrations[("pld", True)].drafted)
    finally:
        worker.stop()
    assert started == pytest.approx(left)  # it began where generate stopped, not at the prior
    assert served > started  # and its request drafted into it
    assert sorted(_own_calibration_dir.glob("*.json")) == files  # ar's calibration was not written
    assert sum(json.loads(files[0].read_text())["drafted"]) == pytest.approx(served)


def test_a_stored_calibration_needs_a_shared_one() -> None:
    from specgen.errors import SpecgenError
    from specgen.serve.config import ServeConfig

    with pytest.raises(SpecgenError, match="per-request"):
        ServeConfig(stored_calibration=True, shared_calibration=False)
