"""`sense`: drafts from hidden-state neighbours (our reading of SENSE, DESIGN.md section 2; cf. DReSD).

Query = the target's hidden state at the last committed position (the one that predicted the
pending token), free from verification. Two sources of neighbours, each optional:

- the datastore (`--index`): top-k keys by inner product of L2-normalised (and, if the index has
  one, PCA-projected) hidden states; a key's value is the L tokens that followed it;
- the live context: the hidden states of every committed position (prompt + output), which the
  loop keeps when `wants_context_hidden`; position j's continuation is what followed it.

A neighbour is kept only when its similarity reaches the floor and the token that followed it
equals the pending token; it then drafts the tokens after that one. With `align="shift"` a
datastore neighbour whose next token differs is aligned instead of dropped (`SenseConfig.align`):
the stored answer may word the same thing with another token or a few extra ones. With a
datastore, one more query (`SenseConfig.transition`): the state after the pending token, predicted
by a linear map fitted on the datastore (datastore/transition.py); keys and context positions near
it draft what followed them. Identical drafts merge with summed (source-weighted) similarity, and
the loop's trie sums them again per node, so a node's score is the total similarity of the
evidence through it. When the best candidate's score stays under `min_score` nothing is drafted
(a plain step). The soft gate itself lives in the loop's
accept step (`SoftGateConfig`, `gate` below); `gate.enabled=False` keeps `sense` lossless.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from ..config import SoftGateConfig
from ..datastore.store import SemanticIndex
from ..datastore.transition import TransitionMap, load_transition
from ..errors import SpecgenError
from ..rows import DerivedRows
from ..validate import check_fields, in_range, input_path
from .base import Candidates, Proposer, ProposeContext
from .registry import register_method
from .rest import target_identity


# Evidence per candidate draft: (source weight, similarity) of every neighbour that drafted it.
Evidence = dict[tuple[int, ...], list[tuple[float, float]]]

# Named option sets (`--preset`), under any explicit option. The defaults are the paraphrase suite's
# choice (tune half: a small datastore of the target's own answers on the same topics; README,
# Results): they draft on weaker evidence (min score 0.25, floor 0.1, datastore weight 1.0), rank it
# (sharpness 5, depth decay 0.7, match bonus 0.2) and search with the predicted state after the
# pending token (`transition`). Replayed at node budget 16 they lift the paraphrase eval half
# 1.40 -> 1.97 (135M) and Spec-Bench over the 160k-key sb-mix datastore 2.13 -> 2.42. "strict": the
# earliest defaults (tuned for wall-clock on sb-mix before cost-aware sizing: draft only on strong
# evidence). "shift": the defaults before `transition` (token-window alignment of neighbours
# followed by another token instead). "focused" named the current ranking options before they
# became the defaults; it stays for earlier commands.
SENSE_PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "focused": {},
    "shift": {"align": "shift", "transition": False},
    "strict": {"min_score": 0.5, "min_similarity": 0.3, "datastore_weight": 0.5,
               "depth_decay": 1.0, "sharpness": 0.0, "match_bonus": 0.0, "align": "exact",
               "transition": False},
}
ALIGN_MODES = ("exact", "shift")


@dataclass(frozen=True)
class SenseConfig:
    """SENSE retrieval options; each default is our reading (DESIGN.md section 2), to be tuned by the bench."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = SENSE_PRESETS

    index: str | None = None  # datastore folder; None = the live context only
    use_datastore: bool = True  # search the index (when one is given)
    use_context: bool = True  # search the live context's hidden states
    k: int = 32  # datastore neighbours per step
    # Search only the keys followed by the pending token (exact, over its posting list) instead of a
    # global top-k filtered afterwards; falls back to the global index past `conditioned_max_rows`.
    token_conditioned: bool = True
    conditioned_max_rows: int = 16384
    context_k: int = 16  # context neighbours per step (among positions followed by the pending token)
    min_similarity: float = 0.1  # cosine floor for a neighbour
    # On a large mixed datastore context neighbours predict the answer far better than datastore
    # ones (DESIGN.md section 2: tau 2.23 against 1.22; "strict" weighs the datastore 0.5); with
    # ranking and alignment equal weights replay best on both suites (README, Results).
    datastore_weight: float = 1.0  # multiplies datastore similarities in the merged scores
    context_weight: float = 1.0  # multiplies context similarities
    # Draft nothing when the best merged candidate scores below this (a plain step). > 0 makes the
    # proposer self-gated: the loop's adaptive draft policy defers to it. Replayed on Spec-Bench
    # with the strict options, drafting steps under 0.5 accepted 0.29 tokens; with ranking and
    # alignment 0.25 drafts more that pays, and cost-aware sizing trims what does not.
    min_score: float = 0.25
    # How the evidence is ranked in the tree (the paraphrase suite's tune half, bench/paraphrase.py):
    # with summed raw similarities the best neighbour's 15-token chain takes the whole budget even
    # where the top few neighbours disagree on the very next token. `sharpness` > 0 weighs a
    # neighbour exp(sharpness * (sim - best sim)) in the tree (the gate, `min_score`, still reads
    # raw similarities); `depth_decay` < 1 ranks a node at depth d by score * depth_decay ** d.
    sharpness: float = 5.0
    depth_decay: float = 0.7
    # Alignment: a neighbour whose own preceding tokens repeat the context's last tokens before the
    # pending one (up to `match_max` of them) gains `match_bonus` similarity per matching token, a
    # tie-break among hidden states that agree on the next token but not on what came before.
    match_bonus: float = 0.2
    match_max: int = 4
    # Alignment of a datastore neighbour whose next token is not the pending one: surface variation
    # (the stored answer wrote "This function" where this one writes "The function", or "the given
    # list" where this one writes "the list"). "exact" drops such a neighbour, as the token-
    # conditioned search never sees it. "shift" drafts its continuation from just after the pending
    # token when that comes within its next `align_window` tokens (the stored text had extra
    # tokens), else from the token after its next one (a one-for-one substitution). Shifted
    # neighbours come from a global top-`align_k` search, floor `align_min_similarity`, and weigh
    # `align_weight` times an aligned datastore neighbour. Replayed on the paraphrase suite's tune
    # half (135M, budget 16): 1.812 -> 1.94 (README, Results). The transition source below finds
    # such neighbours in hidden-state space and replaces it (1.936 -> 2.056 with "exact"; "shift"
    # on top adds 0.01 for a second global search).
    align: str = "exact"
    align_k: int = 16
    align_min_similarity: float = 0.4
    align_window: int = 3
    align_weight: float = 0.5
    # The global search costs about 9 ms per step over 160k keys (a 135M step is ~50 ms here), and a
    # step with a close exact neighbour gains little from it: search only while the best exactly
    # aligned neighbour's evidence (similarity + bonus) is under `align_below` (replayed: Spec-Bench
    # on sb-mix searches at 42% of steps for the same tau, 2.364 against 2.366; > 2 = every step).
    align_below: float = 0.7
    # The pending token's own hidden state, predicted (datastore/transition.py): a linear map fitted
    # on the datastore's consecutive keys predicts the state after the pending token from the query
    # and that token; datastore keys and live-context positions near the prediction draft what
    # followed them. Replayed at budget 16 (tune halves; README, Results): paraphrase 135M
    # 1.94 -> 2.06, Qwen2.5-Coder-1.5B 2.24 -> 2.34; Spec-Bench on sb-mix 2.36 -> 2.42. Needs a
    # datastore to fit on; fitted once per datastore and cached in its folder.
    transition: bool = True
    transition_k: int = 16  # datastore keys, and context positions, near the prediction
    transition_min_similarity: float = 0.4
    transition_weight: float = 1.0  # datastore hits weigh this times `datastore_weight` (context hits: `context_weight`)
    # The datastore side is a global search (every key: ~9 ms over 160k flat keys on this CPU, a
    # 135M step is ~50 ms): only while the best exact neighbour's evidence is under this. At 0.7
    # sense plans sb-mix in 7.5 ms/step (6.8 before the source), at 1.2 in 12.6 for 0.02 more tau
    # (the 1.5B's paraphrase tune half: 0.02 more too).
    transition_below: float = 0.7
    transition_ridge: float = 1.0  # the fit's L2 penalty (normal equations over unit-norm features)
    transition_fit_rows: int = 32768  # consecutive key pairs sampled for the fit
    max_draft_len: int = 15  # tokens per candidate (datastore: at most continuation_len - 1)
    max_candidates: int = 32  # candidates handed to the trie, best first
    layer: int = -1  # hidden layer without an index (with one, the index's layer is used)
    gate: SoftGateConfig = field(default_factory=SoftGateConfig)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.index is not None:
            input_path("index", self.index, "dir")
        for name in ("k", "context_k", "max_draft_len", "max_candidates"):
            in_range(name, getattr(self, name), 1, 4096)
        in_range("conditioned_max_rows", self.conditioned_max_rows, 1, 2**31)
        in_range("min_similarity", self.min_similarity, -1, 1)
        in_range("min_score", self.min_score, 0, None)
        in_range("datastore_weight", self.datastore_weight, 0, None)
        in_range("context_weight", self.context_weight, 0, None)
        in_range("sharpness", self.sharpness, 0, 100)
        if not 0 < self.depth_decay <= 1:
            raise SpecgenError(f"depth_decay must be in (0, 1], got {self.depth_decay}")
        in_range("match_bonus", self.match_bonus, 0, None)
        in_range("match_max", self.match_max, 1, 64)
        if self.align not in ALIGN_MODES:
            raise SpecgenError(f"align must be one of {', '.join(ALIGN_MODES)}, got '{self.align}'")
        in_range("align_k", self.align_k, 1, 4096)
        in_range("align_min_similarity", self.align_min_similarity, -1, 1)
        in_range("align_window", self.align_window, 1, 64)
        in_range("align_weight", self.align_weight, 0, None)
        in_range("align_below", self.align_below, -1, None)
        in_range("transition_k", self.transition_k, 1, 4096)
        in_range("transition_min_similarity", self.transition_min_similarity, -1, 1)
        in_range("transition_weight", self.transition_weight, 0, None)
        in_range("transition_below", self.transition_below, -1, None)
        in_range("transition_ridge", self.transition_ridge, 1e-6, None)
        in_range("transition_fit_rows", self.transition_fit_rows, 1, 2**31)
        if not (self.use_datastore or self.use_context):
            raise SpecgenError("sense: turn on at least one source (datastore or context)")
        in_range("layer", self.layer, -1, 4096)


class SenseProposer(Proposer):
    """kNN over target hidden states in the datastore and the live context, merged into one candidate set."""

    name = "sense"

    def __init__(self, cfg: SenseConfig, index: SemanticIndex | None, transition: TransitionMap | None = None) -> None:
        self.cfg = cfg
        self.index = index if cfg.use_datastore else None
        # the fitted map of `index` (`make_sense` loads it); None: no transition source
        self.transition = transition if self.index is not None and cfg.transition else None
        self.hidden_layer = index.layer if index is not None else cfg.layer
        self.wants_context_hidden = cfg.use_context
        self.self_gated = cfg.min_score > 0
        if self.index is None and not cfg.use_context:
            raise SpecgenError("sense: the datastore is off or missing and the context search is off: nothing to draft from")
        # The live context's states as datastore keys, for the transition source: prepared once per
        # position, not the whole context at every step (a cost that grows with the context: on
        # the 1.5B's width 2 ms per step at 1k positions, 18 ms at 4k on a CPU thread; more with a projection).
        self._context_keys = DerivedRows(self._prepare_rows)

    def reset(self, prompt_ids: list[int]) -> None:
        self._context_keys.reset()

    def _prepare_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Hidden states [m, H] -> [m, d] in the index's key space (projected when it has a projection, normalised)."""
        assert self.index is not None
        if self.index.projection is None:
            return torch.nn.functional.normalize(rows.float(), dim=-1)
        return torch.from_numpy(self.index.prepare(rows))

    def _from_datastore(self, query: np.ndarray, tokens: list[int], merged: Evidence, length: int) -> float:
        """Exact and (`align="shift"`) shifted neighbours of the prepared query [d]; returns the best
        exact evidence (`_exact`)."""
        assert self.index is not None
        best = self._exact(query, tokens, merged, length)
        if self.cfg.align == "shift" and best < self.cfg.align_below:
            self._shifted(query, tokens[-1], merged, length)
        return best

    def _exact(self, query: np.ndarray, tokens: list[int], merged: Evidence, length: int) -> float:
        """Datastore neighbours of the prepared query [d] followed by the pending token: they draft
        what came after it. Returns the best evidence (similarity + alignment bonus) among those
        that drafted, -inf if none."""
        assert self.index is not None
        pending = tokens[-1]
        found = self.index.search_followed_by_prepared(query, pending, self.cfg.k, self.cfg.conditioned_max_rows) \
            if self.cfg.token_conditioned else None
        if found is None:
            scores2, ids2 = self.index.search_prepared(query[None, :], k=self.cfg.k)  # [1, k], [1, k]
            found = (scores2[0], ids2[0])
        scores, ids = found[0].astype(np.float64), found[1]  # [k'], [k']
        keep = ids >= 0
        scores, ids = scores[keep], ids[keep]
        best = -math.inf
        if ids.size == 0:
            return best
        if self.cfg.match_bonus > 0:
            offsets = self.index.doc_offsets  # [D + 1]
            starts = offsets[np.searchsorted(offsets, ids, side="right") - 1]  # [k'] each key's document start
            scores = scores + self.cfg.match_bonus * _aligned(np.asarray(self.index.tokens), ids, starts, tokens[:-1],
                                                               self.cfg.match_max)
        conts = self.index.continuations(ids)  # [k', L]
        for score, cont in zip(scores.tolist(), conts):
            if score < self.cfg.min_similarity or int(cont[0]) != pending:
                continue
            if _add_draft(merged, cont[1: 1 + length], self.cfg.datastore_weight, score):
                best = max(best, score)
        return best

    def _shifted(self, query: np.ndarray, pending: int, merged: Evidence, length: int) -> None:
        """Datastore neighbours of the prepared query [d] followed by another token than `pending`,
        aligned to it (`SenseConfig.align`)."""
        assert self.index is not None
        scores2, ids2 = self.index.search_prepared(query[None, :], k=self.cfg.align_k)  # [1, k], [1, k]
        keep = (ids2[0] >= 0) & (scores2[0] >= self.cfg.align_min_similarity)  # [k]
        scores, ids = scores2[0][keep].astype(np.float64), ids2[0][keep]  # [k'], [k']
        weight = self.cfg.datastore_weight * self.cfg.align_weight
        for score, cont in zip(scores.tolist(), self.index.continuations(ids)):  # cont: [L]
            start = shift_start(cont, pending, self.cfg.align_window)
            if start is None:
                continue
            _add_draft(merged, cont[start: start + length], weight, score)

    def _from_context(self, query: torch.Tensor, hidden: torch.Tensor, tokens: list[int],
                      merged: Evidence, length: int) -> None:
        n = hidden.shape[0]  # positions with KV: tokens[:n]; tokens[n] is pending
        toks = np.asarray(tokens, dtype=np.int64)  # [n + 1]
        # positions j (< n - 1: the query's own position is excluded) followed by the pending token
        cand = np.flatnonzero(toks[1:n] == toks[n])  # [c]
        if cand.size == 0:
            return
        rows = hidden[torch.from_numpy(cand)].float()  # [c, H]
        sims = torch.nn.functional.normalize(rows, dim=-1) @ torch.nn.functional.normalize(query.float(), dim=0)  # [c]
        if self.cfg.match_bonus > 0:
            sims = sims + self.cfg.match_bonus * torch.from_numpy(
                _aligned(toks, cand, np.zeros_like(cand), tokens[:n], self.cfg.match_max)).float()
        top = torch.topk(sims, min(self.cfg.context_k, int(sims.shape[0])))
        for sim, i in zip(top.values.tolist(), top.indices.tolist()):
            if sim < self.cfg.min_similarity:
                break
            j = int(cand[i])
            _add_draft(merged, toks[j + 2: j + 2 + length], self.cfg.context_weight, sim)

    def _from_transition(self, query: np.ndarray, ctx: ProposeContext, merged: Evidence, length: int,
                         search_index: bool) -> None:
        """Datastore keys (when `search_index`) and context positions near the predicted state after
        the pending token (from the prepared query [d]) draft what followed them (`SenseConfig.transition`)."""
        assert self.index is not None and self.transition is not None
        cfg = self.cfg
        pred = self.transition.predict(query, ctx.tokens[-1])  # [d]
        if search_index:
            scores, ids = self.index.search_prepared(pred[None, :], k=cfg.transition_k)  # [1, k], [1, k]
            keep = (ids[0] >= 0) & (scores[0] >= cfg.transition_min_similarity)  # [k]
            for score, cont in zip(scores[0][keep].tolist(), self.index.continuations(ids[0][keep])):  # cont: [L]
                _add_draft(merged, cont[:length], cfg.datastore_weight * cfg.transition_weight, score)
        hidden = ctx.context_hidden  # [n, H]: tokens[:n] have KV, tokens[n] is pending
        if not cfg.use_context or hidden is None or hidden.shape[0] < 3:
            return
        n = hidden.shape[0]
        # Position j's state predicted tokens[j + 1]: near the state after the pending token, what
        # followed it drafts the token after that one. The query's own position n - 1 is left out.
        rows = self._context_keys(hidden[: n - 1])  # [n - 1, d]
        sims = rows @ torch.from_numpy(pred).to(rows.device)  # [n - 1]
        top = torch.topk(sims, min(cfg.transition_k, n - 1))
        toks = np.asarray(ctx.tokens, dtype=np.int64)  # [n + 1]
        for sim, j in zip(top.values.tolist(), top.indices.tolist()):
            if sim < cfg.transition_min_similarity:
                break
            _add_draft(merged, toks[j + 1: j + 1 + length], cfg.context_weight, sim)

    def propose(self, ctx: ProposeContext) -> Candidates:
        length = min(self.cfg.max_draft_len, ctx.budget)
        if length <= 0 or ctx.hidden is None:
            return Candidates()
        query = ctx.hidden.detach().float().reshape(-1)  # [H]
        # Projected, normalised and on the host once per step: every datastore search and the
        # transition map read this one copy.
        prepared = self.index.prepare(query)[0] if self.index is not None else None  # [d]
        merged: Evidence = defaultdict(list)
        best = -math.inf
        if prepared is not None:
            best = self._from_datastore(prepared, ctx.tokens, merged, length)
        if self.cfg.use_context and ctx.context_hidden is not None and ctx.context_hidden.shape[0] > 1:
            self._from_context(query, ctx.context_hidden, ctx.tokens, merged, length)
        if self.transition is not None and prepared is not None:
            self._from_transition(prepared, ctx, merged, length, search_index=best < self.cfg.transition_below)
        raw = {seq: sum(w * s for w, s in ev) for seq, ev in merged.items()}  # what the gate reads
        if not raw or max(raw.values()) < self.cfg.min_score:
            return Candidates()
        scored = raw
        if self.cfg.sharpness:
            best = max(s for ev in merged.values() for _, s in ev)
            scored = {seq: sum(w * math.exp(self.cfg.sharpness * (s - best)) for w, s in ev) for seq, ev in merged.items()}
        ranked = sorted(scored.items(), key=lambda kv: -kv[1])[: self.cfg.max_candidates]
        return Candidates([list(seq) for seq, _ in ranked], [score for _, score in ranked], depth_decay=self.cfg.depth_decay)


