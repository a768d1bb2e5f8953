"""Tune `sense` on the paraphrase suite's tune half and report on the eval half (README, Results).

    .venv/bin/python docs/tune_sense_paraphrase.py tune   # pld, rest, sense: a 27-point grid and the ranking grid
                                                          # (over --preset strict), the alignment grid (over the defaults)
    .venv/bin/python docs/tune_sense_paraphrase.py eval   # pld, rest, sense --preset strict and the defaults
    .venv/bin/python docs/tune_sense_paraphrase.py gate tune|eval  # the soft gate: a grid (tune) or the
                                                                   # chosen settings (eval), live decoding
    .venv/bin/python docs/tune_sense_paraphrase.py layers tune     # sense's defaults keyed on other layers

Embedded model, one thread, trace replay (node budget 16, adaptive draft policy, 128 new tokens):
the same library calls `specgen bench replay --suite paraphrase` makes, looped over settings
(replay takes one config per method). Traces are cached in $TMPDIR/para_<split>.pt (or
$SPECGEN_TRACES); $SPECGEN_MODEL names another target, $SPECGEN_LIMIT caps paraphrases per category.
`layers` rebuilds the datastore keyed on decoder layers at 1/2, 3/4 and
the last of the target's depth (cached beside the final-layer one) and re-keys the traces there.
The gate is lossy, so it is decoded live (greedy, the default sizing) and compared with the
recorded `ar` answer: tau, exact match, ROUGE-L and the target's embedding cosine.
"""
import itertools
import json
import os
import sys
import tempfile

import torch

from specgen.bench.paraphrase import ensure_datastore, load_pairs, paraphrase_questions, split_pairs
from specgen.bench.replay import read_traces, record_questions, replay_all, save_traces, traces_for
from specgen.decoding.policy import DraftPolicyConfig
from specgen.models import load_model
from specgen.proposers.registry import get_method, make_config

# The best on the tune half became the defaults (specgen/proposers/sense.py SENSE_PRESETS); the first
# two grids vary the earlier defaults (--preset strict), the alignment grid (with two depth decays) the current ones.
TUNED: dict = {}
STRICT = dict(preset="strict")
ALIGN_GRID = [dict(align="exact"), {}, dict(align_window=1), dict(align_min_similarity=0.3), dict(align_k=32),
              dict(align_below=3.0), dict(depth_decay=0.8), dict(depth_decay=1.0)]
# The ranking options added in the fifth session, each on top of the first grid's best point.
RANKING_GRID = [dict(min_score=0.25, min_similarity=0.1, datastore_weight=1.0, **opts) for opts in (
    {}, dict(depth_decay=0.7), dict(sharpness=5.0), dict(depth_decay=0.7, sharpness=5.0),
    dict(depth_decay=0.7, sharpness=5.0, match_bonus=0.2), dict(depth_decay=0.5, sharpness=5.0, match_bonus=0.2),
    dict(depth_decay=0.7, sharpness=10.0, match_bonus=0.2), dict(depth_decay=0.7, sharpness=5.0, match_bonus=0.4))]
GATE_GRID = [dict(gate_alpha=0.1, gate_tau_e=0.3), dict(gate_alpha=0.3, gate_tau_e=0.5)] + \
            [dict(gate_alpha=a, gate_signal="hidden", gate_tau_h=t) for a, t in ((0.1, 0.9), (0.3, 0.9), (0.3, 0.95))]


def gate(bundle: object, traces: list, index: str, split: str) -> None:
    """Live sense-gate decodes of each recorded prompt, scored against the recorded ar answer."""
    from specgen.bench.metrics import embedding_cosine, rouge_l
    from specgen.config import GenerationConfig
    from specgen.generate import generate

    skip = int(os.environ.get("SPECGEN_GATE_SKIP", "0"))  # settings already reported (a resumed grid)
    grid = GATE_GRID[skip:] if split == "tune" else [dict(gate_alpha=0.3, gate_tau_e=0.5),
                                               dict(gate_alpha=0.3, gate_signal="hidden", gate_tau_h=0.9)]
    for opts in grid:
        cfg = make_config("sense", dict(index=index, gate_enabled=True, **opts))
        steps = new = em = 0
        rouge, cos = [], []
        for t in traces:
            res = generate(bundle, list(t.prompt_ids), method="sense", method_config=cfg,
                           gen=GenerationConfig(max_new_tokens=128))
            ref = bundle.tokenizer.decode(list(t.output_ids), skip_special_tokens=True)
            steps, new = steps + res.stats.steps, new + res.stats.new_tokens
            em += res.text.strip() == ref.strip()
            rouge.append(rouge_l(res.text, ref))
            cos.append(embedding_cosine(bundle.model, res.token_ids, list(t.output_ids)))
        n = len(traces)
        print(f"tau {new / max(1, steps):.3f}  em {em / n:.0%}  rouge-l {sum(rouge) / n:.3f}  cos {sum(cos) / n:.4f}  "
              f"{json.dumps(opts)}", flush=True)


