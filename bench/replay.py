"""Trace replay: the mean acceptance length a lossless proposer would reach, without decoding.

A greedy lossless method's output is the target's greedy output, so drafting can be scored offline:
record each prompt's greedy continuation once with one forward over prompt + answer (which also
yields every position's hidden state), then run the step engine with a verifier that reads the
recorded tokens instead of running the model (`RecordedVerifier`). This is how
DESIGN.md section 2 compared drafters; it lets a proposer's options be tuned in seconds instead of a
benchmark run per setting. Step accounting follows the loop: every step emits the accepted draft
tokens plus the bonus token, and with `policy` the adaptive draft policy decides when to draft.
Trees are sized by the node budget, or by the loop's cost-aware sizing when given a cost profile
(replay has no clock: `TreeSizingConfig(costs=...)`, e.g. the profile `generate --json` reports).

Replay measures tau only; speed comes from `specgen bench`, which decodes for real.
"""
from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from ..datastore.build import hidden_states
from ..decoding.accept import ExactMatch
from ..decoding.calibration import AcceptanceModel
from ..decoding.engine import DecodeState, Verification, step
from ..decoding.policy import DraftPolicy, DraftPolicyConfig
from ..decoding.sizing import CostProfile, TreeSizer, TreeSizingConfig
from ..fileio import atomic_write_bytes
from ..proposers.base import Proposer
from ..rows import RowBuffer


@dataclass
class Trace:
    """One prompt's greedy continuation and the hidden states of every position."""

    question_id: str
    category: str
    prompt_ids: list[int]
    output_ids: list[int]
    hidden: torch.Tensor | None  # [P + T - 1, H] at `layer`: positions that get a KV entry while decoding
    layer: int = -1


@dataclass
class ReplayStats:
    """Steps and tokens of one replayed trace (or a sum of them)."""

    steps: int = 0
    tokens: int = 0
    drafted: int = 0
    accepted: int = 0
    accept_lengths: list[int] = field(default_factory=list)  # tokens emitted per step
    draft_sizes: list[int] = field(default_factory=list)  # draft nodes verified per step (0 = plain step)
    cost: float = 0.0  # summed relative forward cost of the steps (with a cost profile; plain step = 1)
    # Summed wall time of proposing and building each step's tree (the verifier reads the trace, so
    # this is the draft overhead a live step adds to its forward; one machine, one run).
    plan_s: float = 0.0

    @property
    def estimated_speedup(self) -> float:
        """Tokens per unit of forward cost over `ar`'s one token per plain step (prefill and overheads left out)."""
        return self.tokens / self.cost if self.cost else 0.0

    @property
    def tau(self) -> float:
        """Mean acceptance length: tokens per step after prefill, bonus token included (DESIGN.md section 1)."""
        return self.tokens / self.steps if self.steps else 0.0

    def __iadd__(self, other: "ReplayStats") -> "ReplayStats":
        self.steps += other.steps
        self.tokens += other.tokens
        self.drafted += other.drafted
        self.accepted += other.accepted
        self.accept_lengths += other.accept_lengths
        self.draft_sizes += other.draft_sizes
        self.cost += other.cost
        self.plan_s += other.plan_s
        return self


def record_trace(bundle: Any, question_id: str, category: str, prompt_ids: list[int], output_ids: list[int],
                 layer: int | None = -1) -> Trace:
    """A Trace for a recorded greedy output; hidden states at `layer` (None: none, for lexical proposers)."""
    seq = torch.tensor([prompt_ids + output_ids[:-1]], device=bundle.model.device)  # [1, P + T - 1]
    hidden = None
    if layer is not None:
        with torch.inference_mode():
            hidden = hidden_states(bundle.model, seq, None, layer)[0].float().cpu()  # [P + T - 1, H]
    return Trace(question_id, category, list(prompt_ids), list(output_ids), hidden, -1 if layer is None else layer)


