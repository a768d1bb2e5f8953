"""A bounded load test on loopback: 64 requests from 8 concurrent clients, mixed methods and lengths;
every answer is that prompt's solo `ar` answer, nothing lost or mixed up, memory flat. Plus a client
that disconnects mid-stream frees the server for the next request."""
from __future__ import annotations

import threading
import urllib.request
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import pytest

from specgen.errors import SpecgenError

from .conftest import RunningServer
from .test_server import MODEL, solo_ar

pytestmark = pytest.mark.slow

PROMPTS = ["def is_prime(n):\n", "The three primary colors are", "import json\n\ndata = ", "Dear team,\n",
           "x = [i * i for i in", "Q: What is the boiling point of water?\nA:", "SELECT name FROM", "Once upon a time"]
METHODS = ("ar", "pld", "sd")
LENGTHS = (6, 12)


def _rss_kb() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


def test_64_requests_from_8_clients_all_answered_in_order(server: RunningServer, real_bundle: Any) -> None:
    expected = {(p, n): solo_ar(real_bundle, p, raw=True, max_tokens=n) for p in PROMPTS for n in LENGTHS}
    jobs = [(PROMPTS[i % 8], METHODS[i % 3], LENGTHS[(i // 8) % 2], i) for i in range(64)]
    clients = [server.client() for _ in range(8)]
    rss_after_8: list[int] = []
    done = [0]
    lock = threading.Lock()

    def one(job: tuple[str, str, int, int]) -> tuple[int, str, str]:
        prompt, method, n, i = job
        c = clients[i % 8]
        r = c.completions.create(model=MODEL, prompt=prompt, max_tokens=n, temperature=0, extra_body={"method": method})
        with lock:
            done[0] += 1
            if done[0] == 8:
                rss_after_8.append(_rss_kb())
        return i, r.choices[0].text, r.model_extra["spec_decode"]["method"]

    t0 = time.time()
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, jobs, timeout=600))
    assert time.time() - t0 < 600
    assert sorted(i for i, _, _ in results) == list(range(64))
    for i, text, method in results:
        prompt, want_method, n, _ = jobs[i]
        assert method == want_method
        assert text == expected[(prompt, n)], (i, prompt, method, n)
    assert _rss_kb() <= rss_after_8[0] * 1.10, "server memory grew by more than 10% over the run"
    steps = server.app.state.metrics.batch_steps
    assert sum(v for (size, _), v in steps.items() if size > 1) > 0, f"no batched step ran: {dict(steps)}"
    text = urllib.request.urlopen(server.url + "/metrics", timeout=30).read().decode()
    assert any(line.startswith("specgen:engine_steps_total{") and 'batch_size="1"' not in line
               for line in text.splitlines())  # the batched steps are exported


def test_a_client_that_disconnects_frees_the_server(server: RunningServer) -> None:
    import httpx2 as httpx

    body = {"model": MODEL, "prompt": "Count to one hundred: 1, 2, 3,", "max_tokens": 2000, "temperature": 0, "stream": True}
    t0 = time.time()
    with httpx.Client(timeout=60) as h:
        with h.stream("POST", server.url + "/v1/completions", json=body) as resp:
            assert resp.status_code == 200
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    break  # first chunk seen: hang up
    # the 2000-token job (a minute or more here) is abandoned: the next request is answered at once
    r = server.client().completions.create(model=MODEL, prompt="Hi", max_tokens=2, temperature=0)
    assert r.usage.completion_tokens == 2
    worker = server.app.state.worker
    deadline = time.time() + 30
    while server.app.state.metrics.running and time.time() < deadline:
        time.sleep(0.05)
    assert server.app.state.metrics.running == 0 and worker.jobs.qsize() == 0
    assert time.time() - t0 < 20


def test_concurrency_bench_measures_every_method_and_level(real_bundle: Any, tmp_path: Any) -> None:
    from specgen.bench.concurrency import ConcurrencyConfig, plot_speedup, run_concurrency

    prompts = ["Name a fruit.", "Say hello in French.", "What is 3 + 4?"]
    # wave by wave at 1 client too (`--wave-by-wave`); the interleaved order is the next test's
    cfg = ConcurrencyConfig(levels=(1, 2), methods=("ar", "pld"), max_new_tokens=6, repeats=2, interleave=False)
    rows = run_concurrency(real_bundle, prompts, cfg)
    assert [(r.method, r.concurrency) for r in rows] == [("ar", 1), ("ar", 2), ("pld", 1), ("pld", 2)]
    for r in rows:  # two rounds of the 3 prompts each
        assert r.requests == 6 and 6 <= r.tokens <= 36 and r.wall_s > 0 and r.latency_p95 >= r.latency_p50 > 0
        assert r.identical_to_ar == 6  # greedy, lossless: the same answers as ar under load
        assert 0 <= r.accepted <= r.drafted and (r.drafted == 0 if r.method == "ar" else True)
        assert len(r.waves) == 2 and sum(t for t, _ in r.waves) == r.tokens and len(r.speedups) == 2
        assert min(r.speedups) <= r.speedup <= max(r.speedups)
    assert all(r.speedups == [1.0, 1.0] for r in rows if r.method == "ar") and all(r.speedup > 0 for r in rows)
    with pytest.raises(SpecgenError, match="--repeats"):
        ConcurrencyConfig(repeats=0)
    plot_speedup(rows, str(tmp_path / "c.png"))
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_concurrency_bench_compares_generate_at_one_client(real_bundle: Any, monkeypatch: Any) -> None:
    from specgen.bench import concurrency as C

    calls: list[tuple[str, str, str]] = []  # (how, method, prompt) of every timed request, in order
    served, direct = C._one, C._direct_one

    def one(client: Any, model: str, p: str, m: str, n: int) -> Any:
        if n == 6:  # the warm-ups ask for 8 tokens
            calls.append(("serve", m, p))
        return served(client, model, p, m, n)
    monkeypatch.setattr(C, "_one", one)
    cals: dict[str, set[int]] = {}  # method -> ids of the calibrations its generate calls got

    def through(b: Any, w: Any, p: str, m: str, n: int, cal: Any = None) -> Any:
        cals.setdefault(m, set()).add(id(cal))
        if n == 6:
            calls.append(("generate", m, p))
        return direct(b, w, p, m, n, cal)
    monkeypatch.setattr(C, "_direct_one", through)
    prompts = ["Name a fruit.", "What is 3 + 4?"]
    cfg = C.ConcurrencyConfig(levels=(1, 2), methods=("ar", "pld"), max_new_tokens=6, compare_generate=True)
    rows = {(r.method, r.concurrency): r for r in C.run_concurrency(real_bundle, prompts, cfg)}
    # at 1 client the timed requests go prompt by prompt, the method order reversing per prompt; then c=2 waves
    a, b = prompts
    assert len(calls) == 8 + 4 and calls[:8] == [
        ("serve", "ar", a), ("generate", "ar", a), ("serve", "pld", a), ("generate", "pld", a),
        ("serve", "pld", b), ("generate", "pld", b), ("serve", "ar", b), ("generate", "ar", b)]
    for method in ("ar", "pld"):
        one, two = rows[(method, 1)], rows[(method, 2)]
        # generate decodes the chat prompts as the server does: greedy, the same answers token for token
        assert one.generate_identical == 2 and one.generate_tokens_per_s and one.generate_tokens_per_s > 0
        assert len(one.generate_speedups) == 1 and one.generate_speedup == one.generate_speedups[0] > 0
        assert two.generate_speedup is None and two.generate_identical is None  # c=1 only
    assert rows[("ar", 1)].generate_speedup == 1.0
    # each method's generate calls (its warm-up included) share one calibration, as `specgen generate` runs do
    assert all(len(ids) == 1 for ids in cals.values()) and cals["ar"] != cals["pld"] and id(None) not in cals["pld"]
    with pytest.raises(SpecgenError, match="include 1"):
        C.ConcurrencyConfig(levels=(2, 4), compare_generate=True)
    with pytest.raises(SpecgenError, match="--generate-calibration"):
        C.ConcurrencyConfig(generate_calibration="stored")
    assert C._generate_calibrations(("ar", "pld"), replace(cfg, generate_calibration="fresh")) == {}
