"""`rest` and `sense` proposers: candidates from the datastore and the live context; lossless end to end."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from specgen.config import GenerationConfig
from specgen.datastore import IndexBuildConfig, SemanticIndex, build_index
from specgen.datastore.build import hidden_states
from specgen.errors import SpecgenError
from specgen.models import ModelBundle
from specgen.proposers.base import ProposeContext
from specgen.proposers.registry import get_method, make_config
from specgen.proposers.rest import RESTConfig
from specgen.proposers.sense import SenseConfig, SenseProposer, shift_start


@pytest.fixture()
def index(small_corpus: Path, tmp_path: Path, tok: Any, model: Any) -> Path:
    out = tmp_path / "idx"
    build_index(model, tok, small_corpus, out, IndexBuildConfig(window=256, overlap=64, batch_tokens=1024))
    return out


def _bundle(model: Any, tok: Any) -> ModelBundle:
    return ModelBundle(model=model, tokenizer=tok, name="tiny", path=None)


def _hidden(model: Any, ids: list[int]) -> torch.Tensor:
    t = torch.tensor([ids])
    return hidden_states(model, t, None, -1)[0]  # [T, H]


def test_registered_with_cli_option_names(tmp_path: Path) -> None:
    x = str(tmp_path)  # an existing folder: configs check that --index exists
    assert make_config("rest", {"index": x}) == RESTConfig(index=x)
    cfg = make_config("sense", {"index": x, "gate_enabled": True, "gate_alpha": 0.2})
    assert cfg.index == x and cfg.gate.enabled and cfg.gate.alpha == 0.2
    with pytest.raises(SpecgenError, match="--index: .* does not exist"):
        make_config("rest", {"index": str(tmp_path / "missing")})
    assert get_method("sense").lossless and get_method("rest").lossless


def test_rest_drafts_the_corpus_continuation(index: Path, tok: Any, model: Any) -> None:
    idx = SemanticIndex.load(index)
    tokens = idx.tokens[1000:1040].tolist()
    proposer = get_method("rest").factory(_bundle(model, tok), RESTConfig(index=str(index)))
    cands = proposer.propose(ProposeContext(tokens=tokens[:30], prompt_len=20, budget=8))
    assert len(cands) >= 1 and all(len(s) <= 8 for s in cands.sequences)
    assert tokens[30:38] in cands.sequences
    assert cands.scores == sorted(cands.scores, reverse=True)
    with pytest.raises(SpecgenError, match="needs --index"):
        get_method("rest").factory(_bundle(model, tok), RESTConfig())


@pytest.mark.parametrize("conditioned", [dict(token_conditioned=True), dict(token_conditioned=False),
                                         dict(token_conditioned=True, conditioned_max_rows=1)])  # the last falls back
def test_sense_datastore_neighbour_drafts_what_followed(index: Path, tok: Any, model: Any, conditioned: dict) -> None:
    idx = SemanticIndex.load(index)
    doc = idx.tokens[:200].tolist()
    t = 120  # committed up to t; doc[t + 1] is the pending token
    hs = _hidden(model, doc[: t + 1])  # [t + 1, H]
    proposer = get_method("sense").factory(_bundle(model, tok), SenseConfig(index=str(index), use_context=False,
                                                                                 min_score=0.0, **conditioned))
    assert proposer.hidden_layer == -1 and not proposer.wants_context_hidden and not proposer.self_gated
    cands = proposer.propose(ProposeContext(tokens=doc[: t + 2], prompt_len=10, budget=6, hidden=hs[t]))
    assert doc[t + 2: t + 8] in cands.sequences
    # every candidate came from a neighbour followed by the pending token, so none is empty
    assert all(cands.sequences) and cands.scores == sorted(cands.scores, reverse=True)


def test_shift_start_by_hand() -> None:
    import numpy as np

    cont = np.array  # a stored continuation: cont[0] is the token that followed the key
    assert shift_start(cont([5, 7, 8, 9]), 5, 3) is None  # followed by the pending token: the exact search's
    assert shift_start(cont([-1, -1, -1, -1]), 5, 3) is None  # the key ends its document
    assert shift_start(cont([4, 7, 8, 9]), 5, 3) == 1  # one-for-one: 4 stands for the pending 5
    assert shift_start(cont([4, 6, 5, 9]), 5, 3) == 3  # the pending 5 comes two tokens later: draft from the 9
    assert shift_start(cont([4, 6, 5, 9]), 5, 1) == 1  # ... but not within a window of 1


def test_sense_shift_drafts_a_neighbour_followed_by_another_token(index: Path, tok: Any, model: Any,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    idx = SemanticIndex.load(index)
    doc = idx.tokens[:200].tolist()
    t = next(t for t in range(120, 190) if len({doc[t + 1], doc[t + 2], doc[t + 3]}) == 3)
    hs = _hidden(model, doc[: t + 1])  # [t + 1, H]: the query is the key of position t itself (cos ~1)
    other = next(x for x in range(len(tok)) if x not in doc[t + 1: t + 6])
    # floors that only the key of position t itself passes
    base = dict(index=str(index), use_context=False, min_score=0.0, min_similarity=0.99, align_min_similarity=0.99)
    exact = get_method("sense").factory(_bundle(model, tok), SenseConfig(align="exact", **base))
    # the transition source off: the global searches counted below are the shifted search's alone
    shift = get_method("sense").factory(_bundle(model, tok), SenseConfig(align="shift", transition=False, **base))
    # the surface differs: where the datastore went on with doc[t + 1], this context wrote `other`
    ctx = ProposeContext(tokens=doc[: t + 1] + [other], prompt_len=10, budget=6, hidden=hs[t])
    assert doc[t + 2: t + 8] not in exact.propose(ctx).sequences
    assert doc[t + 2: t + 8] in shift.propose(ctx).sequences  # one-for-one: drafted from the token after
    # this context went on with doc[t + 3] at once, where the datastore had two more tokens first
    ctx3 = ProposeContext(tokens=doc[: t + 1] + [doc[t + 3]], prompt_len=10, budget=6, hidden=hs[t])
    assert doc[t + 4: t + 10] in shift.propose(ctx3).sequences
    assert doc[t + 4: t + 10] not in exact.propose(ctx3).sequences
    # the global search runs only while no exactly aligned neighbour reaches align_below
    searches: list[int] = []
    search = shift.index.search_prepared
    monkeypatch.setattr(shift.index, "search_prepared", lambda *a, **kw: (searches.append(1), search(*a, **kw))[1])
    same = ProposeContext(tokens=doc[: t + 2], prompt_len=10, budget=6, hidden=hs[t])  # pending doc[t + 1]: key t, cos ~1
    assert doc[t + 2: t + 8] in shift.propose(same).sequences and not searches
    shift.propose(ctx)
    assert len(searches) == 1


def test_sense_context_search(tok: Any, model: Any) -> None:
    ids = tok("def parse_args(self, args=None, namespace=None):\n    return self.parse_known_args(args)\n",
              add_special_tokens=False)["input_ids"]
    seq = ids + tok(" # and again: ", add_special_tokens=False)["input_ids"] + ids[:6]
    hs = _hidden(model, seq[:-1])  # [L, H]: positions with KV; seq[-1] is pending
    proposer = SenseProposer(SenseConfig(min_similarity=0.0, min_score=0.0), index=None)
    assert proposer.wants_context_hidden
    cands = proposer.propose(ProposeContext(tokens=seq, prompt_len=len(seq) - 1, budget=5, hidden=hs[-1],
                                            context_hidden=hs))
    assert cands.sequences[0] == ids[6:11]
    strict = SenseProposer(SenseConfig(min_similarity=0.0, min_score=1e9), index=None)
    assert len(strict.propose(ProposeContext(tokens=seq, prompt_len=1, budget=5, hidden=hs[-1], context_hidden=hs))) == 0
    assert len(proposer.propose(ProposeContext(tokens=seq, prompt_len=1, budget=5, hidden=None))) == 0


def test_sense_sharpness_and_alignment_rank_the_evidence() -> None:
    # Live context with hand-made hidden states: the pending token 5 followed positions 1 and 4.
    # Position 1 is the nearer neighbour (cos 0.9 against 0.8); position 4's preceding token (3)
    # repeats the token before the pending one, position 1's (9) does not.
    tokens = [9, 2, 5, 7, 3, 2, 5, 8, 1, 4, 3, 2, 5]  # pending 5 last; 12 positions with KV
    query = torch.tensor([1.0, 0.0])
    hidden = torch.zeros(12, 2)  # [n, H]
    hidden[:, 1] = 1.0  # every other position is orthogonal to the query (cos 0)
    hidden[1] = torch.tensor([0.9, (1 - 0.81) ** 0.5])
    hidden[5] = torch.tensor([0.8, 0.6])
    hidden[11] = query  # the query's own position
    ctx = ProposeContext(tokens=tokens, prompt_len=1, budget=2, hidden=query, context_hidden=hidden)
    base = dict(min_similarity=0.5, min_score=0.0)
    unranked = dict(sharpness=0.0, depth_decay=1.0, match_bonus=0.0)  # the strict preset's ranking
    plain = SenseProposer(SenseConfig(**base, **unranked), index=None).propose(ctx)
    assert plain.sequences == [[7, 3], [8, 1]] and plain.scores == pytest.approx([0.9, 0.8], abs=1e-6)
    assert plain.depth_decay == 1.0
    # one matching token before each neighbour's position (2 == 2 for both), then 3 only for position 5
    aligned = SenseProposer(SenseConfig(**base, **{**unranked, "match_bonus": 0.2}), index=None).propose(ctx)
    assert aligned.sequences == [[8, 1], [7, 3]] and aligned.scores == pytest.approx([1.2, 1.1], abs=1e-6)
    sharp = SenseProposer(SenseConfig(**base, sharpness=5.0, depth_decay=0.7, match_bonus=0.0), index=None).propose(ctx)
    assert sharp.scores == pytest.approx([1.0, math.exp(-0.5)], abs=1e-6) and sharp.depth_decay == 0.7
    # the gate reads the raw similarities: min_score above the best raw sum drafts nothing, sharpened or not
    assert len(SenseProposer(SenseConfig(sharpness=5.0, match_bonus=0.0, min_similarity=0.5, min_score=0.95),
                             index=None).propose(ctx)) == 0


def test_sense_rejects_a_mismatched_index(index: Path, tok: Any) -> None:
    from _tiny import tiny_model

    other = tiny_model(len(tok), layers=3)
    with pytest.raises(SpecgenError, match="another model"):
        get_method("sense").factory(_bundle(other, tok), SenseConfig(index=str(index)))


def _config(method: str, index: Path) -> Any:
    """rest, sense, sense with the ranking options (sharpness, depth decay, alignment) on, or with
    shifted alignment (every global neighbour aligned, so shifted drafts are verified)."""
    if method == "rest":
        return RESTConfig(index=str(index))
    ranked = {"sense-ranked": dict(sharpness=5.0, depth_decay=0.7, match_bonus=0.2),
              "sense-shift": dict(align="shift", align_min_similarity=-1.0, align_k=8)}.get(method, {})
    return SenseConfig(index=str(index), min_similarity=0.0, min_score=0.0, **ranked)


@pytest.mark.parametrize("method", ["rest", "sense", "sense-ranked", "sense-shift"])
def test_greedy_output_identical_to_ar(method: str, index: Path, tok: Any, model: Any) -> None:
    from specgen.generate import generate

    bundle = _bundle(model, tok)
    idx = SemanticIndex.load(index)
    prompt = idx.tokens[3000:3040].tolist()
    gen = GenerationConfig(max_new_tokens=24, stop_at_eos=False)
    ref = generate(bundle, prompt, method="ar", gen=gen)
    cfg = _config(method, index)
    got = generate(bundle, prompt, method="rest" if method == "rest" else "sense", gen=gen, method_config=cfg)
    assert got.token_ids == ref.token_ids
    assert got.stats.drafted > 0


@pytest.mark.parametrize("method", ["rest", "sense", "sense-ranked", "sense-shift"])
def test_sampled_output_identical_to_ar_with_the_same_seed(method: str, index: Path, tok: Any, model: Any) -> None:
    from specgen.config import SamplingConfig
    from specgen.generate import generate

    bundle = _bundle(model, tok)
    prompt = SemanticIndex.load(index).tokens[3000:3040].tolist()
    cfg = _config(method, index)
    for seed in (0, 1):
        gen = GenerationConfig(max_new_tokens=24, stop_at_eos=False, sampling=SamplingConfig(temperature=0.7, seed=seed))
        ref = generate(bundle, prompt, method="ar", gen=gen)
        got = generate(bundle, prompt, method="rest" if method == "rest" else "sense", gen=gen, method_config=cfg)
        assert got.token_ids == ref.token_ids, seed
        assert got.stats.drafted > 0


@pytest.mark.parametrize("signal", ["embedding", "hidden"])
@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_gate_on_accepts_non_matching_drafts_and_is_reproducible(signal: str, temperature: float, index: Path,
                                                                 tok: Any, model: Any) -> None:
    from specgen.config import SamplingConfig, SoftGateConfig
    from specgen.generate import generate

    bundle = _bundle(model, tok)
    prompt = SemanticIndex.load(index).tokens[3000:3040].tolist()
    gen = GenerationConfig(max_new_tokens=24, stop_at_eos=False, sampling=SamplingConfig(temperature=temperature, seed=3))
    # thresholds that let every probable child through: the gate must fire, and a seed fixes the text
    gate = SoftGateConfig(enabled=True, alpha=0.0, tau_e=-1.0, signal=signal, tau_h=-1.0)
    cfg = SenseConfig(index=str(index), min_similarity=0.0, min_score=0.0, gate=gate)
    first = generate(bundle, prompt, method="sense", gen=gen, method_config=cfg)
    again = generate(bundle, prompt, method="sense", gen=gen, method_config=cfg)
    assert first.stats.gated > 0
    assert first.token_ids == again.token_ids


def test_sense_presets_under_explicit_options() -> None:
    default = SenseConfig()
    assert (default.min_score, default.min_similarity, default.datastore_weight) == (0.25, 0.1, 1.0)
    assert (default.depth_decay, default.sharpness, default.match_bonus, default.align) == (0.7, 5.0, 0.2, "exact")
    shift = make_config("sense", {"preset": "shift"})  # the defaults before the transition source
    assert (shift.align, shift.transition, shift.sharpness) == ("shift", False, 5.0)
    assert make_config("sense", {"preset": "focused"}) == make_config("sense", {"preset": "default"}) == default
    strict = make_config("sense", {"preset": "strict"})  # the earlier defaults
    assert (strict.min_score, strict.min_similarity, strict.datastore_weight) == (0.5, 0.3, 0.5)
    assert (strict.depth_decay, strict.sharpness, strict.match_bonus, strict.align) == (1.0, 0.0, 0.0, "exact")
    assert default.transition and not strict.transition
    for bad in ({"depth_decay": 0.0}, {"depth_decay": 1.5}, {"sharpness": -1.0}, {"match_max": 0}, {"align": "fuzzy"},
                {"align_window": 0}, {"align_k": 0}, {"align_weight": -1.0}, {"align_min_similarity": 2.0},
                {"transition_k": 0}, {"transition_weight": -0.5}, {"transition_ridge": 0.0},
                {"transition_min_similarity": 1.5}, {"transition_fit_rows": 0}):
        with pytest.raises(SpecgenError):
            make_config("sense", bad)
    assert make_config("sense", {"preset": "strict", "min_score": 0.4}).min_score == 0.4
    with pytest.raises(SpecgenError, match="unknown sense preset"):
        make_config("sense", {"preset": "wide"})


def test_shifted_alignment_bridges_substitutions_within_its_ceiling(index: Path, tok: Any, model: Any) -> None:
    """Replayed on an answer that copies the datastore with every 6th token changed (surface variation),
    shifted alignment drafts across the changes; neither tau passes its retrieval ceiling."""
    from specgen.bench.replay import record_trace, replay, retrieval_ceiling

    idx = SemanticIndex.load(index)
    doc = idx.tokens[2000:2120].tolist()
    answer = [t if i % 6 != 5 else (t + 1) % len(tok) for i, t in enumerate(doc[40:])]
    trace = record_trace(_bundle(model, tok), "q", "c", doc[:40], answer, -1)
    taus = {}
    for align in ("exact", "shift"):
        cfg = SenseConfig(index=str(index), use_context=False, min_score=0.0, align=align)
        taus[align] = replay(get_method("sense").factory(_bundle(model, tok), cfg), trace, 16).tau
    exact_ceiling = retrieval_ceiling([trace], idx, use_context=False)
    shift_ceiling = retrieval_ceiling([trace], idx, use_context=False, shift_window=3)
    assert 1.0 < taus["exact"] <= exact_ceiling + 1e-9
    assert taus["exact"] < taus["shift"] <= shift_ceiling + 1e-9
    assert exact_ceiling < shift_ceiling