def _add_draft(merged: Evidence, draft: np.ndarray, weight: float, score: float) -> bool:
    """Record a continuation `draft` [<= length] (a stored one is cut where its document ends, -1)
    as evidence (weight, score); False when nothing is left of it."""
    end = np.flatnonzero(draft < 0)
    if end.size:
        draft = draft[: int(end[0])]
    if not draft.size:
        return False
    merged[tuple(int(t) for t in draft)].append((weight, score))
    return True


def shift_start(cont: np.ndarray, pending: int, window: int) -> int | None:
    """Where a stored continuation `cont` [L] (cont[0] followed the key) is drafted from after the
    pending token under `align="shift"`: None when cont[0] is the pending token itself (the exact
    search covers it) or the key ends its document; just past the pending token when it comes in
    cont[1 : 1 + window]; else 1 (cont[0] stands for the pending token)."""
    first = int(cont[0])
    if first == pending or first < 0:
        return None
    hit = np.flatnonzero(cont[1: 1 + window] == pending)
    return int(hit[0]) + 2 if hit.size else 1


def _aligned(stream: np.ndarray, ids: np.ndarray, starts: np.ndarray, context: list[int], most: int) -> np.ndarray:
    """[m] how many of `context`'s last tokens (at most `most`) equal the tokens at and before each
    position `ids` [m] of `stream`, not crossing its document start `starts` [m]."""
    matched = np.zeros(ids.shape[0])  # [m]
    alive = np.ones(ids.shape[0], dtype=bool)  # [m]
    for back in range(min(most, len(context))):
        pos = ids - back  # [m]
        alive &= (pos >= starts) & (stream[np.maximum(pos, 0)] == context[-1 - back])
        matched += alive
    return matched


