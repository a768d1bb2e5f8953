"""Batched decoding: one forward over [B, n] ragged rows equals each row verified alone; batched
generation of every lossless method equals solo `ar` per row (greedy and seeded sampling)."""
from __future__ import annotations

from typing import Any

import pytest
import torch

from specgen import adapter
from specgen.config import GenerationConfig, SamplingConfig
from specgen.decoding.batch import BatchDecoder, LoadAwareDrafting, start_row
from specgen.decoding.loop import decode
from specgen.decoding.sizing import TreeSizingConfig
from specgen.decoding.tree import build_tree
from specgen.decoding.verify import verify_tree
from specgen.proposers.base import Candidates, NullProposer
from specgen.proposers.registry import make_config

from ..conftest import make_tiny_llama
from .test_verify_commit import prefill

PROMPTS = [[3, 17, 42, 7, 99, 1, 64], [5, 6], [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22], [9, 9, 9, 9]]
TREES = [Candidates([[5, 9, 2], [5, 3], [8]], [3.0, 2.0, 1.0]), Candidates(), Candidates([[1, 2, 3, 4, 5]], [1.0]),
         Candidates([[t] for t in range(20, 26)], [1.0] * 6)]


@pytest.mark.parametrize("hidden_layer", [None, -1, 0])
def test_batched_verification_equals_per_sequence_verification(hidden_layer: int | None) -> None:
    model = make_tiny_llama()
    solo, caches = [], []
    for prompt, cands in zip(PROMPTS, TREES):
        tree = build_tree(prompt[-1], cands, budget=16)
        cache = prefill(model, prompt[:-1])
        caches.append(prefill(model, prompt[:-1]))
        solo.append((tree, verify_tree(model, cache, tree, len(prompt) - 1, hidden_layer=hidden_layer), cache))
    lengths = [len(p) - 1 for p in PROMPTS]  # ragged: 6, 1, 11, 3 committed entries
    batch = adapter.stack_caches(caches, lengths)
    t_len = adapter.cache_length(batch)
    n = max(t.size for t, _, _ in solo)
    tokens = torch.zeros(len(PROMPTS), n, dtype=torch.long)
    positions = torch.zeros(len(PROMPTS), n, dtype=torch.long)
    for i, ((tree, _, _), length) in enumerate(zip(solo, lengths)):
        tokens[i, : tree.size], positions[i, : tree.size] = tree.tokens, tree.depth + length
    mask = adapter.ragged_key_mask(lengths, t_len, [t.mask for t, _, _ in solo], n, "cpu")
    out = adapter.batched_tree_forward(model, tokens, positions, batch, mask, hidden_layer=hidden_layer)
    for i, (tree, want, _) in enumerate(solo):
        torch.testing.assert_close(out.logits[i, : tree.size], want.logits, atol=1e-4, rtol=1e-4)
        assert out.logits[i, : tree.size].argmax(-1).tolist() == want.logits.argmax(-1).tolist()
        if hidden_layer is not None:
            torch.testing.assert_close(out.hidden[i, : tree.size], want.hidden, atol=1e-4, rtol=1e-4)
    # ragged commit: each row keeps its own accepted path, as committing it alone would
    paths = [tuple(t.path_to(t.size - 1)) for t, _, _ in solo]
    new = adapter.commit_rows(batch, t_len, lengths, paths)
    assert new == [n_kv + len(p) for n_kv, p in zip(lengths, paths)]
    for row, ((_, _, cache), n_kv, path) in enumerate(zip(solo, lengths, paths)):
        adapter.commit_cache(cache, n_kv, path)
        got = adapter.select_cache_row(batch, row, new[row])
        for a, b in zip(got.layers, cache.layers):
            torch.testing.assert_close(a.keys, b.keys, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(a.values, b.values, atol=1e-5, rtol=1e-5)


class _Bundle:
    def __init__(self, model: Any) -> None:
        from ..conftest import ByteTokenizer

        self.model, self.tokenizer, self.name, self.eos_ids = model, ByteTokenizer(), "tiny", set()


ROWS = [("pld", [1, 2, 3, 1, 2, 3, 1, 2], 20), ("ar", [4, 5], 9), ("sense", [6, 1, 6, 1, 6, 1], 25),
        ("pld", [7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7], 14), ("sense", [2, 3, 4, 5, 2, 3, 4], 18)]


def _run_batch(bundle: Any, sampling: SamplingConfig, late: int, load: LoadAwareDrafting | None = None) -> dict[int, list[int]]:
    """Decode ROWS in one batch; the last `late` rows join after the first step (continuous batching)."""
    decoder = BatchDecoder(bundle, load)
    pending = list(enumerate(ROWS))
    out: dict[int, list[int]] = {}
    joined = 0
    while pending or decoder.rows:
        while pending and (joined < len(ROWS) - late or decoder.drafting_steps + decoder.plain_steps > 0):
            i, (method, prompt, max_new) = pending.pop(0)
            gen = GenerationConfig(max_new_tokens=max_new, sampling=sampling, stop_at_eos=False,
                                   tree_sizing=TreeSizingConfig(mode="budget"))
            decoder.add(start_row(bundle, prompt, method, gen, make_config(method, {}), key=i))
            joined += 1
        if decoder.rows and not any(r.done for r in decoder.rows):
            decoder.step()
        for row in [r for r in decoder.rows if r.done]:
            out[row.key] = decoder.remove(row).token_ids
    return out


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_batched_generation_equals_solo_ar_per_row(temperature: float) -> None:
    bundle = _Bundle(make_tiny_llama(vocab_size=8, seed=4))  # small vocabulary: drafts get accepted
    sampling = SamplingConfig(temperature=temperature, seed=7)
    got = _run_batch(bundle, sampling, late=2)
    for i, (_, prompt, max_new) in enumerate(ROWS):
        gen = GenerationConfig(max_new_tokens=max_new, sampling=sampling, stop_at_eos=False)
        want = decode(bundle, prompt, NullProposer(), gen, method="ar").token_ids
        assert got[i] == want, (i, ROWS[i][0])


def test_batched_rows_draft_and_accept() -> None:
    bundle = _Bundle(make_tiny_llama(vocab_size=8, seed=4))
    decoder = BatchDecoder(bundle)
    gen = GenerationConfig(max_new_tokens=30, stop_at_eos=False, tree_sizing=TreeSizingConfig(mode="budget"))
    rows = [start_row(bundle, p, m, gen, make_config(m, {})) for m, p, _ in ROWS[:3]]
    for r in rows:
        decoder.add(r)
    while not any(r.done for r in decoder.rows):
        decoder.step()
    assert decoder.drafting_steps > 0
    assert sum(r.started.state.stats.accepted for r in rows) > 0


def test_spec_disable_batch_size_verifies_no_drafts() -> None:
    bundle = _Bundle(make_tiny_llama(vocab_size=8, seed=4))
    got = _run_batch(bundle, SamplingConfig(), late=0, load=LoadAwareDrafting(spec_disable_batch_size=2))
    for i, (_, prompt, max_new) in enumerate(ROWS):  # still every row's own ar answer
        gen = GenerationConfig(max_new_tokens=max_new, stop_at_eos=False)
        assert got[i] == decode(bundle, prompt, NullProposer(), gen, method="ar").token_ids


def test_load_aware_drafting_verifies_drafts_only_where_the_measured_costs_pay() -> None:
    load = LoadAwareDrafting(explore_every=4, explore_share=1 / 6)
    assert not load.should_verify(4, 9, 8.0)  # nothing measured: a plain step first
    load.observe(4, 1, 0.10, 0.0)  # c(4, 1) = 0.1 s
    assert load.should_verify(4, 9, 8.0)  # c(4, 16 bucket) unknown: measure it
    load.observe(4, 9, 0.30, 0.0)  # c(4, 16) = 0.3 s: 3 plain steps
    # 4 rows at 1 token per plain step = 40 tokens/s; drafting must expect > 12 tokens per step
    picks = [load.should_verify(4, 9, 8.0) for _ in range(24)]
    # only the explorations: every (3 - 1) / (1/6) = 12th, 2 extra plain steps in 12 declined ones
    assert picks == ([False] * 11 + [True]) * 2
    assert all(load.should_verify(4, 9, 12.5) for _ in range(3))
    load.observe_outcome(4, 5)  # not an exploration: no backoff either way
    assert load.clock.backoff == 1
    assert [load.should_verify(4, 9, 8.0) for _ in range(12)][-1] and load.clock.exploring
    load.observe_outcome(4, 0)  # the exploration accepted nothing: the next one waits twice as long
    assert [load.should_verify(4, 9, 8.0) for _ in range(24)] == [False] * 23 + [True]
    load.observe_outcome(4, 3)  # accepted, but 7 tokens for 3 plain steps of 4 did not pay: the wait is 12
    assert load.clock.backoff == 1 and not load.clock.paid
    assert [load.should_verify(4, 9, 8.0) for _ in range(12)] == [False] * 11 + [True]
    load.observe_outcome(4, 8)  # 12 tokens for 3 plain steps of 4 tokens: paid, the next comes after 4
    assert load.clock.paid and [load.should_verify(4, 9, 8.0) for _ in range(4)] == [False] * 3 + [True]
    assert LoadAwareDrafting().explore_every == 8 and LoadAwareDrafting().explore_share == 0.02
    assert load.should_verify(4, 1, 4.0)  # nothing drafted: nothing to decide
    assert not LoadAwareDrafting(spec_disable_batch_size=3).enabled(3) and LoadAwareDrafting().enabled(64)


def test_unmeasured_draft_shapes_are_estimated_from_the_batch_1_profile() -> None:
    from specgen.decoding.sizing import CostProfile

    # one row: 1 token costs 1, 8 tokens 2, 32 tokens 8 (compute-bound past 8)
    profile = CostProfile([1, 2, 8, 32], [0.1, 0.1, 0.2, 0.8])
    load = LoadAwareDrafting(explore_every=100, profile=profile)
    load.observe(2, 1, 0.1, 0.0)
    # c(2, 4) ~ c(2, 1) * c_1(8) / c_1(2) = 0.2 s: 2 rows expecting 3 tokens each pay (30 > 20 tokens/s)
    assert load.should_verify(2, 4, 6.0)
    assert not load.should_verify(2, 4, 3.0)  # 15 < 20 tokens/s: not measured, not verified
    # c(2, 16) ~ 0.1 * c_1(32) / c_1(2) = 0.8 s: 16 expected tokens (20/s) only just pay
    assert load.should_verify(2, 16, 16.5) and not load.should_verify(2, 16, 15.0)
    load.observe(2, 16, 0.3, 0.0)  # measured: cheaper than estimated, the measurement counts
    assert load.should_verify(2, 16, 7.0)
    # past the profile's 32 tokens: its average slope (7/31 per token), not the last segment's flat top
    flat_top = LoadAwareDrafting(explore_every=100, profile=CostProfile([1, 16, 32], [0.1, 0.7, 0.8]))
    flat_top.observe(4, 1, 0.1, 0.0)  # c_1(64) ~ 8 + 32 * 7 / 31 = 15.2 relative, c_1(4) = 2.2: 6.9 plain steps
    # break-even 4 rows x 6.9 = 27.7 tokens (the last segment's slope, 1/16, would say 18)
    assert not flat_top.should_verify(4, 16, 27.0) and flat_top.should_verify(4, 16, 28.5)


def test_bucketed_costs_pool_node_counts() -> None:
    from specgen.decoding.batch import _bucket

    assert [_bucket(n) for n in (1, 2, 3, 4, 5, 9, 16, 17)] == [1, 2, 4, 4, 8, 16, 16, 32]


class _NeverVerify(LoadAwareDrafting):
    def should_verify(self, b: int, n: int, expected_tokens: float) -> bool:
        return n <= 1


@pytest.mark.parametrize("always_verify", [True, False])
def test_discarded_and_verified_drafts_of_every_proposer_keep_rows_exact(always_verify: bool) -> None:
    """Rows whose planned drafts are dropped by the load policy (their proposers planned, then saw a
    plain step) and rows verified in full: each row's output is still its solo ar output."""
    bundle = _Bundle(make_tiny_llama(vocab_size=8, seed=4, layers=3))
    decoder = BatchDecoder(bundle, LoadAwareDrafting(explore_every=1) if always_verify else _NeverVerify())
    rows = [("sd", [1, 2, 3, 1, 2], 16), ("pld", [4, 5, 4, 5, 4], 12), ("sd", [6, 6, 1], 10)]
    gen = {n: GenerationConfig(max_new_tokens=n, stop_at_eos=False, tree_sizing=TreeSizingConfig(mode="budget"))
           for _, _, n in rows}
    cfgs = {"sd": make_config("sd", {"draft_layers": 1}), "pld": make_config("pld", {})}
    for i, (m, p, n) in enumerate(rows):
        decoder.add(start_row(bundle, p, m, gen[n], cfgs[m], key=i))
    out = {}
    while decoder.rows:
        decoder.step()
        for row in [r for r in decoder.rows if r.done]:
            out[row.key] = decoder.remove(row).token_ids
    for i, (_, p, n) in enumerate(rows):
        assert out[i] == decode(bundle, p, NullProposer(), gen[n], method="ar").token_ids, i
    assert (decoder.drafting_steps > 0) == always_verify


def test_padded_batched_forwards_keep_every_row_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a profile where 8 tokens ran faster than 2-6 (CPU BLAS), B rows of n nodes are fed as
    enough nodes per row to make 8 tokens: every row still equals its solo ar output."""
    from specgen.decoding.sizing import CostProfile

    sizes = [1, 2, 3, 4, 6, 8, 12, 17]
    profile = CostProfile.from_timings(sizes, [1.0, 2.0, 3.0, 3.0, 3.0, 1.5, 4.0, 5.0])
    load = LoadAwareDrafting(profile=profile)
    assert [load.fed(b, 1) for b in (1, 2, 3, 4, 5, 9)] == [1, 4, 3, 2, 2, 1]  # 5 pads as 6 does, 9 not
    shapes: list[tuple[int, int]] = []
    forward = adapter.batched_tree_forward

    def recording(model: Any, tokens: torch.Tensor, *args: Any, **kw: Any) -> Any:
        shapes.append(tuple(tokens.shape))
        return forward(model, tokens, *args, **kw)

    monkeypatch.setattr(adapter, "batched_tree_forward", recording)
    bundle = _Bundle(make_tiny_llama(vocab_size=8, seed=4))
    got = _run_batch(bundle, SamplingConfig(), late=2, load=load)
    for i, (_, prompt, max_new) in enumerate(ROWS):
        gen = GenerationConfig(max_new_tokens=max_new, stop_at_eos=False)
        assert got[i] == decode(bundle, prompt, NullProposer(), gen, method="ar").token_ids, i
    assert (2, 4) in shapes or (3, 3) in shapes, shapes  # padded steps ran
