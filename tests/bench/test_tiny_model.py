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
