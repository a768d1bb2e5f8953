"""Tiny stand-ins for the datastore tests: a BPE tokenizer trained in milliseconds, a random LLaMA.

Real text comes from the Python standard library's own sources, present wherever Python is.
"""
from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path
from typing import Any

import torch

CHAT_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def stdlib_sources() -> list[Path]:
    """A few real text files: stdlib modules (code, docstrings, comments)."""
    return [Path(argparse.__file__), Path(textwrap.__file__), Path(json.__file__).parent / "decoder.py",
            Path(json.__file__).parent / "encoder.py"]


def tiny_tokenizer(vocab_size: int = 512) -> Any:
    """A byte-level BPE tokenizer trained on stdlib text, with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator((p.read_text(encoding="utf-8") for p in stdlib_sources()[:2]), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", bos_token="<|im_start|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_model(vocab_size: int, seed: int = 0, layers: int = 2) -> Any:
    """A random 2-layer LLaMA, hidden 64, in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      initializer_range=0.2)
    return LlamaForCausalLM(cfg).eval()


def save_tiny(folder: Path, seed: int = 0, layers: int = 2) -> Path:
    """A loadable HF model folder (config, weights, tokenizer) of the tiny model."""
    tok = tiny_tokenizer()
    model = tiny_model(len(tok), seed, layers)
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder
