"""Cost-aware tree sizing: the cost profile, the acceptance calibration, the size choice, the loop."""
from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

import pytest
import torch

from specgen.config import GenerationConfig, PLDConfig
from specgen.decoding.loop import decode
from specgen.decoding.policy import DraftPolicyConfig
from specgen.decoding.calibration import AcceptanceModel
from specgen.decoding.sizing import CostProfile, TreeSizer, TreeSizingConfig, choose_size, measure_cost_profile
from specgen.decoding.tree import build_tree
from specgen.errors import SpecgenError
from specgen.proposers.base import Candidates, NullProposer, Proposer, ProposeContext
from specgen.proposers.pld import PromptLookupProposer


def test_cost_profile_interpolates_and_extrapolates() -> None:
    prof = CostProfile([1, 2, 4, 8], [0.010, 0.011, 0.015, 0.023])
    assert prof(1) == 1.0 and prof(2) == pytest.approx(1.1) and prof(4) == pytest.approx(1.5)
    assert prof(3) == pytest.approx(1.3)  # halfway between 2 and 4
    assert prof(6) == pytest.approx(1.9)
    assert prof(10) == pytest.approx(2.7)  # the last segment's slope, continued
    assert prof(0) == 1.0


def _brute_force(probs: list[float], cost: CostProfile) -> int:
    rates = [(1 + sum(probs[:n])) / cost(n + 1) for n in range(len(probs) + 1)]
    return max(range(len(rates)), key=lambda n: (rates[n], -n))


@pytest.mark.parametrize("seed", range(20))
def test_choose_size_matches_brute_force(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    probs = sorted(torch.rand(12, generator=g).tolist(), reverse=True)
    steps = torch.rand(16, generator=g).mul(0.3).cumsum(0).tolist()
    cost = CostProfile(list(range(1, 17)), [0.01 * (1 + s - steps[0]) for s in steps])
    assert choose_size(probs, cost, budget=12) == _brute_force(probs, cost)
    assert choose_size(probs, cost, budget=3) == _brute_force(probs[:3], cost)


def test_choose_size_extremes() -> None:
    free = CostProfile([1, 32], [0.01, 0.01])  # a GPU: 32 tokens cost what one does
    assert choose_size([0.9, 0.5, 0.1, 0.01], free, budget=16) == 4
    steep = CostProfile([1, 32], [0.01, 0.32])  # every token costs a full step
    assert choose_size([0.9, 0.5, 0.1], steep, budget=16) == 0
    assert choose_size([], free, budget=16) == 0


def test_acceptance_model_learns_per_score_and_depth() -> None:
    m = AcceptanceModel(prior_mean=0.3, prior_weight=2.0)
    assert m.prob(1.0, 1) == pytest.approx(0.3)
    for _ in range(50):
        m.update([3.0, 3.0, 0.3], [1, 5, 1], [True, False, False])
    assert m.prob(3.0, 1) > 0.9  # strong, shallow: accepted
    assert m.prob(3.0, 5) < 0.1  # the same score deeper: rejected
    assert m.prob(0.3, 1) < 0.1
    assert m.prob(3.0, 1) == m.prob(2.5, 1)  # same bins
    geo = AcceptanceModel(prior_mean=0.3, prior_weight=2.0, geometric=True)  # each node 0.3 given its parent
    assert [geo.prob(1.0, d) for d in (1, 2, 3, 7)] == pytest.approx([0.3, 0.09, 0.027, 0.3 ** 6])
    with pytest.raises(SpecgenError, match="prior-depth"):
        TreeSizingConfig(prior_depth="linear")
    with pytest.raises(SpecgenError, match="--tree-sizing must be one of"):
        TreeSizingConfig(mode="fixed")
    with pytest.raises(SpecgenError, match="sizes"):
        TreeSizingConfig(sizes=(2, 4))
    with pytest.raises(SpecgenError, match="costs"):
        TreeSizingConfig(sizes=(1, 2), costs=(1.0,))


def test_build_tree_size_keeps_a_closed_prefix() -> None:
    cands = Candidates([[1, 2, 3, 4], [1, 5, 6], [7, 8]], [3.0, 2.0, 1.0])
    seen: list[tuple[list[float], list[int]]] = []

    def size(scores: list[float], depths: list[int]) -> int:
        seen.append((scores, depths))
        return 4

    tree = build_tree(0, cands, 16, size)
    full = build_tree(0, cands, 16)
    assert seen[0][0] == sorted(seen[0][0], reverse=True) and len(seen[0][0]) == full.size - 1
    assert tree.size == 5
    assert tree.scores[0] == float("inf") and sorted(tree.scores[1:], reverse=True) == seen[0][0][:4]
    for i in range(1, tree.size):  # every kept node's parent is kept (closed under ancestors)
        assert 0 <= int(tree.parents[i]) < i
    assert build_tree(0, cands, 16, lambda s, d: 0).size == 1


def test_measured_profile_is_monotone_and_cached(tiny_bundle: Any) -> None:
    from specgen import adapter

    model = tiny_bundle.model
    adapter.use_tree_attention(model)
    cache = adapter.new_cache(model)
    with torch.inference_mode():
        adapter.tree_forward(model, torch.arange(10), torch.arange(10), cache, torch.ones(10, 10, dtype=torch.bool).tril_())
        cfg = TreeSizingConfig(sizes=(1, 2, 4), reps=1)
        prof = measure_cost_profile(model, cache, 10, cfg)
    assert adapter.cache_length(cache) == 10  # the timed forwards were cropped
    assert prof.sizes == [1, 2, 4] and prof.relative[0] == 1.0
    assert all(a <= b for a, b in itertools.pairwise(prof.relative))
    assert measure_cost_profile(model, cache, 10, cfg) is prof


class AlwaysWrong(Proposer):
    """Drafts 8 tokens that are never the target's: sizing must learn to verify fewer of them."""

    name = "wrong"

    def __init__(self, greedy: list[int], prompt_len: int, vocab: int) -> None:
        self.greedy, self.prompt_len, self.vocab = greedy, prompt_len, vocab

    def propose(self, ctx: ProposeContext) -> Candidates:
        nxt = len(ctx.tokens) - self.prompt_len
        wrong = (self.greedy[nxt] + 1) % self.vocab if nxt < len(self.greedy) else 0
        return Candidates([[wrong] * 8], [1.0])


def test_cost_sizing_is_lossless_and_drops_hopeless_nodes(tiny_bundle: Any) -> None:
    prompt = [3, 1, 4, 1, 5, 9, 2, 6, 3, 1, 4, 1, 5, 9]
    ar = decode(tiny_bundle, prompt, NullProposer(), GenerationConfig(max_new_tokens=40), method="ar")
    always = dict(draft_policy=DraftPolicyConfig(mode="always"))
    for sizing in ("cost", "budget"):
        gen = GenerationConfig(max_new_tokens=40, tree_sizing=TreeSizingConfig(mode=sizing), **always)
        out = decode(tiny_bundle, prompt, PromptLookupProposer(PLDConfig()), gen, method="pld")
        assert out.token_ids == ar.token_ids
        assert (out.stats.cost_profile is not None) == (sizing == "cost")
    vocab = tiny_bundle.model.config.vocab_size
    drafted = {}
    # A tiny model's forwards cost the same at any size, so give this CPU's profile (16 tokens ~2x one)
    cpu = TreeSizingConfig(mode="cost", sizes=(1, 2, 3, 4, 8, 17), costs=(1.0, 1.02, 1.12, 1.45, 1.8, 2.1))
    assert cpu.costs is not None and measure_cost_profile(tiny_bundle.model, None, 0, cpu).relative[-1] == 2.1
    for sizing in ("cost", "budget"):
        tree_sizing = cpu if sizing == "cost" else TreeSizingConfig(mode="budget")
        gen = GenerationConfig(max_new_tokens=40, tree_sizing=tree_sizing, **always)
        out = decode(tiny_bundle, prompt, AlwaysWrong(ar.token_ids, len(prompt), vocab), gen, method="wrong")
        assert out.token_ids == ar.token_ids and out.stats.accepted == 0
        drafted[sizing] = out.stats.drafted
    assert drafted["budget"] > 8 * 30  # every step verifies its 8 nodes (fewer only in the last steps)
    assert drafted["cost"] < drafted["budget"] // 2


def test_a_faster_forward_refines_the_profile_and_keeps_it_monotone() -> None:
    prof = CostProfile([1, 2, 4, 8], [0.10, 0.30, 0.32, 0.40])  # timed on a busy machine: c(2) = 3
    assert not prof.refine(2, 0.299)  # within noise: kept
    assert not prof.refine(3, 0.05)  # not a timed size: nothing to say
    assert prof.refine(2, 0.15) and prof.relative[:2] == [1.0, pytest.approx(1.5)]
    assert prof.refine(8, 0.12)  # lower than sizes below it: they come down with it
    assert prof.seconds == sorted(prof.seconds) and prof.seconds[-1] == pytest.approx(0.12)


def test_sizing_that_starves_explores_and_a_timed_sizer_learns_from_its_forwards() -> None:
    cfg = TreeSizingConfig(sizes=(1, 2, 3, 4), costs=(1.0, 3.0, 3.0, 3.0), explore_every=4, explore_nodes=2,
                           explore_share=1 / 6)
    sizer = TreeSizer(CostProfile([1, 2, 3, 4], [0.1, 0.3, 0.3, 0.3]), cfg, timed=True)
    sizes = [sizer.size_fn([1.0, 1.0, 1.0], [1, 2, 3]) for _ in range(24)]  # type: ignore[misc]
    # 2 nodes never pay at c(2) = 3, yet every (c(3) - 1) / (1/6) = 12th step tries: 2 extra plain
    # steps in 12, the share asked for
    assert sizes == ([0] * 11 + [2]) * 2 and sizer.clock.explorations == 2
    assert TreeSizer(sizer.profile, TreeSizingConfig(explore_every=4, explore_nodes=2)).explore_interval == 100
    assert TreeSizer(CostProfile([1, 4], [0.1, 0.101]), TreeSizingConfig()).explore_interval == 8  # GPU-like
    sizer.observe_time(3, 0.105)  # the 3-token forward ran almost as fast as one token
    assert sizer.refined and sizer.profile is not None and sizer.profile(3) == pytest.approx(1.05)
    untimed = TreeSizer(CostProfile([1, 2], [0.1, 0.3]), cfg)
    untimed.observe_time(2, 0.1)
    assert not untimed.refined  # a given profile (no clock of this machine) is not refined


def _tree_with_depth(depth: int) -> Any:
    return build_tree(0, Candidates([list(range(1, depth + 1))], [1.0]), depth)


@pytest.mark.parametrize("costly", [False, True])
def test_draft_cost_limits_the_draft_depth(costly: bool) -> None:
    """Counting the draft's time: a draft that costs as much as a target step per depth on a
    machine where verifying k tokens costs k steps never pays; a cheap draft on a flat (GPU-like)
    profile drafts to the full budget. Only a profile timed on this machine has seconds to compare."""
    sizes = (1, 2, 4, 8, 17)
    flat = CostProfile(list(sizes), [0.01 * (1 + n / 100) for n in sizes])  # c(n) ~ 1: memory-bound
    linear = CostProfile(list(sizes), [0.01 * n for n in sizes])  # c(n) = n: compute-bound
    profile = linear if costly else flat
    sizer = TreeSizer(profile, TreeSizingConfig(explore_every=0), timed=True)
    assert sizer.depth_limit(8, 1) == 8  # nothing measured yet: the budget
    for _ in range(20):
        sizer.observe_draft(4, 4 * (0.01 if costly else 0.001))  # per depth: a target step, or a tenth of one
        sizer.observe(_tree_with_depth(4), (0, 1, 2, 3, 4))  # all 4 accepted
    limit = sizer.depth_limit(8, 1)
    # deeper than 4 was never tried: the prior (0.3 ** d) says it does not pay
    assert limit == (0 if costly else 4)
    rejected = TreeSizer(profile, TreeSizingConfig(explore_every=0), timed=True)
    for _ in range(20):  # a cheap draft whose tokens are never accepted does not pay either
        rejected.observe_draft(4, 4 * 0.001)
        rejected.observe(_tree_with_depth(4), (0,))
    assert rejected.depth_limit(8, 1) == 0
    untimed = TreeSizer(profile, TreeSizingConfig(), timed=False)
    untimed.observe_draft(4, 1.0)
    assert untimed.depth_limit(8, 1) == 8


def _starved_until_explored(sizer: TreeSizer) -> int:
    for i in range(1, 1000):
        if sizer.size_fn([1.0, 1.0, 1.0], [1, 2, 3]):  # type: ignore[misc]
            return i
    raise AssertionError("never explored")


def test_explorations_that_accept_nothing_back_off_and_one_that_accepts_resets() -> None:
    cfg = TreeSizingConfig(explore_every=4, explore_nodes=2, explore_share=1 / 6, explore_backoff_max=4)
    sizer = TreeSizer(CostProfile([1, 2, 3], [0.1, 0.3, 0.3]), cfg)
    tree = build_tree(0, Candidates([[1, 2]], [1.0]), 2)
    waits = []
    for _ in range(4):  # each exploration rejected: 12, 24, 48, then capped at 4 x 12
        waits.append(_starved_until_explored(sizer))
        sizer.observe(tree, (0,))
    assert waits == [12, 24, 48, 48]
    sizer.observe(build_tree(0, Candidates(), 0), (0,))  # a plain step says nothing of explorations
    assert sizer.clock.backoff == 4
    assert _starved_until_explored(sizer) == 48
    sizer.observe(tree, (0, 1))  # this exploration's first node was accepted: 2 tokens for c(3) = 3
    assert sizer.clock.backoff == 1 and not sizer.clock.paid and _starved_until_explored(sizer) == 12
    sizer.observe(tree, (0, 1, 2))  # both accepted: 3 tokens paid for c(3) = 3, so the next comes soon
    assert sizer.clock.paid and _starved_until_explored(sizer) == 4
    sizer.observe(tree, (0,))  # and one that fails goes back to waiting, doubled
    assert not sizer.clock.paid and _starved_until_explored(sizer) == 24
    for bad in (dict(explore_share=0.0), dict(explore_share=1.5), dict(explore_backoff_max=0)):
        with pytest.raises(SpecgenError):
            TreeSizingConfig(**bad)  # type: ignore[arg-type]


def test_depth_limit_explores_after_starving() -> None:
    sizes = (1, 2, 4, 8, 17)
    sizer = TreeSizer(CostProfile(list(sizes), [0.01 * n for n in sizes]),
                      TreeSizingConfig(explore_every=4, explore_nodes=2, explore_share=1 / 6), timed=True)
    sizer.observe_draft(2, 1.0)  # a very slow draft
    limits = [sizer.depth_limit(8, 1) for _ in range(24)]
    assert limits == ([0] * 11 + [2]) * 2  # every (c(3) - 1) / (1/6) = 12th starved step


def test_a_costly_draft_model_is_skipped_and_output_unchanged(tiny_bundle: Any) -> None:
    """Decoding with a draft whose every depth is slow: cost sizing stops drafting (few drafted
    nodes), the output still equals ar's."""
    import time

    from specgen.proposers.draft_model import DraftModelProposer

    class SlowDraft(DraftModelProposer):
        def propose(self, ctx: ProposeContext) -> Candidates:
            out = super().propose(ctx)
            time.sleep(0.05 * max((len(c) for c in out.sequences), default=0))
            return out

    gen = GenerationConfig(max_new_tokens=30, tree_sizing=TreeSizingConfig(costs=None),
                           draft_policy=DraftPolicyConfig(mode="always"))
    prompt = [3, 17, 42, 9]
    ar = decode(tiny_bundle, prompt, NullProposer(), gen, method="ar")
    slow = decode(tiny_bundle, prompt, SlowDraft(tiny_bundle.model, num_draft=4), gen, method="sd")
    uncounted = SlowDraft(tiny_bundle.model, num_draft=4)
    uncounted.draft_cost_per_depth = False  # the same slow draft, its time not counted (as before)
    fast = decode(tiny_bundle, prompt, uncounted, gen, method="sd")
    assert slow.token_ids == ar.token_ids and fast.token_ids == ar.token_ids
    # the draft is the target itself: every drafted token is accepted, so only its cost tells them apart
    uncounted_rate, counted_rate = fast.stats.drafted / fast.stats.steps, slow.stats.drafted / slow.stats.steps
    assert uncounted_rate >= 2
    assert counted_rate < uncounted_rate / 2, "a draft costing many verification steps per depth kept drafting"


def test_a_size_timed_slower_than_a_bigger_one_is_padded_to_it() -> None:
    """CPU BLAS runs 2-3 row matmuls as row-wise matrix-vector products: 4 tokens can cost less than
    2 or 3. Such sizes pad to the fastest size above them and are costed as it; a difference within
    5% (noise) pads nothing, but the lower time still counts."""
    prof = CostProfile.from_timings([1, 2, 3, 4, 6, 8], [1.0, 1.7, 2.1, 1.5, 1.6, 1.9])
    assert prof.pads == [1, 4, 4, 4, 6, 8] and prof.seconds == [1.0, 1.5, 1.5, 1.5, 1.6, 1.9]
    assert [prof.padded(n) for n in (1, 2, 3, 5, 7, 8, 9)] == [1, 4, 4, 5, 7, 8, 9] and prof.to_dict()["pads"] == prof.pads
    noisy = CostProfile.from_timings([1, 2, 3], [1.0, 1.03, 1.0])
    assert noisy.pads == [1, 2, 3] and noisy.seconds == [1.0, 1.0, 1.0] and "pads" not in noisy.to_dict()
    raw = CostProfile.from_timings([1, 2, 3], [1.0, 2.0, 1.5], pad_gain=None)
    assert raw.pads == [1, 2, 3] and raw.seconds == [1.0, 2.0, 1.5]
    sizer = TreeSizer(prof, TreeSizingConfig())
    assert sizer.fed(2) == 4 and TreeSizer(None, TreeSizingConfig(mode="budget")).fed(2) == 2


def test_padded_verification_keeps_greedy_output_and_feeds_the_padded_size(tiny_bundle: Any, tmp_path: Any,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from specgen import adapter
    from specgen.decoding.sizing import _PROFILES, profile_memory_key

    monkeypatch.setenv("SPECGEN_CACHE", str(tmp_path))  # the made-up profile, once refined, is saved there
    cfg = TreeSizingConfig()
    fed: list[int] = []
    forward = adapter.tree_forward

    def counting(model: Any, tokens: torch.Tensor, *args: Any, **kw: Any) -> Any:
        fed.append(int(tokens.shape[0]))
        return forward(model, tokens, *args, **kw)

    # every size up to 8 pads to 8, which was timed as fast as one token
    raw = [1.0, 3.0, 3.0, 3.0, 3.0, 1.0, 9.0, 9.0]
    profiles = _PROFILES.setdefault(tiny_bundle.model, {})
    profiles[profile_memory_key(tiny_bundle.model, cfg)] = CostProfile.from_timings(list(cfg.sizes), raw)
    gen = GenerationConfig(max_new_tokens=24, stop_at_eos=False, tree_sizing=cfg,
                           draft_policy=DraftPolicyConfig(mode="always"))
    prompt = [5, 6, 7, 8, 5, 6, 7, 8, 5, 6, 7]
    try:
        # the reference without the made-up profile: ar's own forwards would refine it to real seconds
        ar = decode(tiny_bundle, prompt, NullProposer(), replace(gen, tree_sizing=TreeSizingConfig(mode="budget")),
                    method="ar")
        monkeypatch.setattr(adapter, "tree_forward", counting)
        # a wrong branch ranked first and the right one second: the accepted path moves down past padding
        out = decode(tiny_bundle, prompt, BranchyDrafts(ar.token_ids, len(prompt)), gen, method="pld")
    finally:
        _PROFILES.pop(tiny_bundle.model, None)
    assert out.token_ids == ar.token_ids and out.stats.accepted > 0
    steps = fed[1:]  # after the prefill: 5-node trees (and smaller at the end) run as 8 tokens
    assert any(n == 8 for n in steps) and all(n == 1 or n == 8 for n in steps), steps


class BranchyDrafts(Proposer):
    """Two branches per step: a wrong one ranked first, then the target's next two tokens."""

    name = "branchy"

    def __init__(self, greedy: list[int], prompt_len: int) -> None:
        self.greedy, self.prompt_len = greedy, prompt_len

    def propose(self, ctx: ProposeContext) -> Candidates:
        nxt = len(ctx.tokens) - self.prompt_len
        right = self.greedy[nxt:nxt + 2]
        if not right:
            return Candidates()
        return Candidates([[(right[0] + 1) % 128, 3], right], [2.0, 1.0])


def test_sizing_options_by_name() -> None:
    from specgen.decoding.sizing import sizing_config

    cfg = sizing_config("cost", {"prior_depth": "flat", "sizes": [1, 2, 4], "pad_forwards": False})
    assert cfg.prior_depth == "flat" and cfg.sizes == (1, 2, 4) and not cfg.pad_forwards and cfg.mode == "cost"
    assert sizing_config() == TreeSizingConfig()
    with pytest.raises(SpecgenError, match="unknown tree sizing option 'mode'"):
        sizing_config("cost", {"mode": "budget"})


def test_a_shared_calibration_carries_what_one_generation_learnt_to_the_next(tiny_bundle: Any) -> None:
    prompt = [3, 1, 4, 1, 5, 9, 2, 6, 3, 1, 4, 1, 5, 9]
    ar = decode(tiny_bundle, prompt, NullProposer(), GenerationConfig(max_new_tokens=40), method="ar")
    cpu = TreeSizingConfig(mode="cost", sizes=(1, 2, 3, 4, 8, 17), costs=(1.0, 1.02, 1.12, 1.45, 1.8, 2.1))
    gen = GenerationConfig(max_new_tokens=40, tree_sizing=cpu, draft_policy=DraftPolicyConfig(mode="always"))
    vocab = tiny_bundle.model.config.vocab_size
    shared = AcceptanceModel.for_sizing(cpu, window=64.0)
    drafted = []
    for _ in range(3):
        out = decode(tiny_bundle, prompt, AlwaysWrong(ar.token_ids, len(prompt), vocab), gen, method="wrong",
                     calibration=shared)
        assert out.token_ids == ar.token_ids and out.stats.accepted == 0
        drafted.append(out.stats.drafted)
    alone = decode(tiny_bundle, prompt, AlwaysWrong(ar.token_ids, len(prompt), vocab), gen, method="wrong")
    # the first generation learns from the prior as one alone does; later ones start from its evidence
    assert drafted[0] == alone.stats.drafted
    assert drafted[1] < drafted[0] and drafted[2] <= drafted[1]
    assert max(shared.drafted) <= 64.0 + 1e-9  # the window bounds what a bin remembers


def test_a_windowed_calibration_follows_a_change() -> None:
    m = AcceptanceModel(prior_mean=0.3, prior_weight=2.0, window=20.0)
    for _ in range(200):
        m.update([1.0], [1], [True])
    assert m.prob(1.0, 1) > 0.95 and m.drafted[m._bin(1.0, 1)] == pytest.approx(20.0)
    for _ in range(40):  # twice the window of failures: the old successes have faded
        m.update([1.0], [1], [False])
    assert m.prob(1.0, 1) < 0.2
    with pytest.raises(AssertionError, match="window"):
        AcceptanceModel(prior_weight=2.0, window=1.0)


def test_a_generation_over_a_shared_calibration_starts_from_it_and_follows_its_own_evidence() -> None:
    shared = AcceptanceModel(prior_mean=0.3, prior_weight=2.0, window=256.0)
    for _ in range(100):  # earlier requests: drafts at depth 1 failed
        shared.update([1.0], [1], [False])
    kid = shared.child(2.0)
    assert kid.prob(1.0, 1) == pytest.approx(shared.prob(1.0, 1)) and kid.prob(1.0, 1) < 0.02
    assert kid.prob(1.0, 3) == pytest.approx(0.3)  # a bin nobody saw keeps the configured prior
    for _ in range(4):  # this request's drafts succeed
        kid.update([1.0], [1], [True])
    assert kid.prob(1.0, 1) > 0.6  # its own evidence outweighs the shared prior's 2 pseudo-counts
    assert shared.prob(1.0, 1) < 0.06 and shared.drafted[shared._bin(1.0, 1)] == pytest.approx(2.0 + 100 + 4)


def test_ar_pads_its_plain_steps_as_every_method_does(tiny_bundle: Any, tmp_path: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from specgen import adapter
    from specgen.decoding.sizing import _PROFILES, profile_memory_key

    monkeypatch.setenv("SPECGEN_CACHE", str(tmp_path))
    cfg = TreeSizingConfig()
    gen = GenerationConfig(max_new_tokens=12, stop_at_eos=False, tree_sizing=cfg)
    prompt = [5, 6, 7, 8, 5, 6, 7]
    plain = decode(tiny_bundle, prompt, NullProposer(), replace(gen, tree_sizing=TreeSizingConfig(mode="budget")),
                   method="ar")
    fed: list[int] = []
    forward = adapter.tree_forward

    def counting(model: Any, tokens: torch.Tensor, *args: Any, **kw: Any) -> Any:
        fed.append(int(tokens.shape[0]))
        return forward(model, tokens, *args, **kw)

    # one token timed slower than two: a baseline that did not pad would lose to any method that does
    profiles = _PROFILES.setdefault(tiny_bundle.model, {})
    profiles[profile_memory_key(tiny_bundle.model, cfg)] = CostProfile.from_timings(
        list(cfg.sizes), [3.0, 1.0, 4.0, 4.0, 4.0, 4.0, 9.0, 9.0])
    try:
        monkeypatch.setattr(adapter, "tree_forward", counting)
        out = decode(tiny_bundle, prompt, NullProposer(), gen, method="ar")
    finally:
        _PROFILES.pop(tiny_bundle.model, None)
    assert out.token_ids == plain.token_ids and out.stats.drafted == 0
    assert fed[0] == len(prompt) and fed[1:] and all(n == 2 for n in fed[1:]), fed
