"""`specgen bench --concurrency 1,2,4,8`: the real server under that many concurrent clients.

The server (`specgen.serve`) runs in this process on a free loopback port; for each method and
concurrency c, c clients (the official `openai` client, streaming, greedy) share the same prompts
(the suite's first turns) and send them as fast as they are answered. Per (method, c): output
tokens/s over the whole wave, per-request latency p50/p95, time to first token p50, and the speedup
over `ar` at the same concurrency, and the draft tokens the wave verified and accepted (the
responses' `spec_decode` figures: a method whose drafting load-aware drafting switched off verifies
none, so it did the same target work as `ar`). Methods run one after another, each on an idle
server, and every answer is checked against `ar`'s at the same concurrency (greedy lossless methods
must match). With `repeats` > 1 each (method, c) runs that many rounds, the method order reversed
every other round, and the speedup is the median of the rounds' ratios to the same round's `ar`.
Each concurrency level starts with an untimed warm-up of every method at that many clients.

With `compare_generate`, at concurrency 1 each served wave is followed by the same prompts decoded
with the library's `generate` (no server, the server's method configs and drafts): the served
speedup set against generate's in the same sitting, which is the issue's "served within 10% of
generate" check without a second run's drift. Those calls share one acceptance calibration per
method (`generate_calibration="shared"`, fresh at the bench's start and warmed as the server is), as
consecutive `specgen generate` runs share the one it keeps on disk; "fresh" starts every call from
the prior, as `specgen generate --calibration fresh` does.

At 1 client (`interleave`, the default) the methods' requests alternate prompt by prompt rather than
wave by wave: each prompt goes to every method (served, then through `generate`) before the next
prompt, in an order that reverses from one prompt to the next, and a wave's wall time is the sum of
its requests' latencies. With one client the server is idle between requests either way, so the work
is the same, but a ratio's two sides are then seconds apart instead of minutes: on this VM two
identical 60-second `ar` waves differ by up to 17%, which swamps the 10% the check allows.
"""
from __future__ import annotations

import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import SpecgenError


# One streamed answer: (text, completion tokens, latency s, TTFT s, draft tokens verified, accepted).
Answer = tuple[str, int, float, float, int, int]
Wave = tuple[list[Answer], float]  # a wave's answers, in prompt order, and its wall seconds


@dataclass(frozen=True)
class ConcurrencyConfig:
    levels: tuple[int, ...] = (1, 2, 4, 8)
    methods: tuple[str, ...] = ("ar", "pld", "sense")
    max_new_tokens: int = 64
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    shared_calibration: bool = True  # ServeConfig.shared_calibration
    # Waves per (method, concurrency). Repeats alternate the method order (ar first, then last), so a
    # drift of the machine during a round lands on both sides of a ratio; the speedup is the median of
    # the rounds' ratios. One wave of a few prompts carries about +-10% of noise on a shared VM.
    repeats: int = 1
    compare_generate: bool = False  # at c=1, each served wave followed by the same prompts through `generate`
    interleave: bool = True  # at c=1, the methods' requests alternate prompt by prompt (module docstring)
    generate_calibration: str = "shared"  # compare_generate: "shared" per method across calls, or "fresh"

    def __post_init__(self) -> None:
        if not self.levels or min(self.levels) < 1 or max(self.levels) > 256:
            raise SpecgenError("--concurrency takes client counts between 1 and 256, e.g. 1,2,4,8")
        if not 1 <= self.repeats <= 16:
            raise SpecgenError("--repeats must be between 1 and 16")
        if self.generate_calibration not in ("shared", "fresh"):
            raise SpecgenError(f"--generate-calibration must be shared or fresh, got '{self.generate_calibration}'")
        if self.compare_generate and 1 not in self.levels:
            raise SpecgenError("--compare-generate compares at 1 client: include 1 in --concurrency")


