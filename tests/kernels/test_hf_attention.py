"""The "specgen_tree" transformers attention on a tiny random Llama, with both kernel backends."""
from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from specgen.kernels.hf_attention import TreeAttentionContext, register

BACKENDS = ["torch", "triton"]
ATOL = 1e-4  # fp32 model; logits differ from sdpa/eager by summation order only


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch, device) -> str:
    monkeypatch.setenv("SPECGEN_KERNELS", request.param)
    return request.param


def _logits(model, impl, ids, **kwargs) -> torch.Tensor:
    model.set_attn_implementation(impl)
    with torch.no_grad():
        return model(ids, **kwargs).logits


def test_register_is_idempotent():
    assert register() == register() == "specgen_tree"


def test_causal_forward_matches_sdpa_and_eager(model, backend):
    ids = torch.randint(0, 128, (2, 11), generator=torch.Generator().manual_seed(1))
    ours = _logits(model, register(), ids)
    for impl in ("sdpa", "eager"):
        torch.testing.assert_close(ours, _logits(model, impl, ids), atol=ATOL, rtol=ATOL)


def test_generate_without_context(model, backend):
    ids = torch.randint(0, 128, (1, 6), generator=torch.Generator().manual_seed(2))
    model.set_attn_implementation("sdpa")
    expected = model.generate(ids, max_new_tokens=6, do_sample=False)
    model.set_attn_implementation(register())
    assert torch.equal(model.generate(ids, max_new_tokens=6, do_sample=False), expected)


def _tree():
    """A 7-node tree under the prefix: two roots, branches of depth 1..3."""
    parents = [-1, 0, 0, 1, -1, 4, 3]
    n = len(parents)
    mask = torch.zeros(n, n, dtype=torch.bool)
    depth = []
    for i in range(n):
        j, d = i, 0
        while j >= 0:
            mask[i, j] = True
            j, d = parents[j], d + 1
        depth.append(d - 1)
    return parents, mask, torch.tensor(depth)


def _branch(parents, i):
    chain = []
    while i >= 0:
        chain.append(i)
        i = parents[i]
    return chain[::-1]


def test_tree_forward_matches_sequential_decoding(model, backend):
    gen = torch.Generator().manual_seed(3)
    prefix = torch.randint(0, 128, (1, 9), generator=gen)
    parents, mask, depth = _tree()
    nodes = torch.randint(0, 128, (1, len(parents)), generator=gen)
    p_len = prefix.shape[1]
    ctx = TreeAttentionContext(tree_mask=mask, prefix_len=p_len, grounding_start=1, grounding_end=p_len)
    model.set_attn_implementation(register())
    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        model(prefix, past_key_values=cache, use_cache=True)
        tree_logits = model(
            nodes, past_key_values=cache, use_cache=True, position_ids=(p_len + depth)[None], specgen_tree=ctx
        ).logits[0]  # [n, V]
    assert sorted(ctx.grounding) == [0, 1]
    model.set_attn_implementation("eager")
    for i in range(len(parents)):
        seq = torch.cat([prefix, nodes[:, _branch(parents, i)]], dim=1)
        with torch.no_grad():
            out = model(seq, output_attentions=True)
        torch.testing.assert_close(tree_logits[i], out.logits[0, -1], atol=ATOL, rtol=ATOL)
        for layer, attn in enumerate(out.attentions):  # eager weights [1, Hq, L, L]
            expected = attn[0, :, -1, 1:p_len].sum(-1)  # mass on prefix positions 1..p_len-1
            got = ctx.grounding[layer][0, :, i]
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
            assert (got <= 1 + 1e-6).all()


def test_grounding_layer_selection(model, backend):
    ids = torch.randint(0, 128, (1, 5), generator=torch.Generator().manual_seed(4))
    mask = torch.ones(5, 5, dtype=torch.bool).tril()
    ctx = TreeAttentionContext(tree_mask=mask, prefix_len=0, grounding_end=2, grounding_layers=(1,))
    plain = _logits(model, "sdpa", ids)
    torch.testing.assert_close(_logits(model, register(), ids, specgen_tree=ctx), plain, atol=ATOL, rtol=ATOL)
    assert list(ctx.grounding) == [1] and ctx.grounding[1].shape == (1, 4, 5)
    none = TreeAttentionContext(tree_mask=mask, prefix_len=0)
    _logits(model, register(), ids, specgen_tree=none)
    assert none.grounding == {}


def test_context_errors(model):
    model.set_attn_implementation(register())
    ids = torch.randint(0, 128, (1, 5))
    with pytest.raises(ValueError, match="does not match"):
        model(ids, specgen_tree=TreeAttentionContext(tree_mask=torch.eye(4, dtype=torch.bool), prefix_len=0))
    with pytest.raises(ValueError, match="bool"):
        TreeAttentionContext(tree_mask=torch.eye(4), prefix_len=0)
    with pytest.raises(ValueError, match="padded"):
        model(torch.randint(0, 128, (2, 5)), attention_mask=torch.tensor([[1] * 5, [0, 1, 1, 1, 1]]))
