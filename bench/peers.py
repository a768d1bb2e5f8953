"""HF transformers peers, run beside our methods on the same prompts (DESIGN.md section 6).

- `hf-generate`: `model.generate`, greedy.
- `hf-pld`: the same with `prompt_lookup_num_tokens=10`.
- `hf-early-exit`: assisted generation with `assistant_early_exit=N` (the target's first N layers
  draft; N defaults to a quarter of the layers, like our `sd` self-draft).
- `hf-assisted`: assisted generation with `assistant_model` = the target's family draft from the
  catalog (Qwen2.5-Coder-0.5B for qwen2.5-coder-1.5b): HF's own speculative decoding with the
  draft our `sd --draft-model` uses; only for targets the catalog names a draft for.

The model runs with `sdpa` attention for the peer call and gets its previous implementation back
afterwards. Steps are counted with a forward hook on the last decoder layer, which only the
target's full forwards reach (early-exit drafts stop before it): steps = full forwards - 1
(the prefill), so tau = (new tokens - 1) / steps, the same convention as ours (`hf-generate` = 1.00).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import SpecgenError

PEERS = ("hf-generate", "hf-pld", "hf-early-exit")
ASSISTED = "hf-assisted"  # with a separate draft model: added when the target has a family draft
PLD_TOKENS = 10
EARLY_EXIT_FRACTION = 0.25


@dataclass
class PeerResult:
    """What a peer call yields: the same fields our GenerationResult stats give, where known."""

    token_ids: list[int]
    text: str
    wall_s: float
    steps: int | None
    finish_reason: str


def _last_layer(model: Any) -> Any:
    base = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    layers = getattr(base, "layers", None)
    return layers[-1] if layers is not None and len(layers) else None


def peer_kwargs(model: Any, name: str, early_exit_layers: int | None = None, assistant: Any = None) -> dict[str, Any]:
    """generate() keyword arguments of peer `name` (`assistant`: the draft ModelBundle of hf-assisted)."""
    if name == ASSISTED:
        if assistant is None:
            raise SpecgenError(f"peer {ASSISTED} needs a draft model")
        return {"assistant_model": assistant.model}
    if name == "hf-generate":
        return {}
    if name == "hf-pld":
        return {"prompt_lookup_num_tokens": PLD_TOKENS}
    if name == "hf-early-exit":
        n_layers = int(model.config.num_hidden_layers)
        n = early_exit_layers or max(1, round(n_layers * EARLY_EXIT_FRACTION))
        return {"assistant_early_exit": n}
    raise SpecgenError(f"unknown peer '{name}' (choose from {', '.join(PEERS)})")


@torch.inference_mode()
def run_peer(bundle: Any, name: str, prompt_ids: list[int], max_new_tokens: int, *, stop: tuple[str, ...] = (),
             early_exit_layers: int | None = None, assistant: Any = None) -> PeerResult:
    """Greedy HF `generate` of peer `name` on `prompt_ids`, timed from the call to its return.

    `stop` strings end generation through HF's `stop_strings`; the text is cut before the first one.
    """
    model, tok = bundle.model, bundle.tokenizer
    kwargs = peer_kwargs(model, name, early_exit_layers, assistant)
    if stop:
        kwargs.update(stop_strings=list(stop), tokenizer=tok)
    eos = sorted(bundle.eos_ids)
    calls = [0]
    layer = _last_layer(model)
    hook = layer.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1)) if layer is not None else None
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=bundle.model.device)
    models = [model] + ([assistant.model] if assistant is not None else [])
    previous_all = [getattr(m.config, "_attn_implementation", None) for m in models]
    try:
        for m in models:
            m.set_attn_implementation("sdpa")
        t0 = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, temperature=None, top_p=None, top_k=None,
                             eos_token_id=eos or None, pad_token_id=tok.pad_token_id if tok.pad_token_id is not None
                             else (eos[0] if eos else 0), **kwargs)
        wall = time.perf_counter() - t0
    except (ValueError, TypeError, NotImplementedError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpecgenError(f"peer {name} failed: {first}") from None
    finally:
        if hook is not None:
            hook.remove()
        for m, prev in zip(models, previous_all):
            if prev is not None:
                m.set_attn_implementation(prev)
    new = [int(t) for t in out[0, len(prompt_ids):].tolist()]
    cut = next((i + 1 for i, t in enumerate(new) if t in bundle.eos_ids), None)
    if cut is not None:
        new = new[:cut]
    reason = "eos" if cut is not None else "length"
    steps = calls[0] - 1 if layer is not None and calls[0] > 0 else None
    text = tok.decode(new, skip_special_tokens=True)
    cut_at = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    if cut_at >= 0:
        text, reason = text[:cut_at], "stop"
    return PeerResult(new, text, wall, steps, reason)
