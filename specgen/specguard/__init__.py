"""SpecGuard: step-level speculative decoding verified by the target's attention grounding and
log-probability confidence (DESIGN.md section 3). `generate(..., method="specguard")` runs
`steps.generate_specguard`; `verifier` holds the GSM8K pieces and the verifier-quality study."""
from .config import SpecGuardConfig, StepScorer

__all__ = ["SpecGuardConfig", "StepScorer"]
