"""How many draft nodes to verify: the size that maximises expected tokens per unit of target time.

Verification is not free, and what it costs depends on the machine. On a GPU a forward over 16
tokens costs about what one token does (memory-bound); on the 2-core CPU of this project's runs a
forward over 2 or 3 tokens costs 1.03-1.12 plain steps but 16 tokens cost 2.1-2.3 (compute-bound
past ~3 tokens), so a tree that drafts 16 nodes needs tau > 2.2 just to break even. A fixed node
budget is wrong on one of the two. Sizing per step (in the spirit of Sequoia's hardware-aware trees
and EAGLE-2's dynamic trees, with measured rather than assumed costs):

- `CostProfile`: c(n), the time of a verification forward over n tokens relative to one token,
  measured once per model, device and thread count on the live KV cache (chains of each size in
  `sizes`, best of `reps` interleaved rounds), interpolated in between; a size that runs slower
  than a bigger one is padded to it (CPU BLAS: 4 rows cost less than 2 or 3);
- `AcceptanceModel` (calibration.py): P(node accepted | node score), calibrated online per
  generation over score bins with a Beta prior, so any proposer's scores (summed similarity,
  frequency, 1.0 per candidate) become acceptance probabilities;
- `choose_size`: with the nodes ranked by score (the kept set stays closed under ancestors), pick
  n maximising (1 + sum of the n best probabilities) / c(n + 1).

`mode="budget"` keeps the classic behaviour: every node up to the budget. Sizing never changes
what is accepted among the verified nodes, so lossless methods stay lossless.
"""
from __future__ import annotations

import bisect
import time
import weakref
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import torch

from ..errors import SpecgenError
from ..validate import check_fields, choice
from .calibration import AcceptanceModel
from .explore import ExplorationClock

if TYPE_CHECKING:
    from .tree import Tree

SIZING_MODES = ("cost", "budget")
PRIOR_DEPTHS = ("flat", "geometric")
PAD_GAIN = 0.05  # a bigger forward must run this much faster than a size for that size to pad to it


@dataclass(frozen=True)
class TreeSizingConfig:
    """Options of per-step tree sizing; `mode="budget"` verifies every node up to the budget."""

    mode: str = "cost"
    sizes: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12, 17)  # forward sizes (root included) timed; 17 = budget 16
    reps: int = 2  # timings per size (after one warm-up run); the fastest counts
    # ... and more, until this many seconds were timed per size (at most 65 runs): a sub-millisecond
    # forward's best of 2 is often a scheduler hiccup.
    min_time_s: float = 0.01
    # Pad a forward to a bigger timed size that ran faster (`CostProfile.from_timings`); False runs
    # every forward at its own size, costed as timed.
    pad_forwards: bool = True
    # Relative costs per size, given instead of measured (reproducible sizing, or a profile taken
    # on another run); None = time this machine.
    costs: tuple[float, ...] | None = None
    prior_mean: float = 0.3  # acceptance probability of a node before any evidence
    # "flat": prior_mean at every depth; "geometric": prior_mean ** depth, as if each node were accepted
    # with prior_mean given its parent (the draft-depth limit's prior). A flat prior makes a chain of 7
    # unseen nodes look like 3.1 tokens for 1.8 plain steps on the 1.5B (fp32, this CPU), which then
    # drafted 203 tokens to accept 19 (0.92x ar; geometric: none, 1.04x). But where c(2) > 1.3 (the
    # embedded model on this CPU) a geometric prior never drafts before an exploration, so a short
    # request on repetitive code gets no prompt-lookup draft at all: flat stays the default.
    prior_depth: str = "flat"
    prior_weight: float = 2.0  # pseudo-counts behind the prior, per score bin
    # After at least this many drafting steps in a row sized to nothing, verify `explore_nodes` anyway:
    # an acceptance calibration (or a cost profile timed on a busy machine) that never lets a node be
    # verified would otherwise never be corrected. 0 = never.
    explore_every: int = 8
    explore_nodes: int = 3
    # What explorations may cost, as a share of the starved steps' time: an exploring forward costing
    # c(1 + explore_nodes) = 3.1 plain steps (the fp32 1.5B on this CPU) waits (3.1 - 1) / 0.02 = 105
    # starved steps, one on a GPU (c ~ 1.01) waits `explore_every`. Each exploration that accepts
    # nothing doubles the wait (up to `explore_backoff_max` times), one that accepts resets it, and
    # one that paid for its forward (1 + accepted >= c(fed)) brings the next after `explore_every`.
    explore_share: float = 0.02
    explore_backoff_max: int = 16

    def __post_init__(self) -> None:
        check_fields(self)
        choice("tree_sizing", self.mode, SIZING_MODES)
        choice("prior_depth", self.prior_depth, PRIOR_DEPTHS)
        if not self.sizes or self.sizes[0] != 1 or list(self.sizes) != sorted(set(self.sizes)):
            raise SpecgenError("tree sizing: sizes must be increasing and start at 1")
        if self.costs is not None and (len(self.costs) != len(self.sizes) or min(self.costs) <= 0):
            raise SpecgenError("tree sizing: costs must give one positive number per size")
        if self.min_time_s < 0:
            raise SpecgenError("tree sizing: min-time-s must be >= 0")
        if self.reps < 1 or self.prior_weight <= 0 or not 0.0 < self.prior_mean < 1.0:
            raise SpecgenError("tree sizing: reps >= 1, prior-weight > 0 and prior-mean in (0, 1) are required")
        if not 0.0 < self.explore_share <= 1.0 or self.explore_backoff_max < 1 or self.explore_every < 0:
            raise SpecgenError("tree sizing: explore-share in (0, 1], explore-backoff-max >= 1 and explore-every >= 0 "
                               "are required")