@dataclass
class Row:
    method: str
    concurrency: int
    requests: int
    tokens: int
    wall_s: float
    latency_p50: float
    latency_p95: float
    ttft_p50: float
    identical_to_ar: int  # answers equal to ar's at this concurrency
    drafted: int = 0  # draft tokens verified over the wave (the responses' spec_decode)
    accepted: int = 0  # of which accepted
    speedup: float = 0.0  # tokens/s over ar's at this concurrency (the median of the rounds' ratios)
    waves: list[tuple[int, float]] = field(default_factory=list)  # (tokens, wall s) of each round
    speedups: list[float] = field(default_factory=list)  # each round's ratio to that round's ar wave
    # compare_generate, c=1 only: the same prompts through `generate`, in the same rounds
    generate_speedup: float | None = None  # median over rounds of (method / ar) tokens/s with generate
    generate_speedups: list[float] = field(default_factory=list)
    generate_tokens_per_s: float | None = None  # over all rounds
    generate_identical: int | None = None  # generate's answers equal to the served ones (same round)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "tokens_per_s": round(self.tokens_per_s, 3)}


def _quantile(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def _one(client: Any, model: str, prompt: str, method: str, max_tokens: int) -> Answer:
    """(text, completion tokens, latency s, TTFT s, draft tokens verified, accepted) of one streamed chat request."""
    t0 = time.perf_counter()
    ttft, parts, tokens, spec = None, [], 0, None
    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                            max_tokens=max_tokens, temperature=0, stream=True,
                                            extra_body={"method": method})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            ttft = ttft if ttft is not None else time.perf_counter() - t0
            parts.append(chunk.choices[0].delta.content)
        if getattr(chunk, "usage", None) is not None:
            tokens = chunk.usage.completion_tokens
        spec = getattr(chunk, "spec_decode", None) or spec  # specgen's extra field on the last chunk
    latency = time.perf_counter() - t0
    drafted, accepted = (int(spec["num_draft_tokens"]), int(spec["num_accepted_tokens"])) if spec else (0, 0)
    return "".join(parts), tokens, latency, ttft if ttft is not None else latency, drafted, accepted


