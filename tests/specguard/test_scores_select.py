"""Grounding against a direct eager-attention computation, joint candidate scoring, selectors, AUROC,
cross-tokenizer round trips and the GSM8K helpers."""
from __future__ import annotations

import itertools
import json
import random

import pytest
import torch

from specgen import adapter
from specgen.specguard.config import SpecGuardConfig
from specgen.specguard.scores import score_candidates
from specgen.specguard.select import last_number, numeric_vote, overlap_medoid, embedding_medoid, select_candidate
from specgen.specguard.exchange import DraftStep, step_to_target_ids
from specgen.specguard.verifier import (auroc, corrupt_step, extract_answer, gsm8k_accuracy, load_gsm8k,
                                        run_verifier_study, split_steps)

from _sg_tiny import tiny_llama


def _prefill(model, ids: list[int]):
    cache = adapter.new_cache(model)
    n = len(ids)
    out = adapter.tree_forward(model, torch.tensor(ids), torch.arange(n), cache, torch.ones(n, n, dtype=torch.bool).tril_(),
                               logits_for=torch.tensor([n - 1]))
    return cache, out.logits[-1]


def test_grounding_and_confidence_match_eager_attention() -> None:
    model = tiny_llama(300, 3)
    ctx, step = [5, 17, 42, 99, 7, 250, 31, 64], [11, 12, 200, 3, 8]
    adapter.use_tree_attention(model)
    cache, last = _prefill(model, ctx)
    cfg = SpecGuardConfig(grounding_layers=2)
    sc = score_candidates(model, cache, [step], last, cfg)[0]
    model.set_attn_implementation("eager")
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([ctx + step]), output_attentions=True)
    n = len(ctx)
    att = torch.stack(out.attentions)[:, 0]  # [layers, H, T, T]
    direct = att[:, :, n:, 1:n].sum(-1).mean(dim=(0, 1))  # [m]: mass on context, sink excluded
    torch.testing.assert_close(sc.token_grounding, direct, atol=1e-5, rtol=1e-4)
    assert sc.grounding == pytest.approx(float(direct.min()), abs=1e-5)
    lp = torch.log_softmax(out.logits[0, n - 1:-1].float(), -1).gather(1, torch.tensor(step).view(-1, 1)).squeeze(1)
    torch.testing.assert_close(sc.token_logprobs, lp, atol=1e-4, rtol=1e-4)
    assert sc.confidence == pytest.approx(float(lp.mean().exp()), rel=1e-4)


def test_joint_scoring_equals_separate_and_commit_keeps_the_chosen_chain() -> None:
    model = tiny_llama(300, 4)
    adapter.use_tree_attention(model)
    ctx, cands = [5, 6, 7, 8, 9, 10], [[20, 21, 22], [30, 31], [40, 41, 42, 43]]
    cfg = SpecGuardConfig(grounding_layers=2)
    cache, last = _prefill(model, ctx)
    joint = score_candidates(model, cache, cands, last, cfg)
    adapter.commit_cache(cache, len(ctx), [3, 4])  # keep the second chain (fed nodes 3, 4)
    after_commit = score_candidates(model, cache, [[50, 51]], joint[1].last_logits, cfg)[0]
    for c, j in zip(cands, joint):
        cache1, _ = _prefill(model, ctx)
        alone = score_candidates(model, cache1, [c], last, cfg)[0]
        torch.testing.assert_close(j.token_grounding, alone.token_grounding, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(j.token_logprobs, alone.token_logprobs, atol=1e-4, rtol=1e-4)
    cache2, last2 = _prefill(model, ctx + cands[1])
    ref = score_candidates(model, cache2, [[50, 51]], last2, cfg)[0]
    torch.testing.assert_close(after_commit.token_logprobs, ref.token_logprobs, atol=1e-4, rtol=1e-4)


def test_overlap_medoid_on_hand_made_sets() -> None:
    texts = ["She has 5 + 3 = 8 apples.", "She has 5 + 3 = 8 apples now.", "The answer is blue.", "She has 8 apples."]
    assert overlap_medoid(texts) in (0, 1)
    assert overlap_medoid(["a b c", "x y z", "a b d", "a b c"]) == 0  # ties keep the first
    assert select_candidate(["only"], "overlap") == 0
    vecs = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.95, 0.05]])
    assert embedding_medoid(vecs) == 1  # summed cosine 2.10 vs 2.05 for row 3


def test_numeric_majority_vote() -> None:
    steps = ["So 4 * 3 = 12.", "Then 4 * 3 = 13.", "Thus 4 x 3 = 12", "no number here"]
    assert numeric_vote(steps) in (0, 2)
    assert numeric_vote(["total 1,200.0", "1200", "1300"]) in (0, 1)
    assert last_number("it costs $1,200.50 now") == "1200.5"
    assert numeric_vote(["no", "numbers", "no"]) == overlap_medoid(["no", "numbers", "no"])