def sizing_config(mode: str = "cost", options: Mapping[str, Any] | None = None) -> TreeSizingConfig:
    """A `TreeSizingConfig` of `mode` with `options` (field name -> value; lists become tuples)."""
    opts = {k: tuple(v) if isinstance(v, list) else v for k, v in (options or {}).items()}
    known = {f.name for f in fields(TreeSizingConfig)} - {"mode"}
    unknown = sorted(set(opts) - known)
    if unknown:
        raise SpecgenError(f"unknown tree sizing option {unknown[0]!r} (known: {', '.join(sorted(known))})")
    return TreeSizingConfig(mode=mode, **opts)


class CostProfile:
    """Relative verification cost c(n) of a forward over n tokens (c(1) = 1), piecewise linear.

    `pads[i]`: the size a forward of `sizes[i]` tokens is padded to, because that bigger forward was
    timed faster (`from_timings`); the identity when not given.
    """

    def __init__(self, sizes: list[int], seconds: list[float], pads: list[int] | None = None) -> None:
        assert len(sizes) == len(seconds) and sizes[0] == 1, "one timing per size, starting at size 1"
        self.sizes = list(sizes)
        self.seconds = list(seconds)
        self.pads = list(pads) if pads is not None else list(sizes)
        assert len(self.pads) == len(self.sizes) and all(p >= n for p, n in zip(self.pads, self.sizes)), \
            "a size pads to itself or a bigger one"
        base = max(seconds[0], 1e-9)
        self.relative = [s / base for s in seconds]

    @classmethod
    def from_timings(cls, sizes: list[int], raw: list[float], pad_gain: float | None = PAD_GAIN) -> "CostProfile":
        """The profile of raw best timings per size. A smaller forward never has to cost more than a
        bigger one, since it can be padded to it: a size whose bigger neighbour ran more than
        `pad_gain` faster is padded to the fastest size above it (CPU BLAS runs 2-3 row matmuls as
        one matrix-vector product per row, each reading every weight again, and 4 rows as one
        matrix product: on this project's CPU 4 tokens cost less than 2 or 3). Timing noise only
        ever slows a forward down, so each size also gets the lowest time of the sizes above it.
        `pad_gain` None: no padding, the raw timings as they are."""
        pads, seconds = list(sizes), list(raw)
        if pad_gain is None:
            return cls(list(sizes), seconds)
        best = len(sizes) - 1
        for i in range(len(sizes) - 1, -1, -1):
            if raw[i] <= raw[best]:
                best = i
            if raw[best] < raw[i] * (1.0 - pad_gain):
                pads[i] = sizes[best]
            seconds[i] = raw[best]
        return cls(list(sizes), seconds, pads)

    def padded(self, n: int) -> int:
        """The forward size that `n` fed tokens run as: a size between timed ones pads as the next
        timed size does (when that one pads at all)."""
        i = bisect.bisect_left(self.sizes, n)
        if i == len(self.sizes) or (self.sizes[i] != n and self.pads[i] == self.sizes[i]):
            return n
        return self.pads[i]

    def __call__(self, n: int) -> float:
        """c(n), interpolated between timed sizes, extrapolated linearly past the largest."""
        xs, ys = self.sizes, self.relative
        if n <= xs[0]:
            return ys[0]
        i = bisect.bisect_left(xs, n)
        if i < len(xs) and xs[i] == n:
            return ys[i]
        lo, hi = (i - 1, i) if i < len(xs) else (len(xs) - 2, len(xs) - 1)
        if lo < 0:
            return ys[0]
        slope = (ys[hi] - ys[lo]) / max(1, xs[hi] - xs[lo])
        return max(ys[0], ys[lo] + slope * (n - xs[lo]))

    def refine(self, n: int, seconds: float) -> bool:
        """Lower the timing of size `n` (a timed size only) to `seconds` when faster; True when it changed."""
        if n not in self.sizes or seconds <= 0:
            return False
        i = self.sizes.index(n)
        if seconds >= self.seconds[i] * 0.98:  # within timing noise: keep
            return False
        self.seconds[i] = seconds
        for j in range(i + 1, len(self.seconds)):  # still monotone (a bigger forward is not cheaper)
            self.seconds[j] = max(self.seconds[j], self.seconds[j - 1])
        for j in range(i - 1, -1, -1):
            self.seconds[j] = min(self.seconds[j], self.seconds[j + 1])
        base = max(self.seconds[0], 1e-9)
        self.relative = [s / base for s in self.seconds]
        return True

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sizes": self.sizes, "relative": [round(r, 3) for r in self.relative]}
        if self.pads != self.sizes:
            out["pads"] = self.pads
        return out


# Per model object (weakly held: a freed model's profile goes with it, and a new model that reuses
# its id() is timed afresh), then per device, thread count and sizes.
_PROFILES: "weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], CostProfile]]" = weakref.WeakKeyDictionary()


def profile_memory_key(model: Any, cfg: TreeSizingConfig) -> tuple[Any, ...]:
    """A profile's key in `_PROFILES[model]`: what its timings depend on besides the model."""
    return (str(model.device), torch.get_num_threads(), cfg.sizes, cfg.pad_forwards)


def measure_cost_profile(model: Any, cache: Any, n_kv: int, cfg: TreeSizingConfig) -> CostProfile:
    """Time verification forwards of each size in `cfg.sizes` on top of `cache` (its first `n_kv`
    entries are kept; the timed entries are cropped), once per model, device and thread count;
    `cfg.costs`, when given, is used as it is."""
    from .. import adapter

    if cfg.costs is not None:
        return CostProfile(list(cfg.sizes), list(cfg.costs))
    key = profile_memory_key(model, cfg)
    known = _PROFILES.setdefault(model, {})
    if key in known:
        return known[key]
    cuda = model.device.type == "cuda"
    vocab = int(model.config.vocab_size)
    masks = [adapter.causal_mask(n, model.device) for n in cfg.sizes]  # [n, n] chains
    seconds = [float("inf")] * len(cfg.sizes)
    timed = [0.0] * len(cfg.sizes)
    # Rounds over every size, so that a slow spell of the machine inflates one round, not one size;
    # the first round warms up.
    for r in range(66):
        if r > cfg.reps and min(timed) >= cfg.min_time_s:
            break
        for i, (n, mask) in enumerate(zip(cfg.sizes, masks)):
            tokens = torch.randint(0, vocab, (n,), device=model.device)  # [n]
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            adapter.tree_forward(model, tokens, torch.arange(n_kv, n_kv + n, device=model.device), cache, mask)
            if cuda:
                torch.cuda.synchronize()
            if r:
                took = time.perf_counter() - t0
                seconds[i], timed[i] = min(seconds[i], took), timed[i] + took
            adapter.crop_cache(cache, n_kv)
    profile = CostProfile.from_timings(list(cfg.sizes), seconds, PAD_GAIN if cfg.pad_forwards else None)
    known[key] = profile
    return profile


def choose_size(probs: list[float], cost: CostProfile, budget: int) -> int:
    """Draft nodes to verify (0..budget): argmax over n of (1 + sum of the n best `probs`) / c(n + 1).

    `probs` are the nodes' acceptance probabilities in score order (best first).
    """
    best_n, best_rate, expected = 0, 1.0 / cost(1), 1.0
    for n, p in enumerate(probs[:budget], start=1):
        expected += p
        rate = expected / cost(n + 1)
        if rate > best_rate:
            best_n, best_rate = n, rate
    return best_n