def sense_rule(target: Any, cfg: SenseConfig) -> Any:
    """Exact match with the gate off (lossless); SENSE's soft gate on the target's input embeddings when on."""
    from ..decoding.accept import ExactMatch, SoftGate

    if not cfg.gate.enabled:
        return ExactMatch()
    return SoftGate(cfg.gate, target.model.get_input_embeddings().weight)  # [V, H]


@register_method("sense", SenseConfig, lossless=True, rule=sense_rule,
                 summary="SENSE: hidden-state kNN in datastore and live context (lossless unless --gate on)")
def make_sense(target: Any, cfg: SenseConfig, draft: Any = None) -> Proposer:
    index = None
    if cfg.index and cfg.use_datastore:
        index = SemanticIndex.load_cached(cfg.index, expected_identity=target_identity(target))
        hidden = getattr(getattr(getattr(target, "model", None), "config", None), "hidden_size", None)
        if hidden is not None and int(hidden) != index.manifest.hidden_size:
            raise SpecgenError(f"index {cfg.index} holds hidden size {index.manifest.hidden_size}, the model has {hidden}")
    elif cfg.use_datastore and not cfg.use_context:
        raise SpecgenError("method 'sense' without the context search needs --index: build one with `specgen build-index CORPUS`")
    transition = None
    if index is not None and cfg.transition:
        embeddings = target.model.get_input_embeddings().weight  # [V, H]
        transition = load_transition(index, embeddings, cfg.transition_ridge, cfg.transition_fit_rows)
    return SenseProposer(cfg, index, transition)
