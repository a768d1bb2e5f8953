"""Frozen dataclass configs for generation and for every method.

Each "our reading" choice of DESIGN.md is a named field here with its documented default, so it can
be changed when the papers' code appears.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .decoding.policy import DraftPolicyConfig
from .decoding.sizing import TreeSizingConfig
from .errors import SpecgenError
from .validate import SEED_MAX, check_fields, choice, in_range

# Below this a temperature only overflows the logits (use 0 for greedy); above it sampling is uniform noise.
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-3, 100.0
MAX_NEW_TOKENS = 1_000_000
MAX_NODE_BUDGET = 256  # draft nodes verified in one forward
PLD_SCORES = ("match", "flat")  # PLDConfig.score_by


@dataclass(frozen=True)
class SamplingConfig:
    """Token sampling. temperature == 0 means greedy (argmax)."""

    temperature: float = 0.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    seed: int | None = None

    def __post_init__(self) -> None:
        check_fields(self)
        if self.temperature != 0:
            in_range("temperature", self.temperature, MIN_TEMPERATURE, MAX_TEMPERATURE)
        in_range("top_k", self.top_k, 0, 2**31)
        in_range("top_p", self.top_p, 0, 1, lo_open=True)
        if self.seed is not None:
            in_range("seed", self.seed, 0, SEED_MAX)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class GenerationConfig:
    """What every method shares: length, stopping, sampling and the verification budget."""

    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    # Upper bound on tree nodes verified per step, the root (pending token) excluded.
    node_budget: int = 16
    stop_at_eos: bool = True
    # When to skip drafting (decoding/policy.py); mode="always" drafts at every step.
    draft_policy: DraftPolicyConfig = field(default_factory=DraftPolicyConfig)
    # How many of the budget's nodes to verify per step (decoding/sizing.py); mode="budget" = all.
    tree_sizing: TreeSizingConfig = field(default_factory=TreeSizingConfig)

    def __post_init__(self) -> None:
        check_fields(self)
        in_range("max_new_tokens", self.max_new_tokens, 1, MAX_NEW_TOKENS)
        in_range("node_budget", self.node_budget, 0, MAX_NODE_BUDGET)


@dataclass(frozen=True)
class PLDConfig:
    """Prompt lookup decoding (Saxena 2023): match the last n-gram in prompt + output so far."""

    max_ngram: int = 3
    min_ngram: int = 1
    num_draft: int = 10
    # A draft's score, which tree sizing calibrates acceptance by (proposers/pld.py): "match" = the
    # length of the match behind it, counted up to `score_cap` tokens; "flat" = 1.0 for every draft
    # (one calibration for a one-token and a twelve-token match alike).
    score_by: str = "match"
    score_cap: int = 16

    def __post_init__(self) -> None:
        check_fields(self)
        choice("score_by", self.score_by, PLD_SCORES)
        in_range("score_cap", self.score_cap, 1, 1024)
        in_range("max_ngram", self.max_ngram, 1, 64)
        in_range("min_ngram", self.min_ngram, 1, 64)
        in_range("num_draft", self.num_draft, 1, MAX_NODE_BUDGET)
        if not 1 <= self.min_ngram <= self.max_ngram:
            raise SpecgenError(f"need 1 <= min-ngram <= max-ngram, got {self.min_ngram}, {self.max_ngram}")


@dataclass(frozen=True)
class DraftModelConfig:
    """Draft-model speculation: another HF model with the same tokenizer, or the target's first layers."""

    draft_model: str | None = None
    draft_layers: int | None = None
    num_draft: int = 5  # draft depth (tokens per chain)
    tree_width: int = 1  # 1: a greedy chain; k > 1: a dynamic tree keeping the k best nodes per depth

    def __post_init__(self) -> None:
        check_fields(self)
        if self.draft_layers is not None:
            in_range("draft_layers", self.draft_layers, 1, 4096)
        in_range("num_draft", self.num_draft, 1, MAX_NODE_BUDGET)
        in_range("tree_width", self.tree_width, 1, 64)
        if self.draft_model is not None and self.draft_layers is not None:
            raise SpecgenError("--draft-model and --draft-layers are mutually exclusive")

    def draft_for(self, target_name: str) -> str | None:
        """The separate draft model to load for `target_name` (None: the early-exit self-draft)."""
        return self.draft_model


GATE_SIGNALS = ("embedding", "hidden")


@dataclass(frozen=True)
class SoftGateConfig:
    """SENSE soft-gated evaluation (our reading, DESIGN.md section 2).

    At a node where the target's token is `a` (argmax or sample) and a draft child is `d != a`,
    accept `d` when `p(d) >= alpha * p(a)` and the two tokens are equivalent by `signal`:
    - "embedding": `cos(E[d], E[a]) >= tau_e`, E the target's input embeddings (context-free, free);
    - "hidden": `cos(h(d), h(a)) >= tau_h`, h the target's hidden state after reading the token in
      this context (the paper's "semantic alignment", our reading); h(d) comes with the verification,
      h(a) costs one extra forward of the path to the node, only where a child passes the p test.
    `enabled=False` is lossless.
    """

    enabled: bool = False
    alpha: float = 0.3
    tau_e: float = 0.5
    signal: str = "embedding"
    tau_h: float = 0.9

    def __post_init__(self) -> None:
        check_fields(self)
        in_range("gate_alpha", self.alpha, 0, 1)
        in_range("gate_tau_e", self.tau_e, -1, 1)
        in_range("gate_tau_h", self.tau_h, -1, 1)
        if self.signal not in GATE_SIGNALS:
            raise SpecgenError(f"--gate-signal must be one of {', '.join(GATE_SIGNALS)}, got '{self.signal}'")