def run_concurrency(bundle: Any, prompts: list[str], cfg: ConcurrencyConfig,
                    progress: Callable[[str], None] | None = None) -> list[Row]:
    """Every (method, concurrency) wave over `prompts`; rows in method order, then concurrency.

    The waves run concurrency-major (ar, then each method, at 1 client; then at 2; ...): the waves a
    speedup compares run back to back, so the machine's drift over a long run (30% on this VM) does
    not land between a method and its `ar` baseline.
    """
    import openai
    import uvicorn

    from ..serve.app import create_app
    from ..serve.config import ServeConfig

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve_cfg = ServeConfig(method="ar", method_options=cfg.method_options, port=port,
                            max_queue=max(256, 2 * max(cfg.levels)), shared_calibration=cfg.shared_calibration)
    app = create_app(bundle, serve_cfg)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise SpecgenError("the benchmark server did not start")
        time.sleep(0.05)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="local", max_retries=0, timeout=3600)
    methods = ("ar",) + tuple(m for m in cfg.methods if m != "ar")
    waves: dict[tuple[str, int], list[Wave]] = {}  # (method, c) -> its rounds
    direct: dict[str, list[Wave]] = {}  # method -> its rounds through `generate` (compare_generate, c=1)
    worker = app.state.worker
    cals = _generate_calibrations(methods, cfg)
    try:
        _one(client, serve_cfg.served_name, prompts[0], "ar", 8)  # warm-up (cost profile, caches)
        for c in cfg.levels:
            _warm_level(client, serve_cfg.served_name, prompts, methods, c)
            if c == 1 and cfg.compare_generate:  # generate's calibration warmed as the server's was
                for method in methods:
                    _direct_one(bundle, worker, prompts[0], method, 8, cals.get(method))
            for rnd in range(cfg.repeats):
                if c == 1 and cfg.interleave:
                    if progress:
                        progress("every method at 1 client, prompt by prompt"
                                 + (f", round {rnd + 1}" if cfg.repeats > 1 else ""))
                    served, through = _interleaved_round(client, serve_cfg.served_name, bundle, worker, prompts,
                                                         methods, cfg, rnd, cals)
                    for method in methods:
                        waves.setdefault((method, 1), []).append(served[method])
                        if cfg.compare_generate:
                            direct.setdefault(method, []).append(through[method])
                    continue
                for method in (methods if rnd % 2 == 0 else methods[::-1]):
                    if progress:
                        progress(f"{method} at concurrency {c}" + (f", round {rnd + 1}" if cfg.repeats > 1 else ""))
                    t0 = time.perf_counter()
                    with ThreadPoolExecutor(max_workers=c) as pool:
                        got = list(pool.map(lambda p: _one(client, serve_cfg.served_name, p, method,
                                                           cfg.max_new_tokens), prompts))
                    waves.setdefault((method, c), []).append((got, time.perf_counter() - t0))
                    if cfg.compare_generate and c == 1:  # the server is idle: its worker waits for a job
                        if progress:
                            progress(f"{method} through generate" + (f", round {rnd + 1}" if cfg.repeats > 1 else ""))
                        direct.setdefault(method, []).append(_direct_wave(bundle, worker, prompts, method,
                                                                          cfg.max_new_tokens, cals.get(method)))
    finally:
        server.should_exit = True
        thread.join(timeout=60)
    rows = [_row(method, c, waves[(method, c)], waves[("ar", c)]) for method in methods for c in cfg.levels]
    for r in rows:
        if r.concurrency == 1 and r.method in direct:
            mine, base = direct[r.method], direct["ar"]
            r.generate_speedups = _ratios(mine, base)
            r.generate_speedup = statistics.median(r.generate_speedups)
            r.generate_tokens_per_s = sum(sum(g[1] for g in a) for a, _ in mine) / max(1e-9, sum(w for _, w in mine))
            r.generate_identical = sum(g[0] == h[0] for (a, _), (sa, _) in zip(mine, waves[(r.method, 1)])
                                       for g, h in zip(a, sa))
    return rows


def _interleaved_round(client: Any, model: str, bundle: Any, worker: Any, prompts: list[str],
                       methods: tuple[str, ...], cfg: ConcurrencyConfig,
                       rnd: int, cals: dict[str, Any]) -> tuple[dict[str, Wave], dict[str, Wave]]:
    """One round at 1 client, prompt by prompt: each prompt to every method (served, then through
    `generate` with `compare_generate`), the method order reversed from one prompt to the next.
    Returns each method's served and generate waves; a wave's wall time is its requests' summed latency."""
    served: dict[str, list[Answer]] = {m: [] for m in methods}
    through: dict[str, list[Answer]] = {m: [] for m in methods}
    for i, p in enumerate(prompts):
        for method in (methods if (rnd * len(prompts) + i) % 2 == 0 else methods[::-1]):
            served[method].append(_one(client, model, p, method, cfg.max_new_tokens))
            if cfg.compare_generate:  # the server is idle: its worker waits for a job
                through[method].append(_direct_one(bundle, worker, p, method, cfg.max_new_tokens, cals.get(method)))

    def wave(answers: list[Answer]) -> Wave:
        return answers, sum(a[2] for a in answers)
    return {m: wave(a) for m, a in served.items()}, {m: wave(a) for m, a in through.items()}


def _generate_calibrations(methods: tuple[str, ...], cfg: ConcurrencyConfig) -> dict[str, Any]:
    """compare_generate: one acceptance calibration per method that its `generate` calls share
    (window and prior as a server's), or none (every call fresh)."""
    from ..config import GenerationConfig
    from ..decoding.calibration import SHARED_WINDOW, AcceptanceModel

    if not cfg.compare_generate or cfg.generate_calibration == "fresh":
        return {}
    return {m: AcceptanceModel.for_sizing(GenerationConfig().tree_sizing, window=SHARED_WINDOW) for m in methods}


