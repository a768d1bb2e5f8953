"""Runner, peers and CLI end to end on a tiny random LLaMA (fast; no real model)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from _bench_fakes import tiny_bundle
from specgen.bench.peers import PEERS, run_peer
from specgen.bench.runner import BenchConfig, run_bench


@pytest.fixture(scope="module")
def tiny() -> Any:
    return tiny_bundle()


def test_real_generate_lossless_methods_match_ar(tiny: Any, tiny_suite: Path) -> None:
    cfg = BenchConfig(suite=str(tiny_suite), methods=("pld", "sd"), limit=1, max_new_tokens=8, warmup=0, turns=2)
    res = run_bench(cfg, bundle=tiny)
    assert {r["method"] for r in res.records} == {"ar", "pld", "sd"}
    assert all(r["identical_to_ar"] for r in res.records), [(r["method"], r["question_id"]) for r in res.records
                                                            if not r["identical_to_ar"]]
    assert res.metrics["ar"]["overall"]["tau"] == pytest.approx(1.0)
    assert res.metrics["sd"]["overall"]["tau"] >= 1.0
    assert all(r["new_tokens"] >= 1 and r["wall_time"] > 0 for r in res.records)


def test_peers_greedy_match_and_restore_attention(tiny: Any) -> None:
    from specgen import adapter
    from specgen.generate import encode_prompt, generate

    adapter.use_tree_attention(tiny.model)
    before = tiny.model.config._attn_implementation
    ids = encode_prompt(tiny.tokenizer, "def parse_args(self, args=None):")
    from specgen.config import GenerationConfig

    ours = generate(tiny, ids, method="ar", gen=GenerationConfig(max_new_tokens=10)).token_ids
    for name in PEERS:
        res = run_peer(tiny, name, ids, 10)
        assert res.token_ids == ours, name
        assert tiny.model.config._attn_implementation == before
    assert run_peer(tiny, "hf-generate", ids, 10).steps == len(ours) - 1


def test_assisted_peer_with_a_separate_draft_matches_greedy(tiny: Any) -> None:
    """hf-assisted: HF assisted generation with a separate draft model (here a noisy copy of the
    target, as a family draft would be) is lossless, counts only target forwards, restores both
    models' attention."""
    import copy

    import torch

    from specgen.bench.peers import ASSISTED
    from specgen.config import GenerationConfig
    from specgen.generate import generate

    draft = copy.deepcopy(tiny)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        for p in draft.model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.2 * p.std())
    draft.model.set_attn_implementation("eager")
    ids = [3, 17, 42, 9]
    ours = generate(tiny, ids, method="ar", gen=GenerationConfig(max_new_tokens=12)).token_ids
    res = run_peer(tiny, ASSISTED, ids, 12, assistant=draft)
    assert res.token_ids == ours
    assert res.steps is not None and 1 <= res.steps < len(ours) - 1  # some drafted tokens were accepted
    assert draft.model.config._attn_implementation == "eager"
    from specgen.errors import SpecgenError

    with pytest.raises(SpecgenError, match="needs a draft model"):
        run_peer(tiny, ASSISTED, ids, 4)


def test_assisted_peer_is_planned_only_for_a_target_with_a_family_draft() -> None:
    from specgen.bench.runner import plan_methods

    runs, notes = plan_methods(BenchConfig(methods=("ar",), peers=True, model="qwen2.5-coder-1.5b"))
    assisted = [r for r in runs if r.method == "hf-assisted"]
    assert len(assisted) == 1 and assisted[0].config.draft_model == "qwen2.5-coder-0.5b"
    runs, notes = plan_methods(BenchConfig(methods=("ar",), peers=True))
    assert not [r for r in runs if r.method == "hf-assisted"] and any("hf-assisted" in n for n in notes)


def test_cli_bench_runs_with_tiny_model(tiny: Any, tiny_suite: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import typer
    from typer.testing import CliRunner

    import specgen.models
    from specgen.cli.bench import bench_app

    monkeypatch.setattr(specgen.models, "load_model", lambda *a, **k: tiny)
    app = typer.Typer()
    app.add_typer(bench_app, name="bench")
    mc = tmp_path / "methods.yaml"
    mc.write_text("pld:\n  num_draft: 4\n")
    out = tmp_path / "res.json"
    r = CliRunner().invoke(app, ["bench", "--suite", str(tiny_suite), "--methods", "ar,pld", "--limit", "1",
                                 "--max-new-tokens", "6", "--warmup", "0", "--method-config", str(mc), "--peers", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "overall" in r.output and "hf-pld" in r.output and "pld" in r.output
    data = json.loads(out.read_text())
    assert {x["method"] for x in data["records"]} == {"ar", "pld", "hf-generate", "hf-pld", "hf-early-exit"}
    assert data["methods"][1]["config"]["num_draft"] == 4
    r2 = CliRunner().invoke(app, ["bench", "compare", str(out), str(out)])
    assert r2.exit_code == 0 and "+0.00" in r2.output


def test_cost_curve_on_a_tiny_model(tiny: Any) -> None:
    from specgen.bench.costcurve import cost_curve

    curve = cost_curve(tiny, sizes=(1, 2, 4), prefix=16, reps=1)
    assert curve.sizes == (1, 2, 4) and curve.prefix == 16 and curve.relative[0] == 1.0
    assert list(curve.seconds) == sorted(curve.seconds) and all(s > 0 for s in curve.seconds)
    d = curve.to_dict()
    assert d["relative"][0] == 1.0 and d["threads"] >= 1 and d["linear"] == "aten"  # a tiny model built unpacked

