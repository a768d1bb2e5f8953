"""Device placement without a GPU: the engine runs every token-level method with torch's default
device set to "meta", so any tensor the loop creates without naming the model's device is a meta
tensor and the run fails (a meta tensor meets a CPU one, or cannot be read)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

from specgen.config import DraftModelConfig, GenerationConfig, PLDConfig, SamplingConfig, SoftGateConfig
from specgen.datastore import IndexBuildConfig, build_index
from specgen.decoding.policy import DraftPolicyConfig
from specgen.decoding.sizing import TreeSizingConfig
from specgen.generate import generate
from specgen.models import ModelBundle
from specgen.proposers.rest import RESTConfig
from specgen.proposers.sense import SenseConfig


@pytest.fixture(scope="module")
def meta_index(tmp_path_factory: pytest.TempPathFactory, tok: Any, model: Any) -> Path:
    from _tiny import stdlib_sources

    root = tmp_path_factory.mktemp("meta")
    (root / "corpus").mkdir()
    (root / "corpus" / "a.py").write_text(stdlib_sources()[1].read_text()[:8000])
    build_index(model, tok, root / "corpus", root / "idx", IndexBuildConfig(window=256, overlap=64, batch_tokens=1024))
    return root / "idx"


@pytest.fixture()
def meta_default() -> Iterator[None]:
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)


def _configs(index: Path) -> dict[str, Any]:
    return {"ar": None, "pld": PLDConfig(min_ngram=1), "sd": DraftModelConfig(draft_layers=1, num_draft=3),
            "rest": RESTConfig(index=str(index), min_suffix_len=1),
            "sense": SenseConfig(index=str(index), min_score=0.0, min_similarity=-1.0),
            "sense-gate": SenseConfig(index=str(index), min_score=0.0, min_similarity=-1.0,
                                      gate=SoftGateConfig(enabled=True, alpha=0.0, tau_e=-1.0))}


@pytest.mark.parametrize("temperature", [0.0, 0.9])
@pytest.mark.parametrize("label", ["ar", "pld", "sd", "rest", "sense", "sense-gate"])
def test_engine_creates_every_tensor_on_the_model_device(label: str, temperature: float, tok: Any, model: Any,
                                                         meta_index: Path) -> None:
    bundle = ModelBundle(model=model, tokenizer=tok, name="tiny", path=None)
    prompt = tok("def parse(self, args):\n    return self.", add_special_tokens=False)["input_ids"]
    gen = GenerationConfig(max_new_tokens=12, sampling=SamplingConfig(temperature=temperature, seed=3),
                           tree_sizing=TreeSizingConfig(mode="budget"), draft_policy=DraftPolicyConfig(mode="always"))
    method = label.split("-")[0]
    cfg = _configs(meta_index)[label]
    expected = generate(bundle, prompt, method=method, gen=gen, method_config=cfg)  # on the CPU, as usual
    torch.set_default_device("meta")
    try:
        out = generate(bundle, prompt, method=method, gen=gen, method_config=cfg)
    finally:
        torch.set_default_device(None)
    assert out.token_ids == expected.token_ids
    assert out.stats.drafted > 0 or label == "ar"
    assert out.stats.device == "cpu" and out.stats.attention == "torch" and out.stats.dtype == "float32"
