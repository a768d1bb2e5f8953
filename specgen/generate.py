"""Library entry point: `generate()` runs one method on one prompt, text streamed as it is accepted.

Looks the method up in the registry: a token-level method's proposer and acceptance rule run on
the step engine (`decoding.loop.decode`); a step-level method runs its registered driver.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .config import GenerationConfig
from .decoding.calibration import AcceptanceModel
from .decoding.loop import decode
from .decoding.stored import load_calibration, save_calibration
from .decoding.stats import GenerationStats
from .errors import SpecgenError
from .proposers.base import NullProposer
from .proposers.registry import get_method

TextCallback = Callable[[str], None]


@dataclass
class GenerationResult:
    """What `generate` returns: the text, its token ids, the statistics, why it stopped."""

    text: str
    token_ids: list[int]
    stats: GenerationStats
    finish_reason: str
    extra: dict[str, Any] = field(default_factory=dict)  # method-specific detail (e.g. specguard steps)

    def to_dict(self) -> dict[str, Any]:
        """The `--json` object: text, token_ids, stats (plus method detail when present)."""
        d: dict[str, Any] = {"text": self.text, "token_ids": self.token_ids, "finish_reason": self.finish_reason,
                             "stats": self.stats.to_dict()}
        d.update(self.extra)
        return d


def encode_prompt(tokenizer: Any, prompt: str, *, raw: bool = False, system: str | None = None) -> list[int]:
    """Prompt token ids: through the chat template when the tokenizer has one, unless `raw`."""
    if not prompt.strip():
        raise SpecgenError("empty prompt")
    if not raw and getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        return encode_messages(tokenizer, messages)
    return [int(t) for t in tokenizer(prompt, add_special_tokens=True)["input_ids"]]


def encode_messages(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of a chat (role/content dicts) through the tokenizer's chat template, ready for the reply."""
    if not getattr(tokenizer, "chat_template", None):
        raise SpecgenError("this model has no chat template: use a raw prompt (completions) instead")
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "keys"):  # BatchEncoding in transformers 5
        ids = ids["input_ids"]
    return [int(t) for t in ids]


class TextStream:
    """Turns accepted token ids into text deltas: decodes the whole output, emits what is new.

    Holds back an incomplete UTF-8 character and any tail that could still become a stop string,
    so nothing printed has to be taken back.
    """

    def __init__(self, tokenizer: Any, stop: tuple[str, ...], sink: TextCallback) -> None:
        self.tokenizer, self.stop, self.sink = tokenizer, stop, sink
        self.ids: list[int] = []
        self.sent = 0
        self.hold = max((len(s) for s in stop), default=1) - 1

    def text(self) -> str:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        return text[:cut] if cut >= 0 else text

    def push(self, ids: list[int]) -> None:
        self.ids += ids
        text = self.text()
        end = len(text) - self.hold
        while end > self.sent and text[end - 1] == "\ufffd":
            end -= 1
        if end > self.sent:
            self.sink(text[self.sent:end])
            self.sent = end

    def close(self) -> str:
        text = self.text()
        if len(text) > self.sent:
            self.sink(text[self.sent:])
            self.sent = len(text)
        return text


def generate(target: Any, prompt: str | list[int], *, method: str = "ar", gen: GenerationConfig | None = None,
             method_config: Any = None, raw: bool = False, on_text: TextCallback | None = None,
             draft: Any = None, prefilled: Any = None, calibration: "AcceptanceModel | str | None" = None) -> GenerationResult:
    """Generate a continuation of `prompt` (text, or token ids used as they are) with `method`.

    `target` is a loaded ModelBundle; `method_config` the method's config dataclass (its defaults
    when None); `on_text` receives text deltas as tokens are accepted; `draft` an optional
    preloaded draft ModelBundle for methods that use one; `prefilled` a `decoding.loop.Prefilled`
    cache holding the prompt (token-level methods only). `calibration` (token-level methods): None
    starts tree sizing's acceptance calibration from its prior; an `AcceptanceModel` is shared with
    the other generations given it, as a server shares one per method; "stored" loads the one kept on
    disk for this model and method and saves it back after the run (`decoding.stored`).
    """
    gen = gen or GenerationConfig()
    spec = get_method(method)
    cfg = method_config if method_config is not None else spec.config_cls()
    if not isinstance(cfg, spec.config_cls):
        raise SpecgenError(f"method '{method}' takes a {spec.config_cls.__name__}, got {type(cfg).__name__}")
    if spec.driver is not None:
        return spec.driver(target, prompt, gen=gen, config=cfg, raw=raw, on_text=on_text, draft=draft, prefilled=prefilled)
    assert spec.factory is not None
    if calibration is not None and calibration != "stored" and not isinstance(calibration, AcceptanceModel):
        raise SpecgenError(f"calibration must be None, 'stored' or an AcceptanceModel, got {calibration!r}")
    prompt_ids = prompt if isinstance(prompt, list) else encode_prompt(target.tokenizer, prompt, raw=raw)
    proposer = spec.factory(target, cfg) if draft is None else spec.factory(target, cfg, draft=draft)
    stream = TextStream(target.tokenizer, gen.stop, on_text or (lambda _: None))
    # A proposer that never drafts has nothing to calibrate: no stored file is read or written.
    stored = calibration == "stored" and not isinstance(proposer, NullProposer)
    if calibration == "stored":
        shared = load_calibration(target.model, method, cfg, gen) if stored else None
    else:
        shared = calibration
    # Without a listener the text is decoded once at the end, not re-decoded at every step.
    res = decode(target, prompt_ids, proposer, gen, method=method, rule=spec.rule(target, cfg),
                 on_tokens=stream.push if on_text is not None else None, prefilled=prefilled, calibration=shared)
    if stored:
        save_calibration(target.model, method, cfg, gen, shared)
    if on_text is None:
        stream.ids = list(res.token_ids)
    text = stream.close()
    return GenerationResult(text, res.token_ids, res.stats, res.finish_reason)

