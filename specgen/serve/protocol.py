"""The OpenAI wire format: request bodies checked into a `Job`, results and chunks as JSON dicts.

Follows the OpenAI API (and vLLM's server where OpenAI is silent): `POST /v1/completions` takes a raw
`prompt`, `POST /v1/chat/completions` takes `messages` through the model's chat template; `n` must
be 1; `method` (an extra body field, `extra_body={"method": ...}` in the official client) picks a
specgen method for one request. Every problem is an `APIError` with a 4xx status and OpenAI's error
object, raised before the request reaches the model.
"""
from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..config import GenerationConfig, SamplingConfig
from ..errors import SpecgenError

DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default max_tokens for completions
DEFAULT_CHAT_TOKENS = 256  # chat has no fixed default upstream; capped by the context
ROLES = ("system", "user", "assistant")
FINISH = {"eos": "stop", "stop": "stop", "length": "length"}  # ours -> OpenAI's finish_reason


class APIError(Exception):
    """A request the server refuses: HTTP `status` and OpenAI's error object."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class Job:
    """One checked request, ready for the worker."""

    kind: str  # "completion" | "chat"
    model: str
    prompt_ids: list[int]
    gen: GenerationConfig
    method: str
    stream: bool
    raw: bool
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    created: int = field(default_factory=lambda: int(time.time()))
    arrived: float = field(default_factory=time.perf_counter)


def _number(body: dict[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    v = body.get(name, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
        raise APIError(400, f"'{name}' must be a number in [{lo}, {hi}], got {v!r}", param=name)
    return float(v)


def _integer(body: dict[str, Any], name: str, lo: int, hi: int) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise APIError(400, f"'{name}' must be an integer in [{lo}, {hi}], got {v!r}", param=name)
    return v


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    v = body.get("stop")
    if v is None:
        return ()
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or len(items) > 4 or not all(isinstance(s, str) and s for s in items):
        raise APIError(400, "'stop' must be a non-empty string or a list of at most 4 of them", param="stop")
    return tuple(items)


def _common(body: Any, served: str, methods: tuple[str, ...], default_method: str) -> tuple[str, str, bool]:
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise APIError(400, "'model' is required (a string)", param="model")
    if model != served:
        raise APIError(404, f"the model '{model}' does not exist; this server serves '{served}'", param="model",
                       code="model_not_found")
    method = body.get("method", default_method)
    if not isinstance(method, str) or method not in methods:
        raise APIError(400, f"unknown method {method!r} (choose from {', '.join(methods)})", param="method")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise APIError(400, "'stream' must be true or false", param="stream")
    for name in ("n", "best_of"):
        if body.get(name) not in (None, 1):
            raise APIError(400, f"'{name}' must be 1: one choice per request", param=name)
    for name in ("logprobs", "top_logprobs", "echo", "suffix", "tools", "logit_bias"):
        if body.get(name) not in (None, False, 0, [], {}):
            raise APIError(400, f"'{name}' is not supported by this server", param=name)
    return model, method, stream


def _generation(body: dict[str, Any], prompt_len: int, context: int | None, default_tokens: int) -> GenerationConfig:
    room = None if context is None else context - prompt_len
    if room is not None and room < 1:
        raise APIError(400, f"the prompt has {prompt_len} tokens and fills the model's context ({context})",
                       param="messages" if default_tokens == DEFAULT_CHAT_TOKENS else "prompt",
                       code="context_length_exceeded")
    max_tokens = _integer(body, "max_tokens", 1, 1 << 30) or _integer(body, "max_completion_tokens", 1, 1 << 30)
    if max_tokens is not None and room is not None and max_tokens > room:
        raise APIError(400, f"max_tokens {max_tokens} + the prompt's {prompt_len} tokens exceed the model's "
                       f"context ({context})", param="max_tokens", code="context_length_exceeded")
    if max_tokens is None:
        max_tokens = default_tokens if room is None else min(default_tokens, room)
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p <= 0.0:
        raise APIError(400, "'top_p' must be in (0, 1]", param="top_p")
    seed = _integer(body, "seed", 0, 2**63 - 1)
    try:
        return GenerationConfig(max_new_tokens=max_tokens, stop=_stop(body),
                                sampling=SamplingConfig(temperature=temperature, top_p=top_p, seed=seed))
    except SpecgenError as exc:
        raise APIError(400, str(exc)) from None


def parse_completion(body: Any, *, served: str, methods: tuple[str, ...], default_method: str, tokenizer: Any,
                     context: int | None) -> Job:
    """A `/v1/completions` body as a Job (raw prompt, no chat template)."""
    model, method, stream = _common(body, served, methods, default_method)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt.strip():
        raise APIError(400, "'prompt' must be a non-empty string", param="prompt")
    ids = [int(t) for t in tokenizer(prompt, add_special_tokens=True)["input_ids"]]
    gen = _generation(body, len(ids), context, DEFAULT_COMPLETION_TOKENS)
    return Job("completion", model, ids, gen, method, stream, True)


def parse_chat(body: Any, *, served: str, methods: tuple[str, ...], default_method: str, tokenizer: Any,
               context: int | None) -> Job:
    """A `/v1/chat/completions` body as a Job (messages through the chat template)."""
    from ..generate import encode_messages

    model, method, stream = _common(body, served, methods, default_method)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list", param="messages")
    clean = []
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise APIError(400, f"each message needs a role ({', '.join(ROLES)}) and string content", param="messages")
        clean.append({"role": m["role"], "content": m["content"]})
    try:
        ids = encode_messages(tokenizer, clean)
    except SpecgenError as exc:
        raise APIError(400, str(exc), param="messages") from None
    gen = _generation(body, len(ids), context, DEFAULT_CHAT_TOKENS)
    return Job("chat", model, ids, gen, method, stream, False)


def spec_metrics(stats: Any) -> dict[str, Any]:
    """Per-request speculative decoding figures, named as vLLM's counters are."""
    drafted = list(stats.position_drafted)
    return {"method": stats.method, "num_drafts": drafted[0] if drafted else 0,
            "num_draft_tokens": stats.drafted, "num_accepted_tokens": stats.accepted,
            "mean_acceptance_length": round(stats.mean_acceptance_length, 4), "steps": stats.steps,
            "num_accepted_tokens_per_pos": list(stats.position_accepted), "num_drafts_per_pos": drafted}


