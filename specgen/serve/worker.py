"""The worker that owns the model: requests queue up and are decoded by one thread, in arrival order.

One thread touches the model (the model runner owns device and buffers); the HTTP side only
submits checked Jobs and reads events. Each request runs through `specgen.generate.generate`, the
same call `specgen generate` makes, so a served greedy answer is the CLI's answer token for token.
Requests are decoded one at a time: batching several sequences in one verification forward is not
built yet, so `max_queue` bounds the wait and nothing more runs concurrently.

A request whose client went away is dropped from the queue, or stopped at its next accepted token.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import SpecgenError
from ..proposers.registry import available_methods, draft_name, make_config
from .config import ServeConfig
from .metrics import ServerMetrics
from .protocol import APIError, Job, spec_metrics

Event = tuple[str, Any]  # ("text", delta) | ("done", GenerationResult) | ("error", APIError)


class _Cancelled(Exception):
    """Raised inside generation when the request's client has gone."""


@dataclass
class Handle:
    """A submitted job: events go to `post` (thread-safe); `cancel()` stops it."""

    job: Job
    post: Callable[[Event], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    first_token_s: float | None = None

    def cancel(self) -> None:
        self.cancelled.set()


class Worker:
    """Decodes submitted jobs on one thread with the server's model, method configs and drafts."""

    def __init__(self, bundle: Any, cfg: ServeConfig, metrics: ServerMetrics) -> None:
        self.bundle, self.cfg, self.metrics = bundle, cfg, metrics
        self.methods = tuple(available_methods())
        self.configs: dict[str, Any] = {}
        self.config_errors: dict[str, str] = {}
        for m in self.methods:  # each method's config once; one that cannot be built is a 400 when asked for
            try:
                self.configs[m] = make_config(m, dict(cfg.method_options.get(m, {})))
            except SpecgenError as exc:
                self.config_errors[m] = str(exc)
        if cfg.method not in self.configs:
            raise SpecgenError(self.config_errors.get(cfg.method, f"unknown method '{cfg.method}'"))
        self.drafts: dict[str, Any] = {}
        self.jobs: "queue.Queue[Handle | None]" = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name="specgen-worker", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.jobs.put(None)
        self.thread.join(timeout=30)

    def check_method(self, method: str) -> None:
        """A 400 for a method this server cannot run (its options are missing or wrong)."""
        if method in self.config_errors:
            raise APIError(400, f"method '{method}' is not available here: {self.config_errors[method]}", param="method")

    def submit(self, job: Job, post: Callable[[Event], None]) -> Handle:
        self.check_method(job.method)
        if self.jobs.qsize() >= self.cfg.max_queue:
            raise APIError(429, "too many requests are waiting; retry later", kind="rate_limit_error")
        handle = Handle(job, post)
        self.metrics.queued(waiting=1)
        self.jobs.put(handle)
        return handle

    def _draft(self, method: str) -> Any:
        name = draft_name(self.configs[method], self.bundle.name)
        if name is None:
            return None
        if name not in self.drafts:  # loaded once, on the worker thread, on first use
            from ..models import load_like

            self.drafts[name] = load_like(name, self.bundle)
        return self.drafts[name]

    def _loop(self) -> None:
        while True:
            handle = self.jobs.get()
            if handle is None:
                return
            self.metrics.queued(waiting=-1)
            if handle.cancelled.is_set():
                continue
            self.metrics.queued(running=1)
            try:
                self._run(handle)
            finally:
                self.metrics.queued(running=-1)

    def _run(self, handle: Handle) -> None:
        from ..generate import generate

        job = handle.job

        def on_text(delta: str) -> None:
            if handle.cancelled.is_set():
                raise _Cancelled()
            if handle.first_token_s is None:
                handle.first_token_s = time.perf_counter() - job.arrived
            handle.post(("text", delta))

        try:
            result = generate(self.bundle, job.prompt_ids, method=job.method, gen=job.gen,
                              method_config=self.configs[job.method], raw=True, on_text=on_text,
                              draft=self._draft(job.method))
        except _Cancelled:
            return
        except SpecgenError as exc:
            handle.post(("error", APIError(400, str(exc))))
            return
        except Exception as exc:  # noqa: BLE001 - a bug must not stop the server: 500 for this request only
            handle.post(("error", APIError(500, f"internal error ({type(exc).__name__}: {exc})", kind="server_error")))
            return
        latency = time.perf_counter() - job.arrived
        self.metrics.finished(spec_metrics(result.stats), len(job.prompt_ids), len(result.token_ids),
                              result.finish_reason, latency, handle.first_token_s)
        handle.post(("done", result))
