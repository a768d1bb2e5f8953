"""The worker that owns the model: requests queue up and one thread decodes them, batched continuously.

One thread touches the model (the model runner owns device and buffers); the HTTP side only
submits checked Jobs and reads events. Up to `max_batch_size` requests decode together on the
batched step engine (`decoding.batch.BatchDecoder`: one verification forward per step for all of
them, each with its own method); a finished or cancelled request leaves at once and the next queued
one joins before the following step. Alone, a request runs the plain engine step `specgen
generate` runs, so a served greedy answer is the CLI's answer token for token. Methods with their
own driver (SpecGuard) cannot share a forward: they run through `generate`, between batched steps.

A request whose client went away is dropped from the queue, or leaves the batch at its next step.
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
        self.calibrations: dict[tuple[str, bool], Any] = {}  # (method, greedy) -> shared AcceptanceModel
        self._stored: dict[tuple[str, bool], tuple[Any, dict[str, Any]]] = {}  # key -> (gen it was loaded for, counts then)
        self.jobs: "queue.Queue[Handle | None]" = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name="specgen-worker", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.jobs.put(None)
        self.thread.join(timeout=30)
        if not self.thread.is_alive():
            self._save_stored()

    def _save_stored(self) -> None:
        """Write back the stored calibrations its requests changed (a method that never drafts, ar, leaves none).

        Compared as counts, not their sum: a bin at its window keeps its total while new evidence moves it."""
        from ..decoding.stored import save_calibration

        for (method, greedy), (gen, loaded) in self._stored.items():
            cal = self.calibrations[(method, greedy)]
            if cal.to_dict() != loaded:
                save_calibration(self.bundle.model, method, self.configs[method], gen, cal)

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

    def draft(self, method: str) -> Any:
        """The draft model `method` uses here (loaded on first use), or None."""
        name = draft_name(self.configs[method], self.bundle.name)
        if name is None:
            return None
        if name not in self.drafts:  # loaded once, on the worker thread, on first use
            from ..models import load_like

            self.drafts[name] = load_like(name, self.bundle)
        return self.drafts[name]

    def _calibration(self, job: Job) -> Any:
        """The acceptance model `job` shares with earlier requests of its method (None: its own)."""
        from ..decoding.calibration import SHARED_WINDOW, AcceptanceModel

        if not self.cfg.shared_calibration:
            return None
        key = (job.method, job.gen.sampling.greedy)
        if key not in self.calibrations:
            if self.cfg.stored_calibration:
                from ..decoding.stored import load_calibration

                cal = load_calibration(self.bundle.model, job.method, self.configs[job.method], job.gen)
                self._stored[key] = (job.gen, cal.to_dict())
            else:
                cal = AcceptanceModel.for_sizing(job.gen.tree_sizing, window=SHARED_WINDOW)
            self.calibrations[key] = cal
        return self.calibrations[key]

    def _loop(self) -> None:
        from ..decoding.batch import BatchDecoder, LoadAwareDrafting

        self.decoder = BatchDecoder(self.bundle, LoadAwareDrafting(self.cfg.spec_disable_batch_size))
        self._warm()
        while True:
            if not self._admit():
                return
            if self.decoder.rows:
                self._step()

    def _warm(self) -> None:
        """Time the model's verification cost profile (cached on disk) before the first request, as
        an engine profiles at start-up: no request pays for the calibration in its latency."""
        import torch

        from ..config import GenerationConfig
        from ..decoding.profiles import cost_profile
        from ..adapter import use_tree_attention
        from ..decoding.verify import prefill

        sizing = GenerationConfig().tree_sizing
        if sizing.mode != "cost":
            return
        vocab = int(self.bundle.model.config.vocab_size)
        ids = [i % vocab for i in range(1, 17)]  # any 16 tokens: the timing does not depend on them
        try:
            use_tree_attention(self.bundle.model)
            with torch.inference_mode():
                cache, _, _ = prefill(self.bundle.model, ids)
                # the batch pads its forwards by it, whatever its rows' methods (ar rows too)
                self.decoder.load.profile = cost_profile(self.bundle.model, cache, len(ids), sizing)[0]
        except Exception:  # noqa: BLE001 - then the first drafting request times it, as generate does
            pass

    def _admit(self) -> bool:
        """Move queued jobs into the batch while it has room (wait for one when it is empty); False on stop."""
        from ..proposers.registry import get_method

        while len(self.decoder.rows) < self.cfg.max_batch_size:
            try:
                handle = self.jobs.get(block=not self.decoder.rows)
            except queue.Empty:
                return True
            if handle is None:
                return False
            self.metrics.queued(waiting=-1)
            if handle.cancelled.is_set():
                continue
            self.metrics.queued(running=1)
            if get_method(handle.job.method).factory is None:  # a driver (SpecGuard): alone, through generate
                try:
                    self._run(handle)
                finally:
                    self.metrics.queued(running=-1)
                continue
            self._join(handle)
        return True

    def _join(self, handle: Handle) -> None:
        """Prefill `handle`'s prompt and add it to the batch (or answer it with its error)."""
        from ..decoding.batch import start_row
        from ..generate import TextStream

        job = handle.job
        stream = TextStream(self.bundle.tokenizer, job.gen.stop, lambda delta: self._post_text(handle, delta))
        try:
            row = start_row(self.bundle, job.prompt_ids, job.method, job.gen, self.configs[job.method],
                            draft=self.draft(job.method), key=(handle, stream), on_tokens=stream.push,
                            calibration=self._calibration(job))
        except _Cancelled:
            self.metrics.queued(running=-1)
            return
        except Exception as exc:  # noqa: BLE001 - one request's failure is its own error, the server goes on
            self.metrics.queued(running=-1)
            handle.post(("error", _api_error(exc)))
            return
        self.decoder.add(row)
        if row.done:
            self._leave(row)

    def _post_text(self, handle: Handle, delta: str) -> None:
        if handle.cancelled.is_set():
            raise _Cancelled()
        if handle.first_token_s is None:
            handle.first_token_s = time.perf_counter() - handle.job.arrived
        handle.post(("text", delta))

    def _step(self) -> None:
        """One batched step; stream each row's new tokens; finished and cancelled rows leave."""
        rows = list(self.decoder.rows)
        try:
            records = self.decoder.step()
        except Exception as exc:  # noqa: BLE001 - a bug fails the requests in this batch, not the server
            for row in self.decoder.reset():
                self.metrics.queued(running=-1)
                row.key[0].post(("error", _api_error(exc)))
            return
        self.metrics.stepped(len(rows), any(rec.drafted for rec in records))
        for row, rec in zip(rows, records):
            handle, stream = row.key
            try:
                stream.push(list(rec.new_tokens))
            except _Cancelled:
                pass
            if row.done or handle.cancelled.is_set():
                self._leave(row)

    def _leave(self, row: Any) -> None:
        from ..generate import GenerationResult

        handle, stream = row.key
        res = self.decoder.remove(row)
        self.metrics.queued(running=-1)
        if handle.cancelled.is_set():
            return
        try:
            text = stream.close()
        except _Cancelled:
            return
        result = GenerationResult(text, res.token_ids, res.stats, res.finish_reason)
        self.metrics.finished(spec_metrics(result.stats), len(handle.job.prompt_ids), len(result.token_ids),
                              result.finish_reason, time.perf_counter() - handle.job.arrived, handle.first_token_s)
        handle.post(("done", result))

    def _run(self, handle: Handle) -> None:
        from ..generate import generate

        job = handle.job
        try:
            result = generate(self.bundle, job.prompt_ids, method=job.method, gen=job.gen,
                              method_config=self.configs[job.method], raw=True,
                              on_text=lambda delta: self._post_text(handle, delta), draft=self.draft(job.method))
        except _Cancelled:
            return
        except Exception as exc:  # noqa: BLE001 - a bug must not stop the server: 500 for this request only
            handle.post(("error", _api_error(exc)))
            return
        latency = time.perf_counter() - job.arrived
        self.metrics.finished(spec_metrics(result.stats), len(job.prompt_ids), len(result.token_ids),
                              result.finish_reason, latency, handle.first_token_s)
        handle.post(("done", result))


def _api_error(exc: Exception) -> APIError:
    """A request's failure as its API error: 400 for a SpecgenError (bad options), 500 for a bug."""
    if isinstance(exc, SpecgenError):
        return APIError(400, str(exc))
    return APIError(500, f"internal error ({type(exc).__name__}: {exc})", kind="server_error")
