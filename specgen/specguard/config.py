"""SpecGuardConfig: every "our reading" choice of DESIGN.md section 3 as a named option.

Field names equal the CLI flags (`--step-delimiter` -> `step_delimiter`), so
`specgen.proposers.registry.make_config("specguard", options)` builds it directly.

Defaults and why (measured with `specgen.specguard.verifier.run_verifier_study`, SmolLM2-135M as
the scorer, the first GSM8K test problems, every gold step against a twin with its last number
changed, delimiter "\n"; 307 pairs from 90 problems):
- `confidence="mean_exp"`: AUROC 0.66 and the correct step beats its own twin 91% of the time
  (`min`: AUROC 0.68, twin win 65%, many ties).
- grounding carries no signal here: AUROC 0.50 (min), 0.51 (quantile 0.1), 0.50 (mean); the
  per-step minimum usually falls on a token before the corrupted number, identical in both twins.
  Direction makes no measurable difference (ensemble 0.659 higher vs 0.657 lower); "lower" is
  kept, following the DESIGN.md section 3 probe; "higher" is the paper's reading.
- `beta=0.75`: ensemble AUROC equals confidence alone for beta in [0.75, 1] (40-problem subset:
  0.667), and drops at 0.5 (0.66 raw, 0.62 z-scored).
- `tau=0.45`: on the 40-problem subset it accepts 38% of gold steps and 17% of corrupted ones
  (0.40: 61% / 36%).

Checked again with Qwen2.5-Coder-1.5B-Instruct as the scorer (the target of the Qwen pair; `specgen
bench --suite gsm8k --verifier --limit 40 --model qwen2.5-coder-1.5b`: 142 pairs from 40 problems):
confidence AUROC 0.751 (mean_exp; gold beats its twin 99%) and 0.823 (min; 80%), grounding 0.50
(min, quantile, mean: still no signal), ensemble 0.757. These defaults accept 46% of gold steps and
8% of corrupted ones; the "paper" preset (grounding higher = better, C >= 0.4 and G >= 0.3) 52% and
13%; confidence `min` with a threshold of 0.01, 29% and 1%. The defaults stay: on this pair they
keep corrupted steps out as well as confidence alone does, at the highest gold rate among rules
that do.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from ..errors import SpecgenError
from ..validate import check_fields, choice, in_range

# RSD-style step scorer (Liao et al., 2025): (context text, step text) -> score in [0, 1], higher =
# better. A process reward model plugs in here; when set it replaces grounding and confidence.
StepScorer = Callable[[str, str], float]

SELECTORS = ("overlap", "embedding", "numeric")
REDUCES = ("min", "quantile")
DIRECTIONS = ("higher", "lower")
REFERENCES = ("absolute", "relative")
CONFIDENCES = ("mean_exp", "min")
RULES = ("ensemble", "and")
SIGNALS = ("both", "grounding", "confidence")
EXCHANGES = ("auto", "tokens", "text")
# Named option sets (`--preset`), under any option given explicitly. "paper": the SpecGuard paper's
# description read literally: more attention on the context = better grounded, and a step passes
# only when both signals clear their thresholds. The plain defaults are the data-chosen reading.
PRESETS: dict[str, dict[str, Any]] = {
    "measured": {},
    "paper": {"grounding_direction": "higher", "grounding_reference": "absolute", "rule": "and"},
}


@dataclass(frozen=True)
class SpecGuardConfig:
    """Step-level speculative decoding verified by the target's internal signals (DESIGN.md section 3).

    draft_model: embedded alias, hub id, folder or .gguf of the draft; "auto" = the named target's
        family draft from the catalog (Qwen2.5-Coder-0.5B for qwen2.5-coder-1.5b), else Gemma-3-270M;
        None = the target drafts for itself (no speed-up; useful for tests and same-model studies).
    exchange: auto | tokens | text: how steps cross (`exchange.py`); auto = token ids when the
        draft has the target's tokenizer.
    step_delimiter: a step ends after this string, at EOS, or after `max_step_tokens` draft tokens
        (the fallback when the delimiter never occurs).
    candidates: k steps sampled from the draft per step, at `draft_temperature` (0 = one greedy).
    selector: overlap (token-overlap medoid) | embedding (medoid of mean input embeddings) |
        numeric (majority vote on the step's last number, overlap medoid among the winners).
    grounding_layers: the last L layers whose attention is read; grounding_reduce: min | quantile
        (`grounding_quantile` of the per-token masses) over the step's tokens.
    grounding_direction: higher (paper: more mass on the context = better) | lower (the probe's
        finding on small models, 1 - G); grounding_reference: absolute | relative (0.5 + (G - mean G
        of the other candidates) / 2: all k candidates are scored in one tree-masked forward).
    confidence: mean_exp (exp of the mean token log-prob) | min (exp of the minimum log-prob).
    rule: ensemble (`beta * C + (1 - beta) * G >= tau`) | and (`C >= tau_confidence` and
        `G >= tau_grounding`). signals: both | grounding | confidence (ablations: one signal alone,
        compared with `tau`).
    recompute_method: the token-level method (registry name) the target uses to regenerate a
        rejected step. scorer: RSD baseline, replaces the internal signals (`score >= tau`).
    seed: seeds the draft's sampling (step i uses seed + i).
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = PRESETS

    draft_model: str | None = "auto"
    exchange: str = "auto"
    step_delimiter: str = "\n\n"
    candidates: int = 4
    draft_temperature: float = 0.7
    max_step_tokens: int = 96
    selector: str = "overlap"
    grounding_layers: int = 8
    grounding_reduce: str = "min"
    grounding_quantile: float = 0.1
    grounding_direction: str = "lower"
    grounding_reference: str = "absolute"
    confidence: str = "mean_exp"
    rule: str = "ensemble"
    beta: float = 0.75
    tau: float = 0.45
    tau_confidence: float = 0.4
    tau_grounding: float = 0.3
    signals: str = "both"
    recompute_method: str = "pld"
    scorer: StepScorer | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self)
        in_range("candidates", self.candidates, 1, 64)
        in_range("draft_temperature", self.draft_temperature, 0, 100)
        in_range("max_step_tokens", self.max_step_tokens, 1, 100_000)
        in_range("grounding_layers", self.grounding_layers, 1, 1024)
        in_range("seed", self.seed, 0, 2**63 - 1)
        choice("selector", self.selector, SELECTORS)
        choice("grounding_reduce", self.grounding_reduce, REDUCES)
        choice("grounding_direction", self.grounding_direction, DIRECTIONS)
        choice("grounding_reference", self.grounding_reference, REFERENCES)
        choice("confidence", self.confidence, CONFIDENCES)
        choice("rule", self.rule, RULES)
        choice("signals", self.signals, SIGNALS)
        choice("exchange", self.exchange, EXCHANGES)
        for name in ("grounding_quantile", "beta", "tau", "tau_confidence", "tau_grounding"):
            in_range(name, getattr(self, name), 0, 1)
        if self.recompute_method == "specguard":
            raise SpecgenError("recompute-method must be a token-level method, not specguard")
        if self.scorer is not None and not callable(self.scorer):
            raise SpecgenError("scorer must be a callable (context text, step text) -> float")

    def draft_for(self, target_name: str) -> str | None:
        """The draft model to load for `target_name` ("auto" resolved; None: the target itself)."""
        if self.draft_model != "auto":
            return self.draft_model
        from ..catalog import family_draft

        return family_draft(target_name) or FALLBACK_DRAFT


FALLBACK_DRAFT = "gemma3-270m"  # "auto" for a target the catalog names no draft for