def layers(bundle: object, traces: list, index: str, tau: object) -> None:
    """sense's defaults over datastores keyed on other layers (the traces re-keyed to match)."""
    from pathlib import Path

    from specgen.bench.replay import record_trace
    from specgen.datastore.build import IndexBuildConfig, build_index

    depth = int(bundle.model.config.num_hidden_layers)
    print(f"{tau(traces, 'sense', index=index):.3f}  sense, final normed state (layer -1)", flush=True)
    for layer in sorted({depth // 2, 3 * depth // 4, depth - 1}):
        folder = Path(index).parent / f"index-layer{layer}"
        if not (folder / "manifest.json").is_file():
            build_index(bundle.model, bundle.tokenizer, Path(index).parent / "corpus.jsonl", folder,
                        IndexBuildConfig(layer=layer), model_identity=bundle.identity())
        keyed = [record_trace(bundle, t.question_id, t.category, t.prompt_ids, t.output_ids, layer) for t in traces]
        print(f"{tau(keyed, 'sense', index=str(folder)):.3f}  sense, decoder layer {layer} of {depth}", flush=True)


def main(split: str, mode: str = "replay") -> None:
    torch.set_num_threads(1)
    bundle = load_model(os.environ.get("SPECGEN_MODEL"))
    pairs = split_pairs(load_pairs(), split)
    index = str(ensure_datastore(bundle, pairs))
    limit = int(os.environ["SPECGEN_LIMIT"]) if os.environ.get("SPECGEN_LIMIT") else None  # per category
    # The key `specgen bench replay --suite paraphrase --split S --limit L --traces F` writes: its F is reused here.
    key = {"model": bundle.identity(), "suite": f"paraphrase:{split}:None", "limit": limit, "max_new_tokens": 128}
    path = os.environ.get("SPECGEN_TRACES") or os.path.join(tempfile.gettempdir(), f"para_{split}.pt")
    traces = traces_for(read_traces(path), key)
    if traces is None:
        traces = record_questions(bundle, paraphrase_questions(pairs, limit), 128)
        save_traces(path, traces, key)
    if mode == "gate":
        gate(bundle, traces, index, split)
        return
    policy = DraftPolicyConfig(mode="adaptive")

    def replayed(over: list, method: str, **opts: object) -> float:
        cfg, spec = make_config(method, opts), get_method(method)
        return replay_all(lambda: spec.factory(bundle, cfg), over, 16, policy)["overall"].tau

    def tau(method: str, **opts: object) -> float:
        return replayed(traces, method, **opts)

    if mode == "layers":
        print(f"{tau('rest', index=index):.3f}  rest", flush=True)
        layers(bundle, traces, index, replayed)
        return
    rows = [("pld", {}, tau("pld")), ("rest", {}, tau("rest", index=index))]
    grid = ([dict(STRICT, min_score=a, min_similarity=b, datastore_weight=c)
             for a, b, c in itertools.product((0.0, 0.25, 0.5), (0.1, 0.3, 0.5), (0.5, 1.0, 2.0))]
            + [dict(STRICT, **g) for g in RANKING_GRID] + ALIGN_GRID if split == "tune" else [STRICT, TUNED])
    rows += [("sense", opts, tau("sense", index=index, **opts)) for opts in grid]
    for name, opts, t in sorted(rows, key=lambda r: -r[2]):
        print(f"{t:.3f}  {name} {json.dumps(opts)}")
    print("answers", len(traces), "tokens", sum(len(t.output_ids) for t in traces))


if __name__ == "__main__":
    args = sys.argv[1:] or ["tune"]
    main(args[-1], args[0] if args[0] in ("gate", "layers") else "replay")
