"""Where `sense` loses against the retrieval ceiling on the paraphrase suite: retrieval or ranking.

    .venv/bin/python docs/sense_ranking_losses.py tune   # or eval; $SPECGEN_MODEL, $SPECGEN_TRACES as below

At every position of every recorded answer (not only where a replayed step starts), with the
pending token being the recorded one there, it prints the mean number of following tokens that:
- oracle: the best single stored continuation agrees on (a datastore key's value, exactly or
  shift-aligned as `sense --align shift` aligns it, or a continuation in the live context);
- candidates: the best of the candidates `sense` returns (before the node budget);
- tree@16: the budget-16 trie built from them accepts (the loop's `build_tree`, no cost sizing);
- top-1: the first-ranked candidate agrees on.
oracle > candidates is retrieval's loss (the right continuation was not found); candidates >
tree@16 is ranking's (found, but pruned or outranked). Traces as in docs/tune_sense_paraphrase.py:
$SPECGEN_TRACES (default $TMPDIR/para_<split>.pt, recorded at the final layer); one thread.
"""
import os
import sys
import tempfile

import torch

from specgen.adapter import common_prefix
from specgen.bench.paraphrase import ensure_datastore, load_pairs, split_pairs
from specgen.bench.replay import Trace, _padded_values, oracle_accept, read_traces
from specgen.decoding.accept import walk
from specgen.decoding.tree import Tree, build_tree
from specgen.models import load_model
from specgen.proposers.base import ProposeContext
from specgen.proposers.registry import get_method, make_config

MAX_LEN, BUDGET, WINDOW = 15, 16, 3


def tree_accept(tree: Tree, future: list[int]) -> int:
    """Tokens of `future` the loop's greedy walk down `tree` accepts (the recorded answer as the target)."""
    depth = tree.depth_list
    return len(walk(tree, lambda node: future[depth[node]] if depth[node] < len(future) else -1).path) - 1


def main(split: str) -> None:
    torch.set_num_threads(1)
    bundle = load_model(os.environ.get("SPECGEN_MODEL"))
    index = str(ensure_datastore(bundle, split_pairs(load_pairs(), split)))
    path = os.environ.get("SPECGEN_TRACES") or os.path.join(tempfile.gettempdir(), f"para_{split}.pt")
    traces = [Trace(**t) for t in read_traces(path)["traces"]]
    proposer = get_method("sense").factory(bundle, make_config("sense", {"index": index}))
    values = _padded_values(proposer.index, MAX_LEN + WINDOW + 1)  # [N, W]
    total = {"oracle": 0, "candidates": 0, f"tree@{BUDGET}": 0, "top-1": 0}
    positions = empty = 0
    for tr in traces:
        seq, out, p = tr.prompt_ids + tr.output_ids, tr.output_ids, len(tr.prompt_ids)
        proposer.reset(tr.prompt_ids)
        for i in range(len(out) - 1):
            future = out[i + 1: i + 1 + MAX_LEN]
            ctx = ProposeContext(tokens=seq[: p + i + 1], prompt_len=p, budget=BUDGET,
                                 hidden=tr.hidden[p + i - 1], context_hidden=tr.hidden[: p + i])
            cands = proposer.propose(ctx)
            positions += 1
            total["oracle"] += oracle_accept(seq, p, i, proposer.index, MAX_LEN, True, values, WINDOW)
            if not len(cands):
                empty += 1
                continue
            total["candidates"] += max(common_prefix(s, future) for s in cands.sequences)
            total[f"tree@{BUDGET}"] += tree_accept(build_tree(out[i], cands, BUDGET), future)
            total["top-1"] += common_prefix(cands.sequences[0], future)
    print(f"{len(traces)} answers, {positions} positions, {empty / positions:.1%} without a draft")
    for name, v in total.items():
        print(f"{name:>12}  {v / positions:.3f} tokens per position")


if __name__ == "__main__":
    main((sys.argv[1:] or ["tune"])[0])
