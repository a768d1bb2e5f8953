"""The acceptance calibration `specgen generate` keeps on disk (decoding/stored.py)."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from specgen.config import GenerationConfig, PLDConfig
from specgen.decoding.calibration import SHARED_WINDOW, AcceptanceModel
from specgen.decoding.policy import DraftPolicyConfig
from specgen.decoding.sizing import TreeSizingConfig
from specgen.decoding.stored import calibration_key, calibration_path, load_calibration
from specgen.errors import SpecgenError
from specgen.generate import generate

PROMPT = [3, 1, 4, 1, 5, 9, 2, 6, 3, 1, 4, 1, 5, 9, 2, 6, 3, 1, 4]  # repeats: prompt lookup drafts
# Given costs (no timing) that make a 2- or 3-node tree pay at the prior, so the run drafts.
SIZING = TreeSizingConfig(mode="cost", sizes=(1, 2, 3, 4, 8, 17), costs=(1.0, 1.02, 1.05, 1.3, 1.8, 2.1))
GEN = GenerationConfig(max_new_tokens=24, stop_at_eos=False, tree_sizing=SIZING,
                       draft_policy=DraftPolicyConfig(mode="always"))


def test_a_calibration_round_trips_through_its_dict() -> None:
    m = AcceptanceModel(prior_mean=0.3, prior_weight=2.0, window=SHARED_WINDOW)
    m.update([0.3, 1.0, 5.0, 20.0], [1, 2, 4, 9], [True, True, False, False])
    back = AcceptanceModel.from_dict(json.loads(json.dumps(m.to_dict())))
    assert back.accepted == m.accepted and back.drafted == m.drafted and back.window == SHARED_WINDOW
    assert back.parent is None and back.prob(5.0, 4) == m.prob(5.0, 4) < 0.3
    for bad in ({**m.to_dict(), "edges": [1.0, 2.0]}, {**m.to_dict(), "drafted": m.drafted[:-1]},
                {**m.to_dict(), "accepted": [a + 5.0 for a in m.accepted]}):  # more accepted than drafted
        with pytest.raises(ValueError):
            AcceptanceModel.from_dict(bad)


def _total(path: Path) -> float:
    return sum(json.loads(path.read_text())["drafted"])


def test_stored_calibration_carries_one_run_to_the_next(tiny_bundle: Any, _own_calibration_dir: Path) -> None:
    ar = generate(tiny_bundle, PROMPT, method="ar", gen=GEN)
    prior = sum(AcceptanceModel.for_sizing(SIZING).drafted)
    path = calibration_path(tiny_bundle.model, "pld", PLDConfig(), GEN)
    assert not path.exists()
    first = generate(tiny_bundle, PROMPT, method="pld", gen=GEN, calibration="stored")
    assert first.token_ids == ar.token_ids and first.stats.drafted > 0  # lossless, and it drafted
    assert path.parent == _own_calibration_dir and _total(path) == pytest.approx(prior + first.stats.drafted)
    second = generate(tiny_bundle, PROMPT, method="pld", gen=GEN, calibration="stored")
    assert second.token_ids == ar.token_ids
    # the second run started from the first's counts (loaded), and added its own
    assert _total(path) == pytest.approx(prior + first.stats.drafted + second.stats.drafted)
    loaded = load_calibration(tiny_bundle.model, "pld", PLDConfig(), GEN)
    assert loaded.window == SHARED_WINDOW and sum(loaded.drafted) == pytest.approx(_total(path))
    # without `calibration` nothing is read or written
    before = path.read_text()
    generate(tiny_bundle, PROMPT, method="pld", gen=GEN)
    assert path.read_text() == before and len(list(_own_calibration_dir.iterdir())) == 1


def test_a_shared_in_memory_calibration_learns_as_the_stored_one(tiny_bundle: Any) -> None:
    shared = AcceptanceModel.for_sizing(SIZING, window=SHARED_WINDOW)
    out = generate(tiny_bundle, PROMPT, method="pld", gen=GEN, calibration=shared)
    assert sum(shared.drafted) == pytest.approx(sum(AcceptanceModel.for_sizing(SIZING).drafted) + out.stats.drafted)
    with pytest.raises(SpecgenError, match="calibration must be"):
        generate(tiny_bundle, PROMPT, method="pld", gen=GEN, calibration="disk")


def test_an_unreadable_stored_calibration_starts_from_the_prior(tiny_bundle: Any) -> None:
    path = calibration_path(tiny_bundle.model, "pld", PLDConfig(), GEN)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"edges": [1.0], "accep')  # a torn write from some other tool
    fresh = load_calibration(tiny_bundle.model, "pld", PLDConfig(), GEN)
    assert fresh.drafted == AcceptanceModel.for_sizing(SIZING).drafted
    out = generate(tiny_bundle, PROMPT, method="pld", gen=GEN, calibration="stored")
    assert _total(path) == pytest.approx(sum(fresh.drafted) + out.stats.drafted)  # replaced by a whole one


def test_the_key_separates_what_calibrates_differently(tiny_bundle: Any) -> None:
    m = tiny_bundle.model
    key = calibration_key(m, "pld", PLDConfig(), GEN)
    assert key == calibration_key(m, "pld", PLDConfig(), replace(GEN, max_new_tokens=7))  # length is not part
    sampled = replace(GEN, sampling=replace(GEN.sampling, temperature=0.8))
    others = {calibration_key(m, "sense", PLDConfig(), GEN), calibration_key(m, "pld", PLDConfig(max_ngram=2), GEN),
              calibration_key(m, "pld", PLDConfig(), sampled),
              calibration_key(m, "pld", PLDConfig(), replace(GEN, tree_sizing=replace(SIZING, prior_mean=0.5)))}
    assert key not in others and len(others) == 4