def usage(job: Job, result: Any) -> dict[str, int]:
    n = len(result.token_ids)
    return {"prompt_tokens": len(job.prompt_ids), "completion_tokens": n, "total_tokens": len(job.prompt_ids) + n}


def final_body(job: Job, result: Any) -> dict[str, Any]:
    """The non-streaming response."""
    reason = FINISH.get(result.finish_reason, "stop")
    if job.kind == "chat":
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": result.text},
                                  "finish_reason": reason, "logprobs": None}
        obj = "chat.completion"
    else:
        choice, obj = {"index": 0, "text": result.text, "finish_reason": reason, "logprobs": None}, "text_completion"
    return {"id": _id(job), "object": obj, "created": job.created, "model": job.model, "choices": [choice],
            "usage": usage(job, result), "spec_decode": spec_metrics(result.stats)}


def chunk_body(job: Job, delta: str | None, finish: str | None = None, result: Any = None,
               first: bool = False) -> dict[str, Any]:
    """One server-sent event of a streaming response (`delta` text, or the last chunk with `finish`)."""
    if job.kind == "chat":
        d: dict[str, Any] = {"role": "assistant", "content": ""} if first else ({"content": delta} if delta else {})
        choice: dict[str, Any] = {"index": 0, "delta": d, "finish_reason": finish, "logprobs": None}
        obj = "chat.completion.chunk"
    else:
        choice, obj = {"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": None}, "text_completion"
    body = {"id": _id(job), "object": obj, "created": job.created, "model": job.model, "choices": [choice]}
    if result is not None:
        body.update(usage=usage(job, result), spec_decode=spec_metrics(result.stats))
    return body


def _id(job: Job) -> str:
    return ("chatcmpl-" if job.kind == "chat" else "cmpl-") + job.id
