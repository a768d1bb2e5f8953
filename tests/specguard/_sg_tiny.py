"""Tiny stand-ins for the SpecGuard tests: random LLaMAs and a byte-level BPE trained in milliseconds."""
from __future__ import annotations

import argparse
import textwrap
from pathlib import Path
from typing import Any

import torch



def tiny_llama(vocab_size: int, seed: int, *, eos: int | None = None, bos: int | None = None) -> Any:
    """A 2-layer random LLaMA (hidden 64, GQA 4/2) with peaked logits (init std 0.2), eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2,
                      eos_token_id=eos, bos_token_id=bos, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


def byte_bpe(vocab_size: int = 400) -> Any:
    """A byte-level BPE trained on two stdlib modules (no chat template, like a base model)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator((Path(m.__file__).read_text(encoding="utf-8") for m in (argparse, textwrap)), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")
