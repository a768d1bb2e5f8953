"""SpecGuard test fixtures: random LLaMAs over the embedded SmolLM2 tokenizer (target) and over a
byte-level BPE trained in milliseconds (draft), so steps really cross tokenizers."""
from __future__ import annotations

from typing import Any

import pytest
from _sg_tiny import byte_bpe, tiny_llama

from specgen.models import ModelBundle, resolve_model_path


@pytest.fixture(scope="session")
def smol_tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(resolve_model_path(None)[1]))


@pytest.fixture(scope="session")
def target_bundle(smol_tokenizer: Any) -> ModelBundle:
    tok = smol_tokenizer
    return ModelBundle(tiny_llama(len(tok), 0, eos=tok.eos_token_id), tok, "tiny-target", None)


@pytest.fixture(scope="session")
def draft_bundle() -> ModelBundle:
    tok = byte_bpe()
    return ModelBundle(tiny_llama(len(tok), 1, eos=tok.eos_token_id), tok, "tiny-draft", None)