def test_auroc_matches_pairwise_count() -> None:
    rng = random.Random(0)
    for _ in range(20):
        scores = [rng.choice([0.1, 0.2, 0.3, 0.5, 0.9]) for _ in range(25)]
        labels = [rng.randint(0, 1) for _ in range(25)]
        pos = [s for s, y in zip(scores, labels) if y]
        neg = [s for s, y in zip(scores, labels) if not y]
        if not pos or not neg:
            continue
        brute = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p, q in itertools.product(pos, neg)) / (len(pos) * len(neg))
        assert auroc(scores, labels) == pytest.approx(brute)
    assert auroc([1.0, 2.0], [1, 1]) != auroc([1.0, 2.0], [1, 1])  # nan without negatives


def test_cross_tokenizer_steps_round_trip(smol_tokenizer, draft_bundle, target_bundle) -> None:
    texts = ["Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n\n", "So, 48 + 24 = 72 clips.\n", " ünïcode → 3×4\n\n"]
    for text in texts:
        ids = step_to_target_ids(DraftStep(text, False, 0), target_bundle)
        assert smol_tokenizer.decode(ids) == text
        d_ids = draft_bundle.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert draft_bundle.tokenizer.decode(d_ids) == text
    eos_ids = step_to_target_ids(DraftStep("done", True, 0), target_bundle)
    assert eos_ids[-1] == smol_tokenizer.eos_token_id
    # joining steps as text tokenizes like the concatenated step tokens (delimiter seam)
    joint = smol_tokenizer(texts[0] + texts[1], add_special_tokens=False)["input_ids"]
    parts = sum((step_to_target_ids(DraftStep(t, False, 0), target_bundle) for t in texts[:2]), [])
    assert joint == parts


def test_gsm8k_helpers(tmp_path) -> None:
    f = tmp_path / "g.jsonl"
    f.write_text('{"question": "q1?", "answer": "a = <<2+3=5>>5\\nb is 5*2 = 10\\n#### 1,000"}\n'
                 '{"question": "q2?", "answer": "x\\n#### 7"}\n')
    probs = load_gsm8k(f)
    assert [p.answer for p in probs] == ["1000", "7"] and probs[0].solution == "a = 5\nb is 5*2 = 10"
    assert split_steps(probs[0].solution) == ["a = 5", "b is 5*2 = 10"]
    assert extract_answer("so ... #### 1,000\nmore 5") == "1000"
    assert extract_answer("The answer is $7.") == "7"
    assert extract_answer("we get 3 then 12") == "12"
    assert gsm8k_accuracy(["#### 1000", "8"], probs) == 0.5
    rng = random.Random(0)
    bad = corrupt_step("b is 5*2 = 10", rng)
    assert bad is not None and bad != "b is 5*2 = 10" and bad.startswith("b is 5*2 = ")
    assert corrupt_step("x + y", rng) == "x - y" and corrupt_step("none", rng) is None


def test_verifier_study_on_tiny_model(target_bundle, tmp_path) -> None:
    f = tmp_path / "g.jsonl"
    f.write_text('{"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = 7\\nHe has 7.\\n#### 7"}\n'
                 '{"question": "2 pens cost 6. One pen?", "answer": "6 / 2 = 3\\n#### 3"}\n')
    out = run_verifier_study(target_bundle, load_gsm8k(f), SpecGuardConfig(grounding_layers=2))
    assert out["pairs"] == 3 and set(out["auroc"]) >= {"conf_mean_exp", "grounding_min", "ensemble"}
    assert all(0.0 <= v <= 1.0 for v in out["auroc"].values())


def test_cli_bench_verifier_table_and_json(target_bundle, tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    import specgen.models
    from specgen.cli.main import app

    f = tmp_path / "g.jsonl"
    f.write_text('{"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = 7\\nHe has 7.\\n#### 7"}\n')
    monkeypatch.setattr(specgen.models, "load_model", lambda *a, **k: target_bundle)
    cfg = tmp_path / "m.yaml"
    cfg.write_text("specguard:\n  grounding_layers: 2\n")
    out = tmp_path / "v.json"
    r = CliRunner().invoke(app, ["bench", "--verifier", "--suite", str(f), "--method-config", str(cfg), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "AUROC" in r.output and "ensemble" in r.output
    study = json.loads(out.read_text())
    assert study["pairs"] == 2 and 0.0 <= study["auroc"]["ensemble"] <= 1.0 and len(study["rows"]) == 4
    bad = CliRunner().invoke(app, ["bench", "--verifier", "--suite", str(tmp_path / "missing.jsonl")])
    assert bad.exit_code == 2 and "--verifier needs" in bad.output and "Traceback" not in bad.output