class RecordedVerifier:
    """The engine's verifier for a trace: the target's token at a node is the recorded one at the
    node's position, its hidden state the recorded one; no model runs and there is no cache."""

    device = torch.device("cpu")

    def __init__(self, trace: Trace) -> None:
        self.trace = trace

    def verify(self, state: DecodeState, tree: Any) -> Verification:
        out, i = self.trace.output_ids, state.n_kv - state.prompt_len  # i: the pending token's index in `out`
        depth = tree.depth_list

        def choose(node: int) -> int:
            j = i + 1 + depth[node]
            return out[j] if j < len(out) else -1

        hidden = None
        if self.trace.hidden is not None and state.last_hidden is not None:
            # node at depth d sits at position n_kv + d (rows past the trace are never on the accepted path)
            rows = torch.tensor([min(state.n_kv + d, self.trace.hidden.shape[0] - 1) for d in depth], device="cpu")
            hidden = self.trace.hidden[rows]  # [n, H]
        return Verification(choose=choose, hidden=hidden)

    def commit(self, state: DecodeState, path: tuple[int, ...]) -> None:
        pass  # nothing to keep in step: the trace is the target's memory


def replay(proposer: Proposer, trace: Trace, budget: int, policy: DraftPolicyConfig | None = None,
           sizing: TreeSizingConfig | None = None, calibration: AcceptanceModel | None = None) -> ReplayStats:
    """Replay `proposer` on `trace` with `budget` draft nodes per step; `policy` None drafts at every step.

    The step engine runs as in the decode loop, its verifier reading the trace. The first output
    token comes from prefill (no step). `sizing` with mode "cost" needs a given profile (`costs`):
    the loop's per-step sizing is then replayed too, and `ReplayStats.cost` sums the profile's cost
    of each step's forward. `calibration`: an acceptance model shared across replays, as a server
    shares one per method across requests (`TreeSizer`); None = a fresh one per trace.
    """
    from ..config import GenerationConfig
    from ..decoding.stopping import Stopper
    from ..decoding.stats import GenerationStats

    p, out = len(trace.prompt_ids), trace.output_ids
    if proposer.hidden_layer is not None and trace.hidden is None:
        raise ValueError("this proposer needs hidden states: record the trace with a layer")
    sizing = sizing or TreeSizingConfig(mode="budget")
    if sizing.mode == "cost" and sizing.costs is None:
        raise ValueError("replay has no clock: cost sizing needs a given profile (TreeSizingConfig.costs)")
    profile = CostProfile(list(sizing.sizes), list(sizing.costs)) if sizing.costs is not None else None
    sizer = TreeSizer(profile if sizing.mode == "cost" else None, sizing,  # a budget-sized replay is costed, not sized
                      calibration=calibration)
    gen = GenerationConfig(max_new_tokens=len(out), stop_at_eos=False)
    stopper = Stopper(None, set(), gen)  # no stop strings: the tokenizer is never asked to decode
    stopper.feed(out[:1])  # the prefill's token
    wants = proposer.hidden_layer is not None
    state = DecodeState(tokens=trace.prompt_ids + out[:1], prompt_len=p, stopper=stopper,
                        stats=GenerationStats(method=proposer.name, prompt_tokens=p),
                        policy=DraftPolicy(policy or DraftPolicyConfig(mode="always"), self_gated=proposer.self_gated),
                        sizer=sizer, node_budget=budget,
                        hidden=RowBuffer(trace.hidden[:p]) if wants and proposer.wants_context_hidden else None,
                        last_hidden=trace.hidden[p - 1] if wants and trace.hidden is not None else None)
    proposer.reset(list(trace.prompt_ids))
    verifier, rule = RecordedVerifier(trace), ExactMatch()
    stats = ReplayStats()
    while not state.done:
        rec = step(state, proposer, verifier, rule)
        stats.cost += profile(rec.drafted + 1) if profile is not None else 0.0
        stats.steps += 1
        stats.tokens += rec.emitted
        stats.drafted += rec.drafted
        stats.accepted += rec.accepted
        stats.accept_lengths.append(rec.emitted)
        stats.draft_sizes.append(rec.drafted)
        stats.plan_s += rec.t_propose
    return stats


def replay_all(make: Callable[[], Proposer], traces: list[Trace], budget: int,
               policy: DraftPolicyConfig | None = None, sizing: TreeSizingConfig | None = None,
               calibration: AcceptanceModel | None = None) -> dict[str, ReplayStats]:
    """Per category and "overall": summed replay statistics of a fresh proposer per trace, in
    order (`calibration`, when given, is shared by them all: see `replay`)."""
    result: dict[str, ReplayStats] = {"overall": ReplayStats()}
    for tr in traces:
        s = replay(make(), tr, budget, policy, sizing, calibration)
        result.setdefault(tr.category, ReplayStats())
        result[tr.category] += s
        result["overall"] += s
    return result


def retrieval_ceiling(traces: list[Trace], index: Any = None, max_len: int = 15, use_context: bool = True,
                      shift_window: int | None = None) -> float:
    """Mean acceptance length of an oracle retriever: the most any lossless drafter over `index` and
    the live context can reach with one candidate per step.

    At each step it drafts, of every stored continuation of the pending token (a datastore key's
    value, `index`; a committed position's continuation, `use_context`), the one agreeing longest
    with the recorded answer, up to `max_len` tokens. A tree accepts one path, so no tree of these
    continuations does better per step; this is the ceiling to read a retriever's tau against.
    `shift_window` w: also every other key's value aligned as `sense --align shift` with that
    window aligns it (`proposers.sense.shift_start`), the ceiling of a shifting drafter.
    """
    shifted = _padded_values(index, max_len + shift_window + 1) if index is not None and shift_window else None
    counts = [_ceiling_steps(tr, index, max_len, use_context, shifted, shift_window) for tr in traces]
    steps = sum(c[1] for c in counts)
    return sum(c[0] for c in counts) / steps if steps else 0.0


def _ceiling_steps(tr: Trace, index: Any, max_len: int, use_context: bool,
                   shifted: np.ndarray | None = None, shift_window: int = 0) -> tuple[int, int]:
    """(tokens after prefill, oracle steps) of one trace (see `retrieval_ceiling`); `shifted`:
    every key's value [N, >= max_len + shift_window + 1] (`_padded_values`), None = exact only."""
    seq, out, p = tr.prompt_ids + tr.output_ids, tr.output_ids, len(tr.prompt_ids)
    i = steps = 0  # out[i] is pending: out[0] came from prefill
    while i < len(out) - 1:
        i += oracle_accept(seq, p, i, index, max_len, use_context, shifted, shift_window) + 1
        steps += 1
    return len(out) - 1, steps


def oracle_accept(seq: list[int], p: int, i: int, index: Any, max_len: int, use_context: bool,
                  shifted: np.ndarray | None = None, shift_window: int = 0) -> int:
    """Tokens after answer position i of `seq` (prompt of length `p` + answer; seq[p + i] pending)
    that the best single stored continuation agrees on, up to `max_len`: a key's value in `index`
    that followed the pending token, every key's value `shifted` aligned as `shift_start` aligns it,
    and (`use_context`) a committed position's continuation (see `retrieval_ceiling`)."""
    from ..adapter import common_prefix

    pending, future = seq[p + i], seq[p + i + 1: p + i + 1 + max_len]
    best = 0
    if index is not None:
        for cont in index.continuations(index.postings(pending))[:, 1: 1 + max_len]:  # [m, <= max_len]
            best = max(best, common_prefix(cont.tolist(), future))
    if shifted is not None:
        best = max(best, _best_shifted(shifted, pending, future, shift_window))
    if use_context:
        n = p + i  # positions with KV: seq[:n]; seq[n] is the pending token
        for j in range(n - 1):
            if seq[j + 1] == pending:
                best = max(best, common_prefix(seq[j + 2: min(j + 2 + max_len, n + 1)], future))
    return best


