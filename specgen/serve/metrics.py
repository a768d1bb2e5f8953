"""Prometheus metrics of the server, in the text exposition format, under vLLM's names.

Speculative decoding counters follow vLLM's (`spec_decode_num_drafts`, `spec_decode_num_draft_tokens`,
`spec_decode_num_accepted_tokens`, `spec_decode_num_accepted_tokens_per_pos`), in the `specgen:`
namespace as vLLM's are in `vllm:`, labelled by model and method; request latency and time to
first token are histograms as in vLLM (`e2e_request_latency_seconds`, `time_to_first_token_seconds`).
Each finished request adds exactly its own per-request `spec_decode` figures, so the counters are
the sums of what the responses reported.
"""
from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0)
NS = "specgen:"

COUNTERS = {  # name -> help
    "spec_decode_num_drafts": "Steps that verified at least one draft token.",
    "spec_decode_num_draft_tokens": "Draft tokens verified.",
    "spec_decode_num_accepted_tokens": "Draft tokens accepted.",
    "prompt_tokens": "Prompt tokens processed.",
    "generation_tokens": "Tokens generated.",
}


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, v: float) -> None:
        self.total += 1
        self.sum += v
        for i, b in enumerate(self.buckets):
            if v <= b:
                self.counts[i] += 1


def _labels(**kv: str) -> str:
    inner = ",".join(f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                     for k, v in kv.items())
    return "{" + inner + "}"


class ServerMetrics:
    """Counters and histograms, updated by the worker thread, read by `GET /metrics`."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.lock = threading.Lock()
        self.counters: dict[tuple[str, str], float] = defaultdict(float)  # (name, method)
        self.per_pos: dict[tuple[str, int], float] = defaultdict(float)  # (method, position)
        self.requests: dict[str, int] = defaultdict(int)  # finished_reason -> count
        self.latency: dict[str, Histogram] = {}
        self.ttft: dict[str, Histogram] = {}
        self.running = 0
        self.waiting = 0
        self.batch_steps: dict[tuple[int, bool], int] = defaultdict(int)  # (batch size, drafted?) -> steps

    def queued(self, waiting: int = 0, running: int = 0) -> None:
        """Move the waiting / running gauges (the HTTP side and the worker both do)."""
        with self.lock:
            self.waiting += waiting
            self.running += running

    def stepped(self, batch_size: int, drafted: bool) -> None:
        """Count one engine step over `batch_size` sequences (with or without drafts verified)."""
        with self.lock:
            self.batch_steps[(batch_size, drafted)] += 1

    def finished(self, spec: dict[str, Any], prompt_tokens: int, completion_tokens: int, reason: str,
                 latency_s: float, ttft_s: float | None) -> None:
        """Fold in one finished request (its per-request `spec_decode` dict)."""
        method = spec["method"]
        with self.lock:
            self.counters[("spec_decode_num_drafts", method)] += spec["num_drafts"]
            self.counters[("spec_decode_num_draft_tokens", method)] += spec["num_draft_tokens"]
            self.counters[("spec_decode_num_accepted_tokens", method)] += spec["num_accepted_tokens"]
            self.counters[("prompt_tokens", method)] += prompt_tokens
            self.counters[("generation_tokens", method)] += completion_tokens
            for pos, n in enumerate(spec["num_accepted_tokens_per_pos"]):
                self.per_pos[(method, pos)] += n
            self.requests[reason] += 1
            self.latency.setdefault(method, Histogram(LATENCY_BUCKETS)).observe(latency_s)
            if ttft_s is not None:
                self.ttft.setdefault(method, Histogram(TTFT_BUCKETS)).observe(ttft_s)

    def render(self) -> str:
        """The exposition text."""
        out: list[str] = []
        with self.lock:
            for name, text in COUNTERS.items():
                out += [f"# HELP {NS}{name}_total {text}", f"# TYPE {NS}{name}_total counter"]
                for (n, method), v in sorted(self.counters.items()):
                    if n == name:
                        out.append(f"{NS}{name}_total{_labels(model_name=self.model, method=method)} {v:g}")
            name = "spec_decode_num_accepted_tokens_per_pos"
            out += [f"# HELP {NS}{name}_total Draft tokens accepted at each draft position.",
                    f"# TYPE {NS}{name}_total counter"]
            for (method, pos), v in sorted(self.per_pos.items()):
                out.append(f"{NS}{name}_total{_labels(model_name=self.model, method=method, position=str(pos))} {v:g}")
            out += [f"# HELP {NS}request_success_total Finished requests.", f"# TYPE {NS}request_success_total counter"]
            for reason, v in sorted(self.requests.items()):
                out.append(f"{NS}request_success_total{_labels(model_name=self.model, finished_reason=reason)} {v}")
            for gauge, v, text in (("num_requests_running", self.running, "Requests being decoded."),
                                   ("num_requests_waiting", self.waiting, "Requests in the queue.")):
                out += [f"# HELP {NS}{gauge} {text}", f"# TYPE {NS}{gauge} gauge",
                        f"{NS}{gauge}{_labels(model_name=self.model)} {v}"]
            out += [f"# HELP {NS}engine_steps_total Engine steps by batch size and whether drafts were verified.",
                    f"# TYPE {NS}engine_steps_total counter"]
            for (size, drafted), v in sorted(self.batch_steps.items()):
                labels = _labels(model_name=self.model, batch_size=str(size), drafted=str(drafted).lower())
                out.append(f"{NS}engine_steps_total{labels} {v}")
            for name, hists, text in (("e2e_request_latency_seconds", self.latency, "Request latency."),
                                      ("time_to_first_token_seconds", self.ttft, "Time to the first token.")):
                out += [f"# HELP {NS}{name} {text}", f"# TYPE {NS}{name} histogram"]
                for method, h in sorted(hists.items()):
                    base = dict(model_name=self.model, method=method)
                    for b, c in zip(h.buckets, h.counts):
                        out.append(f"{NS}{name}_bucket{_labels(**base, le=f'{b:g}')} {c}")
                    out.append(f"{NS}{name}_bucket{_labels(**base, le='+Inf')} {h.total}")
                    out.append(f"{NS}{name}_sum{_labels(**base)} {h.sum:.6f}")
                    out.append(f"{NS}{name}_count{_labels(**base)} {h.total}")
        return "\n".join(out) + "\n"
