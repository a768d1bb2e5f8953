"""Shared fixtures: the real embedded model (session-scoped) and tiny random LLaMAs.

TRITON_INTERPRET must be set before any Triton kernel is decorated (first import of
specgen.kernels.*), so it is set here, at the root, before test modules import specgen.
"""
from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

from types import SimpleNamespace  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session")
def real_bundle() -> Any:
    """The embedded SmolLM2-135M-Instruct, loaded once per session."""
    from specgen.models import load_model

    torch.manual_seed(0)
    return load_model()


def make_tiny_llama(vocab_size: int = 128, seed: int = 0, layers: int = 2) -> Any:
    """A random LLaMA: `layers` layers, hidden 64, 4 query heads over 2 KV heads (GQA)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    model = LlamaForCausalLM(cfg).eval()
    # Random init gives near-uniform logits; sharpen them so greedy paths and acceptance are non-trivial.
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    return model


class ByteTokenizer:
    """A minimal tokenizer over ids 0..vocab-1 for tests that never need real text."""

    eos_token_id = None
    chat_template = None

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(65 + (i % 26)) for i in ids)

    def get_vocab(self) -> dict[str, int]:
        return {}


@pytest.fixture()
def tiny_bundle() -> Any:
    """A ModelBundle-like object: tiny random LLaMA + byte tokenizer."""
    return SimpleNamespace(model=make_tiny_llama(), tokenizer=ByteTokenizer(), name="tiny", eos_ids=set())


@pytest.fixture(autouse=True)
def _own_calibration_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Every test keeps `specgen generate`'s stored acceptance calibrations in a folder of its own:
    what a test drafts never depends on what the user's cache (or an earlier test) learnt."""
    path = tmp_path_factory.mktemp("calibration")
    monkeypatch.setenv("SPECGEN_CALIBRATION_DIR", str(path))
    return path