def _padded_values(index: Any, width: int) -> np.ndarray:
    """[N, width] every key's stored continuation, padded with -1 (nothing matches it)."""
    vals = np.asarray(index.continuations(np.arange(len(index))), dtype=np.int64)  # [N, L]
    out = np.full((vals.shape[0], width), -1, dtype=np.int64)  # [N, width]
    out[:, : min(width, vals.shape[1])] = vals[:, :width]
    return out


def _best_shifted(values: np.ndarray, pending: int, future: list[int], window: int) -> int:
    """Longest agreement with `future` of any key's value [N, W] aligned to `pending` by
    `shift_start` (vectorised over keys): from just past `pending` in values[:, 1 : 1 + window],
    else from values[:, 1]; keys whose value starts with `pending` (or ends there) excluded."""
    if not future:
        return 0
    m = len(future)
    hits = values[:, 1: 1 + window] == pending  # [N, window]
    start = np.where(hits.any(axis=1), hits.argmax(axis=1) + 2, 1)  # [N]
    start[(values[:, 0] == pending) | (values[:, 0] < 0)] = values.shape[1]  # never drafts
    cols = start[:, None] + np.arange(m)[None, :]  # [N, m]
    drafted = np.take_along_axis(values, np.minimum(cols, values.shape[1] - 1), axis=1)  # [N, m]
    drafted[cols >= values.shape[1]] = -1
    agree = np.cumprod(drafted == np.asarray(future)[None, :], axis=1)  # [N, m]
    return int(agree.sum(axis=1).max()) if agree.size else 0


def ceiling_table(traces: list[Trace], index_path: str | None, budgets: tuple[int, ...],
                  shift_window: int = 3) -> dict[str, dict[str, float]]:
    """{"ceiling@<budget>": {category and "overall": retrieval_ceiling}} over the datastore at
    `index_path` (None: the live context only), drafts capped at min(budget, 15) tokens as `sense` caps them;
    with a datastore also "ceiling-shift@<budget>", the ceiling of `sense --align shift` (window `shift_window`)."""
    from ..datastore.store import SemanticIndex

    index = SemanticIndex.load_cached(index_path) if index_path else None
    # every key's value, read once for all traces and budgets (drafts are capped at 15 tokens)
    shifted = _padded_values(index, 15 + shift_window + 1) if index is not None else None
    rows: list[tuple[str, np.ndarray | None]] = [("ceiling", None)] + ([("ceiling-shift", shifted)] if index else [])
    out: dict[str, dict[str, float]] = {}
    for budget in budgets:
        for label, values in rows:
            sums: dict[str, list[int]] = {"overall": [0, 0]}
            for tr in traces:  # each trace once; categories and overall from the same counts
                tokens, steps = _ceiling_steps(tr, index, min(budget, 15), True, values, shift_window)
                for key in (tr.category, "overall"):
                    acc = sums.setdefault(key, [0, 0])
                    acc[0] += tokens
                    acc[1] += steps
            out[f"{label}@{budget}"] = {key: t / s if s else 0.0 for key, (t, s) in sums.items()}
    return out


def record_suite(bundle: Any, suite: str, limit: int | None, max_new_tokens: int, *, layer: int | None = -1,
                 progress: Callable[[int, int], None] | None = None) -> list[Trace]:
    """Greedy traces of a suite's first `limit` questions per category (first turn, chat template).

    The greedy output is written by `pld`, which is lossless: the same tokens as `ar`, sooner.
    """
    from .selfcorpus import held_out
    from .suites import load_suite

    return record_questions(bundle, held_out(load_suite(suite, None), 0, limit), max_new_tokens, layer=layer,
                            progress=progress)


