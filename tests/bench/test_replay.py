"""Trace replay scores drafting exactly as the decode loop does (the loop is the oracle)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "datastore"))

from _tiny import tiny_model, tiny_tokenizer  # noqa: E402

from specgen.bench.replay import Trace, record_trace, replay, replay_all, retrieval_ceiling  # noqa: E402
from specgen.config import GenerationConfig, PLDConfig  # noqa: E402
from specgen.decoding.policy import DraftPolicyConfig  # noqa: E402
from specgen.decoding.sizing import CostProfile, TreeSizingConfig  # noqa: E402
from specgen.generate import generate  # noqa: E402
from specgen.models import ModelBundle  # noqa: E402
from specgen.proposers.registry import get_method  # noqa: E402
from specgen.proposers.sense import SenseConfig  # noqa: E402

# A fixed CPU-like profile: the same sizing decisions in the loop and in replay, whatever the clock says.
CPU_PROFILE = TreeSizingConfig(mode="cost", sizes=(1, 2, 3, 4, 8, 17), costs=(1.0, 1.02, 1.12, 1.45, 1.8, 2.1))
TEXT = ("def parse_args(self, args=None, namespace=None):\n    args, argv = self.parse_known_args(args, namespace)\n"
        "    if argv:\n        self.error('unrecognized arguments')\n    return args\n\n"
        "def parse_known_args(self, args=None, namespace=None):\n    return self.parse_args(args, namespace)\n")


@pytest.fixture(scope="module")
def bundle() -> Any:
    import torch

    torch.set_num_threads(1)
    tok = tiny_tokenizer()
    return ModelBundle(model=tiny_model(len(tok)), tokenizer=tok, name="tiny", path=None)


@pytest.mark.parametrize("method,cfg", [("pld", PLDConfig()), ("sense", SenseConfig(min_similarity=0.0, min_score=0.0)),
                                        ("sense", SenseConfig(min_similarity=0.0, min_score=0.4))])
@pytest.mark.parametrize("mode", ["always", "adaptive"])
@pytest.mark.parametrize("sizing", [TreeSizingConfig(mode="budget"), CPU_PROFILE])
def test_replay_counts_the_steps_the_loop_takes(bundle: Any, method: str, cfg: Any, mode: str,
                                                sizing: TreeSizingConfig) -> None:
    prompt = bundle.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    gen = GenerationConfig(max_new_tokens=40, stop_at_eos=False, node_budget=8,
                           draft_policy=DraftPolicyConfig(mode=mode), tree_sizing=sizing)
    live = generate(bundle, prompt, method=method, gen=gen, method_config=cfg)
    trace = record_trace(bundle, "q", "code", prompt, live.token_ids, -1 if method == "sense" else None)
    assert trace.hidden is None or trace.hidden.shape[0] == len(prompt) + len(live.token_ids) - 1
    got = replay(get_method(method).factory(bundle, cfg), trace, 8, gen.draft_policy, sizing)
    if sizing.mode == "cost":  # the steps' forward costs under the given profile
        assert got.cost == pytest.approx(sum(CostProfile(list(sizing.sizes), list(sizing.costs or ()))(d + 1)
                                             for d in got.draft_sizes))
    assert got.steps == live.stats.steps
    assert got.tokens == len(live.token_ids) - 1  # the first token comes from prefill
    assert got.accepted == live.stats.accepted
    assert got.drafted == live.stats.drafted
    assert got.plan_s > 0  # every step's proposing and tree building is timed
    if get_method(method).factory(bundle, cfg).self_gated:
        # the policy defers to a self-gated proposer: it never skips; the proposer drafts at some steps only
        assert live.stats.draft_skipped == 0 and 0 < got.drafted and 0 in got.draft_sizes
    else:
        assert got.tau > 1.0  # the prompt repeats itself: drafts must land


class _Values:
    """The two calls `retrieval_ceiling` makes of a SemanticIndex, over a fixed [N, L] value table."""

    def __init__(self, values: list[list[int]]) -> None:
        import numpy as np

        self.values = np.asarray(values, dtype=np.int32)  # [N, L]

    def postings(self, token: int) -> Any:
        import numpy as np

        return np.flatnonzero(self.values[:, 0] == token)

    def continuations(self, ids: Any) -> Any:
        return self.values[ids]

    def __len__(self) -> int:
        return len(self.values)


def test_retrieval_ceiling_by_hand() -> None:
    # pending 9: nothing follows a 9 before it (1 token); pending 2: position 0 was followed by 2, then by
    # 3 4 5 9 2 (only what is committed, and the pending token): 2 of the answer's 3 4 7 agree (3 tokens);
    # pending 7, then 8: nothing (1 token each). 6 tokens after prefill in 4 steps.
    trace = Trace("q", "c", [1, 2, 3, 4, 5], [9, 2, 3, 4, 7, 8, 6], None)
    assert retrieval_ceiling([trace]) == pytest.approx(6 / 4)
    # a datastore key followed by 7 8 6 drafts the 8 6 after the pending 7: the last two steps become one
    assert retrieval_ceiling([trace], _Values([[7, 6, 6], [7, 8, 6]])) == pytest.approx(6 / 3)
    assert retrieval_ceiling([trace], _Values([[7, 8, 6]]), use_context=False) == pytest.approx(6 / 5)
    assert retrieval_ceiling([trace], max_len=1) == pytest.approx(6 / 5)  # one draft token at most


def test_shifted_retrieval_ceiling_by_hand() -> None:
    # out: 9 2 3 4 7 8 6. The one key was followed by 5, never pending here: no exact continuation.
    trace = Trace("q", "c", [1, 2, 3, 4, 5], [9, 2, 3, 4, 7, 8, 6], None)
    assert retrieval_ceiling([trace], _Values([[5, 8, 6]]), use_context=False) == pytest.approx(6 / 6)
    # shifted, its 5 stands for the pending 7 and its 8 6 is the answer's: the last two steps become one
    assert retrieval_ceiling([trace], _Values([[5, 8, 6]]), use_context=False, shift_window=3) == pytest.approx(6 / 5)
    # the pending 7 two tokens in: aligned past it within a window of 3, not of 1
    two_more = _Values([[5, 1, 7, 8, 6]])
    assert retrieval_ceiling([trace], two_more, use_context=False, shift_window=3) == pytest.approx(6 / 5)
    assert retrieval_ceiling([trace], two_more, use_context=False, shift_window=1) == pytest.approx(6 / 6)
    # exact continuations still count: a key followed by the pending 4 drafting 7 8 6
    assert retrieval_ceiling([trace], _Values([[5, 8, 6, -1], [4, 7, 8, 6]]), use_context=False,
                             shift_window=3) == pytest.approx(6 / 4)


def test_retrieval_ceiling_bounds_the_context_drafters(bundle: Any) -> None:
    ids = bundle.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    trace = record_trace(bundle, "q", "code", ids[:40], ids[40:100], -1)
    ceiling = retrieval_ceiling([trace], None, max_len=7)
    assert ceiling > 1.0
    for method, cfg in (("pld", PLDConfig()), ("sense", SenseConfig(min_similarity=-1.0, min_score=0.0)),
                        ("sense", SenseConfig(min_similarity=-1.0, min_score=0.0, depth_decay=0.5, sharpness=5.0))):
        got = replay(get_method(method).factory(bundle, cfg), trace, 8)
        assert 1.0 <= got.tau <= ceiling + 1e-9, method


def test_replay_all_sums_categories(bundle: Any) -> None:
    tok = bundle.tokenizer
    a = tok(TEXT, add_special_tokens=False)["input_ids"]
    traces = [record_trace(bundle, "a", "x", a[:30], a[30:70], None), record_trace(bundle, "b", "y", a[:50], a[50:90], None)]
    res = replay_all(lambda: get_method("pld").factory(bundle, PLDConfig()), traces, 8)
    assert set(res) == {"overall", "x", "y"}
    assert res["overall"].steps == res["x"].steps + res["y"].steps
    assert res["overall"].tokens == 39 + 39
    assert sum(res["overall"].accept_lengths) == res["overall"].tokens
    with pytest.raises(ValueError, match="hidden states"):
        replay(get_method("sense").factory(bundle, SenseConfig()), traces[0], 8)
    with pytest.raises(ValueError, match="no clock"):
        replay(get_method("pld").factory(bundle, PLDConfig()), traces[0], 8, sizing=TreeSizingConfig(mode="cost"))


def test_saved_traces_round_trip_under_their_key(bundle: Any, tmp_path: Path) -> None:
    import torch

    from specgen.bench.replay import read_traces, save_traces, traces_for

    tok = bundle.tokenizer
    a = tok(TEXT, add_special_tokens=False)["input_ids"]
    traces = [record_trace(bundle, "a", "x", a[:30], a[30:70], -1), record_trace(bundle, "b", "y", a[:50], a[50:90], None)]
    key = {"model": {"name": "tiny"}, "suite": "s", "limit": 1, "max_new_tokens": 40}
    path = tmp_path / "tr.pt"
    assert read_traces(path) is None
    save_traces(path, traces, key)
    back = traces_for(read_traces(path), key)
    assert back is not None and [t.output_ids for t in back] == [t.output_ids for t in traces]
    assert torch.equal(back[0].hidden, traces[0].hidden) and back[1].hidden is None
    assert traces_for(read_traces(path), {**key, "limit": 2}) is None  # another key: record again
    # replaying the loaded traces gives the same statistics as the recorded ones
    make = lambda: get_method("pld").factory(bundle, PLDConfig())  # noqa: E731
    assert replay_all(make, back, 8)["overall"].steps == replay_all(make, traces, 8)["overall"].steps


@pytest.mark.slow
def test_replay_cli_on_the_real_model() -> None:
    from typer.testing import CliRunner

    from specgen.cli.main import app

    runner = CliRunner()
    res = runner.invoke(app, ["bench", "replay", "--suite", "humaneval", "--limit", "1", "--methods", "pld,sense",
                              "--budgets", "2,8", "--max-new-tokens", "24"])
    assert res.exit_code == 0, res.output
    for label in ("pld@2", "pld@8", "sense@2", "sense@8", "ceiling@2", "ceiling@8", "overall"):
        assert label in res.stdout
    # the ceiling row bounds every replayed method at the same budget (overall column, before nodes/step
    # and plan ms/step); each method's planning time is a positive number of milliseconds per step
    rows = [line.split("│") for line in res.stdout.splitlines() if line.count("│") > 3 and "@" in line]
    overall = {cells[1].strip(): float(cells[-4]) for cells in rows}
    assert all(float(cells[-2]) > 0 for cells in rows if not cells[1].strip().startswith("ceiling"))
    for budget in (2, 8):
        assert max(overall[f"pld@{budget}"], overall[f"sense@{budget}"]) <= overall[f"ceiling@{budget}"]
    bad = runner.invoke(app, ["bench", "replay", "--methods", "specguard"])
    assert bad.exit_code == 2 and "lossless" in bad.stderr and "Traceback" not in bad.output
