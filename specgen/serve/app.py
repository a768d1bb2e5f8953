"""`specgen serve`: the OpenAI-compatible HTTP server (FastAPI), on top of one `Worker`.

Routes: `POST /v1/completions`, `POST /v1/chat/completions` (`stream: true` as server-sent events
in OpenAI's chunk format, ending with `data: [DONE]`), `GET /v1/models`, `GET /health`,
`GET /metrics` (Prometheus text). Every refusal is OpenAI's error object with a 4xx status (401
without the API key, 404 unknown model or route, 413 oversized body, 429 queue full, 400 the rest),
and the server keeps serving.
"""
from __future__ import annotations

import asyncio
import hmac
import json
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .config import ServeConfig
from .metrics import ServerMetrics
from .protocol import APIError, Job, chunk_body, final_body, parse_chat, parse_completion
from .worker import Event, Worker


def _error(exc: APIError) -> Any:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


async def _read_json(request: Any, limit: int) -> Any:
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise APIError(413, f"the request body is larger than {limit} bytes")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise APIError(413, f"the request body is larger than {limit} bytes")
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise APIError(400, f"the request body is not valid JSON ({exc})") from None


def create_app(bundle: Any, cfg: ServeConfig) -> Any:
    """The FastAPI app serving `bundle` with `cfg`; the worker starts and stops with the app."""
    from ..adapter import context_length

    metrics = ServerMetrics(cfg.served_name)
    worker = Worker(bundle, cfg, metrics)
    context = context_length(bundle.model)

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        worker.start()
        yield
        worker.stop()

    app = FastAPI(title="specgen", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.worker, app.state.metrics = worker, metrics

    @app.exception_handler(APIError)
    async def api_error(_: Request, exc: APIError) -> Any:
        return _error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Any:
        return _error(APIError(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None))

    def authorize(request: Request) -> None:
        if cfg.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not (given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), cfg.api_key.encode())):
            raise APIError(401, "a valid API key is required (Authorization: Bearer <key>)",
                           kind="authentication_error", code="invalid_api_key")

    async def serve(request: Request, parse: Callable[..., Job]) -> Any:
        authorize(request)
        body = await _read_json(request, cfg.max_body_bytes)
        job = parse(body, served=cfg.served_name, methods=worker.methods, default_method=cfg.method,
                    tokenizer=bundle.tokenizer, context=context)
        loop = asyncio.get_running_loop()
        events: "asyncio.Queue[Event]" = asyncio.Queue()
        handle = worker.submit(job, lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev))
        if job.stream:
            return StreamingResponse(_stream(job, events, handle), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        try:
            while True:
                try:
                    kind, value = await asyncio.wait_for(events.get(), timeout=0.5)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        handle.cancel()
                        return JSONResponse({}, status_code=499)
                    continue
                if kind == "error":
                    return _error(value)
                if kind == "done":
                    return JSONResponse(final_body(job, value))
        except asyncio.CancelledError:
            handle.cancel()
            raise

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await serve(request, parse_completion)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        return await serve(request, parse_chat)

    @app.get("/v1/models")
    async def models(request: Request) -> Any:
        authorize(request)
        return {"object": "list", "data": [{"id": cfg.served_name, "object": "model", "created": 0,
                                            "owned_by": "specgen", "max_model_len": context}]}

    @app.get("/health")
    async def health() -> Any:
        ok = worker.thread.is_alive()
        return JSONResponse({"status": "ok" if ok else "worker stopped"}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def prometheus() -> Any:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    return app


async def _stream(job: Job, events: "asyncio.Queue[Event]", handle: Any) -> AsyncIterator[str]:
    """Server-sent events: a first chunk (chat: the role), text deltas, the last chunk, [DONE]."""
    def sse(obj: dict[str, Any]) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    try:
        if job.kind == "chat":
            yield sse(chunk_body(job, None, first=True))
        while True:
            kind, value = await events.get()
            if kind == "text":
                yield sse(chunk_body(job, value))
            elif kind == "error":
                yield sse(value.body())
                break
            else:
                from .protocol import FINISH

                yield sse(chunk_body(job, None, FINISH.get(value.finish_reason, "stop"), result=value))
                break
        yield "data: [DONE]\n\n"
    finally:  # the client went away (or the stream ended): a job still running stops at its next token
        handle.cancel()
