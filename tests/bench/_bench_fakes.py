"""Fakes for the bench tests: a whitespace tokenizer and a generate function that needs no model."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from specgen.decoding.stats import GenerationStats, StepRecord


class FakeTokenizer:
    """Whitespace 'tokenizer': ids are word lengths; enough for encode_prompt."""

    chat_template = None
    eos_token_id = 0
    pad_token_id = 0

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [len(w) for w in text.split()]}

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return " ".join(f"t{i}" for i in ids)


class FakeGenerate:
    """Stands in for specgen.generate.generate: ar emits 1 token/step, others 2; counts calls."""

    def __init__(self, wall: dict[str, float] | None = None, diverge: set[str] = frozenset()) -> None:
        self.calls: list[tuple[str, int]] = []
        self.wall = wall or {}
        self.diverge = diverge

    def __call__(self, target: Any, prompt_ids: list[int], *, method: str, gen: Any, method_config: Any = None,
                 draft: Any = None) -> Any:
        self.calls.append((method, gen.max_new_tokens))
        n = gen.max_new_tokens
        ids = [(sum(prompt_ids) + i) % 50 + 1 for i in range(n)]
        if method in self.diverge:
            ids[-1] += 1
        stats = GenerationStats(method=method, new_tokens=n, prompt_tokens=len(prompt_ids))
        per = 1 if method == "ar" else 2
        left = n - 1  # the prefill emits the first token
        while left > 0:
            k = min(per, left)
            stats.add_step(StepRecord(drafted=0 if method == "ar" else 3, draft_depth=0 if method == "ar" else 3,
                                      accepted=k - 1, emitted=k, t_propose=0.01, t_verify=0.05, t_accept=0.001))
            left -= k
        stats.wall_s = self.wall.get(method, 1.0)
        stats.prefill_s = 0.1
        text = " ".join(f"t{i}" for i in ids)
        return SimpleNamespace(text=text, token_ids=ids, stats=stats, finish_reason="length", extra={})


CHAT_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_bundle(vocab_size: int = 300, layers: int = 4) -> Any:
    """A random 4-layer LlamaForCausalLM with a BPE tokenizer trained in milliseconds on stdlib text."""
    import argparse
    from pathlib import Path

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from specgen.models import ModelBundle

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([Path(argparse.__file__).read_text(encoding="utf-8")[:20000]], trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", bos_token="<|im_start|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      eos_token_id=fast.eos_token_id, bos_token_id=fast.bos_token_id, pad_token_id=fast.pad_token_id)
    model = LlamaForCausalLM(cfg).eval()
    return ModelBundle(model=model, tokenizer=fast, name="tiny-llama", path=None)
