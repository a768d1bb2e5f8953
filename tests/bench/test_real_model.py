"""`specgen bench` on the real model (slow)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest


@pytest.mark.slow
def test_cli_bench_real_model(bench_bundle: Any, tiny_suite: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import typer
    from typer.testing import CliRunner

    import specgen.models
    from specgen.cli.bench import bench_app

    monkeypatch.setattr(specgen.models, "load_model", lambda *a, **k: bench_bundle)
    app = typer.Typer()
    app.add_typer(bench_app, name="bench")
    out = tmp_path / "tmp.json"
    r = CliRunner().invoke(app, ["bench", "--suite", str(tiny_suite), "--methods", "ar,pld", "--limit", "1",
                                 "--max-new-tokens", "8", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "overall" in r.output and "tok/s" in r.output
    data = json.loads(out.read_text())
    recs = data["records"]
    assert {x["method"] for x in recs} == {"ar", "pld"} and len(recs) == 4
    assert all(x["identical_to_ar"] for x in recs)
    assert all(x["embed_cos_ar"] == 1.0 for x in recs)  # the identical answers of a lossless method
    assert data["metrics"]["ar"]["overall"]["tau"] == pytest.approx(1.0)
    assert data["environment"]["transformers"]