def _direct_wave(bundle: Any, worker: Any, prompts: list[str], method: str, max_tokens: int,
                 calibration: Any = None) -> Wave:
    """`prompts` decoded one after another with `generate` (`_direct_one`)."""
    t0 = time.perf_counter()
    answers = [_direct_one(bundle, worker, p, method, max_tokens, calibration) for p in prompts]
    return answers, time.perf_counter() - t0


def _direct_one(bundle: Any, worker: Any, prompt: str, method: str, max_tokens: int,
                calibration: Any = None) -> Answer:
    """`prompt` decoded with `generate`, as the chat endpoint would build it (chat template, greedy,
    `max_tokens`), with the server's config and draft for `method` and `calibration` (None: fresh)."""
    from ..config import GenerationConfig, SamplingConfig
    from ..generate import encode_messages, generate

    gen = GenerationConfig(max_new_tokens=max_tokens, sampling=SamplingConfig(temperature=0.0))
    t0 = time.perf_counter()
    ids = encode_messages(bundle.tokenizer, [{"role": "user", "content": prompt}])
    res = generate(bundle, ids, method=method, gen=gen, method_config=worker.configs[method], raw=True,
                   draft=worker.draft(method), calibration=calibration)
    return (res.text, len(res.token_ids), time.perf_counter() - t0, res.stats.first_token_s,
            res.stats.drafted, res.stats.accepted)


def _warm_level(client: Any, model: str, prompts: list[str], methods: tuple[str, ...], c: int) -> None:
    """Untimed: every method once at `c` concurrent clients, a few tokens each, before that level's
    rounds. The first batched forwards of a new batch size pay one-time costs (allocations, kernel
    set-up, the load-aware drafting's first measurements of that size); without this, they land on
    the level's first timed wave, which is always `ar`'s (the ninth session's c=2..8 ar round-1
    waves ran 8-16% slower than their round-2 waves)."""
    for method in methods:
        with ThreadPoolExecutor(max_workers=c) as pool:
            list(pool.map(lambda i: _one(client, model, prompts[i % len(prompts)], method, 8), range(c)))


def _row(method: str, c: int, mine: list[Wave], base: list[Wave]) -> Row:
    """One (method, concurrency) row over its rounds `mine`, each compared with ar's round in `base`."""
    got = [g for answers, _ in mine for g in answers]
    lat, ttft = [g[2] for g in got], [g[3] for g in got]
    rounds = [(sum(g[1] for g in answers), wall) for answers, wall in mine]  # (tokens, wall s)
    ratios = _ratios(mine, base)
    same = sum(g[0] == a[0] for (answers, _), (ar_answers, _) in zip(mine, base) for g, a in zip(answers, ar_answers))
    return Row(method, c, len(got), sum(t for t, _ in rounds), sum(w for _, w in rounds), statistics.median(lat),
               _quantile(lat, 0.95), statistics.median(ttft), same, sum(g[4] for g in got), sum(g[5] for g in got),
               statistics.median(ratios), rounds, ratios)


def _ratios(mine: list[Wave], base: list[Wave]) -> list[float]:
    """Each round's tokens/s over the same round's baseline wave (0 where the baseline has none)."""
    return [_rate(w) / _rate(b) if _rate(b) else 0.0 for w, b in zip(mine, base)]


def _rate(wave: Wave) -> float:
    """Output tokens per second of one wave."""
    answers, wall = wave
    return sum(g[1] for g in answers) / wall if wall else 0.0


def plot_speedup(rows: list[Row], path: str) -> None:
    """Speedup over ar against concurrency, one line per method (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(r.method for r in rows):
        pts = [(r.concurrency, r.speedup) for r in rows if r.method == method]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("output tokens/s over ar")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