def record_questions(bundle: Any, questions: list[Any], max_new_tokens: int, *, layer: int | None = -1,
                     progress: Callable[[int, int], None] | None = None) -> list[Trace]:
    """Greedy traces of `questions` (first turn, chat template), as `record_suite` records a suite's."""
    from ..config import GenerationConfig
    from ..generate import generate
    from .runner import chat_ids, question_stop

    traces = []
    for i, q in enumerate(questions):
        ids = chat_ids(bundle.tokenizer, q, [], 0)
        res = generate(bundle, ids, method="pld", gen=GenerationConfig(max_new_tokens=max_new_tokens,
                                                                       stop=question_stop(bundle.tokenizer, q)))
        if len(res.token_ids) > 1:
            traces.append(record_trace(bundle, q.question_id, q.category, ids, res.token_ids, layer))
        if progress:
            progress(i + 1, len(questions))
    return traces


TRACES_FORMAT = 1


def save_traces(path: str | Path, traces: list[Trace], key: Mapping[str, Any]) -> None:
    """Write `traces` with the `key` they were recorded under (model identity, suite, limits), atomically."""
    buf = io.BytesIO()
    torch.save({"format": TRACES_FORMAT, "key": dict(key),
                "traces": [dataclasses.asdict(t) for t in traces]}, buf)
    atomic_write_bytes(path, buf.getvalue())


def read_traces(path: str | Path) -> dict[str, Any] | None:
    """The contents of a trace file written by `save_traces`, None when there is none; a one-line
    SpecgenError when it is not one (checked before any model loads)."""
    from ..errors import SpecgenError

    path = Path(path)
    if not path.exists():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(data, dict) or data.get("format") != TRACES_FORMAT or not isinstance(data.get("traces"), list):
            raise ValueError("unknown format")
        return data
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one line
        raise SpecgenError(f"{path}: not a specgen trace file ({type(exc).__name__}); delete it to record "
                           "the traces again") from None


def traces_for(data: dict[str, Any] | None, key: Mapping[str, Any]) -> list[Trace] | None:
    """The traces of a read trace file when recorded under `key` (model identity, suite, limits);
    None when there is no file or it was recorded under another key (record again)."""
    if data is None or data.get("key") != dict(key):
        return None
    return [Trace(**t) for t in data["traces"]]


def replay_plan(methods: tuple[str, ...], index: str | None,
                method_options: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[str, Any]]:
    """label -> (method, config) for `methods`, resolved exactly as `specgen bench` resolves them
    (method-config sections, variants, --index); only lossless token-level methods can be replayed."""
    from ..errors import SpecgenError
    from ..proposers.registry import get_method
    from .runner import BenchConfig, plan_methods

    runs, notes = plan_methods(BenchConfig(methods=methods, index=index, method_options=method_options))
    by_label = {run.label: run for run in runs}
    plan: dict[str, tuple[str, Any]] = {}
    for name in methods:
        run = by_label.get(name)
        if run is None:
            raise SpecgenError(next((note for note in notes if name in note), f"cannot replay '{name}'"))
        if not get_method(run.method).token_level or not run.lossless:
            raise SpecgenError(f"replay scores lossless token-level methods, not '{name}'")
        plan[name] = (run.method, run.config)
    return plan


def replay_methods(bundle: Any, traces: list[Trace], methods: dict[str, Any], budgets: tuple[int, ...],
                   policy: DraftPolicyConfig | None) -> dict[str, dict[str, ReplayStats]]:
    """{"<label>@<budget>": per-category replay stats} for each (label -> (method, config)) and budget."""
    from ..proposers.registry import get_method

    from .runner import MethodRun, preload_drafts

    # A separate draft model is loaded once per method, not once per trace.
    drafts = preload_drafts(bundle, [MethodRun(label, m, c, None, False, True) for label, (m, c) in methods.items()])
    out: dict[str, dict[str, ReplayStats]] = {}
    for label, (method, cfg) in methods.items():
        spec = get_method(method)
        draft = drafts.get(label)

        def make(spec: Any = spec, cfg: Any = cfg, draft: Any = draft) -> Proposer:
            return spec.factory(bundle, cfg) if draft is None else spec.factory(bundle, cfg, draft=draft)

        for budget in budgets:
            out[f"{label}@{budget}"] = replay_all(make, traces, budget, policy)
    return out