class TreeSizer:
    """One generation's sizing state, shared by the decode loop and trace replay.

    With a cost profile, `size_fn` is the `build_tree` callback that keeps the best-paying number of
    nodes and `observe` folds each verified tree into the acceptance calibration; without one
    (budget sizing) `size_fn` is None and `observe` does nothing.
    """

    def __init__(self, profile: CostProfile | None, cfg: TreeSizingConfig, *, timed: bool = False,
                 calibration: AcceptanceModel | None = None) -> None:
        self.profile = profile
        self.cfg = cfg
        # `calibration`: a model shared with other generations (a server's, per method): this one's
        # prior comes from it and its evidence goes to it (`AcceptanceModel.child`); None = a fresh
        # model from the configured prior, for this generation alone.
        self.calibration = calibration.child(cfg.prior_weight) if calibration is not None \
            else AcceptanceModel.for_sizing(cfg)
        self.clock = ExplorationClock(cfg.explore_every, cfg.explore_share, cfg.explore_backoff_max)  # keys "nodes" (`_size`) and "depth" (`depth_limit`)
        # `timed`: the profile was measured on this machine, so each verification forward's time refines it
        self.timed = timed and profile is not None
        self.refined = False
        # Draft-model cost (`Proposer.draft_cost_per_depth`): seconds per draft depth of recent steps,
        # and per depth d, verified steps that drafted to d (`offered`) and accepted to d (`reached`).
        self.draft_seconds: list[float] = []
        self.offered: list[float] = []
        self.reached: list[float] = []

    @property
    def explore_interval(self) -> int:
        """Starved steps before the next exploration (`ExplorationClock.wait`): an exploring forward's
        extra cost, c(1 + k) / c(1) - 1, spread over the wait, is at most `explore_share` of the
        starved steps' time on any model."""
        return self.clock.wait(self._explore_extra())

    def _explore_extra(self) -> float:
        if self.profile is None:
            return 0.0
        return self.profile(1 + self.cfg.explore_nodes) / self.profile(1) - 1.0

    @property
    def size_fn(self) -> Callable[[list[float], list[int]], int] | None:
        return self._size if self.profile is not None else None

    def _size(self, scores: list[float], depths: list[int]) -> int:
        """How many of the ranked nodes to verify: the count that pays best for its forward."""
        assert self.profile is not None
        n = choose_size([self.calibration.prob(s, d) for s, d in zip(scores, depths)], self.profile, len(scores))
        if n == 0 and scores and self.clock.starve("nodes", self._explore_extra()):
            return min(len(scores), self.cfg.explore_nodes)
        if n:
            self.clock.verified("nodes")
        return n

    def depth_limit(self, budget: int, nodes_per_depth: int) -> int:
        """Draft depth (0..budget) that pays best when every depth costs a draft forward.

        Maximises (1 + sum over d <= k of P(accepted >= d)) / (c(k * nodes_per_depth + 1) + k * r),
        r = measured draft seconds per depth over the profile's one-token verification seconds. Only
        with a profile timed on this machine (a given profile has no seconds to compare with).
        """
        if not self.timed or self.profile is None or not self.draft_seconds or budget <= 0:
            return budget
        r = sorted(self.draft_seconds)[len(self.draft_seconds) // 2] / max(self.profile.seconds[0], 1e-9)
        w, prior = self.cfg.prior_weight, self.cfg.prior_mean
        best_k, best_rate, expected = 0, 1.0 / self.profile(1), 1.0
        for k in range(1, budget // max(1, nodes_per_depth) + 1):
            seen = (self.reached[k - 1], self.offered[k - 1]) if k <= len(self.offered) else (0.0, 0.0)
            expected += (seen[0] + w * prior ** k) / (seen[1] + w)
            rate = expected / (self.profile(k * nodes_per_depth + 1) + k * r)
            if rate > best_rate:
                best_k, best_rate = k, rate
        if best_k == 0 and self.clock.starve("depth", self._explore_extra()):  # as in `_size`
            return min(budget, self.cfg.explore_nodes)
        if best_k:
            self.clock.verified("depth")
        return best_k

    def fed(self, n: int) -> int:
        """Tokens a verification forward of an n-node tree feeds (the profile's padding, else n)."""
        return self.profile.padded(n) if self.profile is not None else n

    def observe_draft(self, depth: int, seconds: float) -> None:
        """A draft of `depth` took `seconds` (the proposer's whole propose call); the last 16 count."""
        if depth > 0:
            self.draft_seconds = (self.draft_seconds + [seconds / depth])[-16:]

    def observe_time(self, fed: int, seconds: float) -> None:
        """A verification forward of `fed` tokens took `seconds`: contention only ever slows a forward
        down, so a faster one than the profile's lowers that size's cost (`CostProfile.refine`)."""
        if self.timed and self.profile is not None and self.profile.refine(fed, seconds):
            self.refined = True

    def observe(self, tree: "Tree", path: Iterable[int]) -> None:
        """Fold in a verified tree and the node indices of its accepted path (root included)."""
        if self.profile is None or tree.size <= 1:
            self.clock.exploring = False
            return
        deepest, got = int(tree.max_depth), len(tuple(path)) - 1
        self.clock.outcome(got, paid=1 + got >= self.profile(tree.size) / self.profile(1))
        on_path = set(path)
        while len(self.offered) < deepest:
            self.offered.append(0.0)
            self.reached.append(0.0)
        for d in range(deepest):
            self.offered[d] += 1.0
            self.reached[d] += 1.0 if got > d else 0.0
        self.calibration.update(list(tree.scores[1:]), tree.depth[1:].tolist(), [i in on_path for i in range(1, tree.size)])
