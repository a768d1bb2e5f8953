"""oneDNN prepacked CPU linears (specgen.linear) against PyTorch's own linear, the oracle."""
from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from specgen.device import LINEAR_ENV, resolve_linear
from specgen.errors import SpecgenError
from specgen.linear import linear_backend, onednn_available, pack_linears
from tests.conftest import make_tiny_llama

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="this torch build has no oneDNN linear")


@needs_onednn
@pytest.mark.parametrize("shape", [(1, 64), (5, 64), (2, 7, 64), (3, 1, 64)])
def test_packed_linear_matches_aten(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    ref = torch.nn.Linear(64, 96, bias=True)
    packed = copy.deepcopy(ref)
    assert pack_linears(packed) == 1
    x = torch.randn(*shape)  # [..., 64]
    strided = torch.randn(*shape[:-1], 128)[..., ::2]  # [..., 64], not contiguous
    assert not strided.is_contiguous()
    with torch.inference_mode():
        got, want = packed(x), ref(x)  # [..., 96]
        got_s, want_s = packed(strided), ref(strided)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_s, want_s, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_packed_linear_bf16_matches_aten() -> None:
    torch.manual_seed(0)
    ref = torch.nn.Linear(64, 96, bias=False).to(torch.bfloat16)
    packed = copy.deepcopy(ref)
    assert pack_linears(packed) == 1
    x = torch.randn(4, 64, dtype=torch.bfloat16)  # [n, 64]
    with torch.inference_mode():
        got, want = packed(x), ref(x)  # [n, 96]
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)


@needs_onednn
def test_packed_linear_empty_and_guards() -> None:
    lin = torch.nn.Linear(8, 4, bias=False)
    pack_linears(lin)
    assert lin.weight.device.type == "meta" and lin.weight.shape == (4, 8)  # not held twice
    with torch.inference_mode():
        assert lin(torch.randn(0, 8)).shape == (0, 4)
    with pytest.raises(RuntimeError, match="inference only"):
        lin(torch.randn(2, 8, requires_grad=True))
    assert pack_linears(lin) == 0  # packing twice is a no-op


@needs_onednn
def test_tiny_llama_packed_logits_and_greedy_equal() -> None:
    ref = make_tiny_llama(vocab_size=128, seed=3)
    model = copy.deepcopy(ref)
    n_linear = sum(type(m) is torch.nn.Linear for m in model.modules())
    assert pack_linears(model) == n_linear and linear_backend(model) == "onednn"
    assert linear_backend(ref) == "aten"
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(1))  # [B, T]
    with torch.inference_mode():
        want = ref(ids).logits  # [B, T, V]
        got = model(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert torch.equal(got.argmax(-1), want.argmax(-1))


@needs_onednn
def test_tied_head_weight_is_kept() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    pack_linears(model)
    assert model.model.embed_tokens.weight.device.type == "cpu"  # the embedding still reads it
    assert model.model.layers[0].mlp.up_proj.weight.device.type == "meta"
    assert model.device.type == "cpu"
    with torch.inference_mode():
        model(torch.tensor([[1, 2, 3]]))


def test_resolve_linear(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setenv(LINEAR_ENV, "aten")
    assert resolve_linear(cpu, torch.float32) == "aten"
    monkeypatch.setenv(LINEAR_ENV, "auto")
    assert resolve_linear(cpu, torch.float32) == ("onednn" if onednn_available() else "aten")
    assert resolve_linear(cpu, torch.float16) == "aten"  # fp32 and bf16 are packed, fp16 is not
    assert resolve_linear(torch.device("cuda"), torch.float32) == "aten"
    monkeypatch.setenv(LINEAR_ENV, "fast")
    with pytest.raises(SpecgenError, match=LINEAR_ENV):
        resolve_linear(cpu, torch.float32)


@needs_onednn
def test_profile_key_tells_backends_apart(tiny_bundle: Any) -> None:
    from specgen.decoding.profiles import profile_key
    from specgen.decoding.sizing import TreeSizingConfig

    cfg = TreeSizingConfig()
    before = profile_key(tiny_bundle.model, cfg)
    pack_linears(tiny_bundle.model)
    assert profile_key(tiny_bundle.model, cfg) != before


@needs_onednn
def test_real_model_loads_packed(real_bundle: Any) -> None:
    """`load_model` packs the embedded model on the CPU by default (SPECGEN_CPU_LINEAR unset)."""
    from specgen.config import GenerationConfig
    from specgen.generate import generate

    assert linear_backend(real_bundle.model) == "onednn"
    assert real_bundle.model.model.layers[0].mlp.down_proj.weight.device.type == "meta"
    out = generate(real_bundle, "Say hi.", method="ar", gen=GenerationConfig(max_new_tokens=2))
    assert out.stats.linear == "onednn"  # the statistics say which path ran


def test_load_model_keeps_aten_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    from specgen.models import load_model

    monkeypatch.setenv(LINEAR_ENV, "aten")
    bundle = load_model()
    assert linear_backend(bundle.model) == "aten"
    assert bundle.model.model.layers[0].mlp.down_proj.weight.device.type == "cpu"
