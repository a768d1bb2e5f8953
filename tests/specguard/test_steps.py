"""The step-level loop on tiny random models: accept keeps the draft step, reject substitutes the
target's own step, tau = 0 is the draft, an unreachable tau is the target's greedy output."""
from __future__ import annotations

from typing import Any

import pytest

from specgen.config import GenerationConfig
from specgen.errors import SpecgenError
from specgen.generate import encode_prompt, generate
from specgen.specguard.config import SpecGuardConfig
from specgen.specguard.exchange import DraftStep, step_to_target_ids
from specgen.specguard.steps import check_target, load_specguard_draft

PROMPT = "Tom has 3 apples and buys 4 more. How many apples does he have?"
GEN = GenerationConfig(max_new_tokens=18)


def _cfg(**kw: object) -> SpecGuardConfig:
    base = dict(draft_model=None, candidates=3, max_step_tokens=6, grounding_layers=2)
    base.update(kw)
    return SpecGuardConfig(**base)  # type: ignore[arg-type]


def test_tau_zero_is_the_drafts_chosen_steps(target_bundle, draft_bundle) -> None:
    res = generate(target_bundle, PROMPT, method="specguard", gen=GEN, method_config=_cfg(tau=0.0), draft=draft_bundle)
    sg = res.extra["specguard"]
    assert sg["recomputed_steps"] == 0 and sg["accepted_steps"] == len(sg["steps"]) >= 2
    assert all(s["source"] == "draft" for s in sg["steps"])
    # the delimiter never occurs in random text: every step fell back to the token cap
    assert res.text == "".join(s["draft_text"] for s in sg["steps"])[: len(res.text)]
    assert res.stats.new_tokens == len(res.token_ids) == sum(s["tokens"] for s in sg["steps"])
    assert res.stats.steps == len(sg["steps"]) and res.stats.wall_s > 0


def test_unreachable_tau_is_target_greedy(target_bundle, draft_bundle) -> None:
    ar = generate(target_bundle, PROMPT, method="ar", gen=GEN)
    res = generate(target_bundle, PROMPT, method="specguard", gen=GEN, method_config=_cfg(tau=1.0), draft=draft_bundle)
    sg = res.extra["specguard"]
    assert sg["accepted_steps"] == 0 and sg["recomputed_steps"] >= 2
    assert res.token_ids == ar.token_ids and res.text == ar.text


def test_pass_keeps_step_fail_substitutes_target_step(target_bundle, draft_bundle) -> None:
    calls: list[str] = []

    def scorer(context: str, step: str) -> float:  # RSD-style: accept the first step only
        calls.append(step)
        return 1.0 if len(calls) == 1 else 0.0

    cfg = _cfg(tau=0.5, scorer=scorer)
    res = generate(target_bundle, PROMPT, method="specguard", gen=GEN, method_config=cfg, draft=draft_bundle)
    first, second = res.extra["specguard"]["steps"][:2]
    assert first["source"] == "draft" and first["text"] == first["draft_text"] == calls[0]
    assert second["source"] == "target"
    # the substitute is the target's own greedy step after the accepted one
    ids = encode_prompt(target_bundle.tokenizer, PROMPT)
    ids += step_to_target_ids(DraftStep(first["draft_text"], False, 0), target_bundle)
    own = generate(target_bundle, ids, method="ar", gen=GenerationConfig(max_new_tokens=6))
    assert second["text"] == own.text
    assert res.text.startswith(first["draft_text"] + own.text)


def test_relative_reference_and_other_selectors_run(target_bundle, draft_bundle) -> None:
    for kw in (dict(grounding_reference="relative"), dict(selector="embedding"), dict(selector="numeric"),
               dict(rule="and"), dict(signals="grounding"), dict(confidence="min", grounding_reduce="quantile")):
        res = generate(target_bundle, PROMPT, method="specguard", gen=GenerationConfig(max_new_tokens=8),
                       method_config=_cfg(**kw), draft=draft_bundle)
        assert 0 < res.stats.new_tokens <= 8


def test_self_draft_when_no_draft_model(target_bundle) -> None:
    assert load_specguard_draft(target_bundle, _cfg()) is target_bundle
    res = generate(target_bundle, PROMPT, method="specguard", gen=GenerationConfig(max_new_tokens=8), method_config=_cfg())
    assert res.stats.new_tokens == 8


def test_bad_input_is_one_line_error(target_bundle) -> None:
    with pytest.raises(SpecgenError):
        load_specguard_draft(target_bundle, _cfg(draft_model="/nonexistent/draft.gguf"))
    for kw in (dict(candidates=0), dict(tau=1.5), dict(beta=-0.1), dict(tau_grounding=2.0), dict(selector="x"),
               dict(step_delimiter=""), dict(max_step_tokens=0), dict(recompute_method="specguard")):
        with pytest.raises(SpecgenError) as err:
            _cfg(**kw)
        assert "\n" not in str(err.value)
    with pytest.raises(SpecgenError):
        generate(target_bundle, PROMPT, method="specguard", method_config=_cfg(recompute_method="nope"))

    class Sliding:
        name = "gemma"

        class model:  # noqa: N801
            class config:  # noqa: N801
                layer_types = ["sliding_attention", "full_attention"]

    with pytest.raises(SpecgenError):
        check_target(Sliding())


def test_make_config_from_cli_options() -> None:
    from specgen.proposers.registry import make_config

    cfg = make_config("specguard", {"candidates": 2, "tau": 0.3, "step_delimiter": "\n", "beta": None})
    assert cfg == SpecGuardConfig(candidates=2, tau=0.3, step_delimiter="\n")


@pytest.mark.slow
def test_real_pairing_runs_out_of_the_box(real_bundle: Any) -> None:
    res = generate(real_bundle, "What is 2 + 3?", method="specguard", gen=GenerationConfig(max_new_tokens=24))
    sg = res.extra["specguard"]
    assert res.stats.new_tokens > 0 and sg["draft_model"] == "gemma3-270m"
    assert sg["accepted_steps"] + sg["recomputed_steps"] == len(sg["steps"]) >= 1
