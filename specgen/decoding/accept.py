"""Accept: walk the verified tree from the root and pick what the target keeps.

- Greedy: follow the child whose token equals the target's argmax (lossless).
- Sampling: multi-candidate speculative sampling, SpecInfer-style recursive rejection (Miao et al.,
  2024). Drafts are point masses (q = delta), so child t is accepted with the residual probability
  p'(t) and, on rejection, p' loses t and is renormalised; the result is distributed exactly as p.
- Soft gate (SENSE, our reading, DESIGN.md section 2): in greedy mode a child d != argmax a may
  also be accepted when p(d) >= alpha * p(a) and cos(E[d], E[a]) >= tau_e.
Where no child is accepted the target's own token (the bonus token) is emitted.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import SamplingConfig, SoftGateConfig
from .tree import Tree


@dataclass(frozen=True)
class Acceptance:
    """The accepted path (node indices from the root) and the token that follows it."""

    path: tuple[int, ...]  # path[0] == 0, the root
    bonus: int  # the next pending token, drawn from the target at path[-1]
    gated: int = 0  # nodes accepted by the soft gate rather than by exact agreement


def target_probs(logits: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
    """Temperature, top-k and top-p applied to logits [n, V] -> probabilities [n, V] (fp32)."""
    logits = logits.float() / sampling.temperature  # [n, V]
    if sampling.top_k and sampling.top_k < logits.shape[-1]:
        kth = torch.topk(logits, sampling.top_k, dim=-1).values[..., -1:]  # [n, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # [n, V]
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # Drop a token when the mass before it already reaches top_p (keeps at least one).
        drop_sorted = (cum - torch.softmax(sorted_logits, dim=-1)) >= sampling.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return torch.softmax(logits, dim=-1)


def accept_greedy(tree: Tree, logits: torch.Tensor, gate: SoftGateConfig | None = None,
                  embeddings: torch.Tensor | None = None) -> Acceptance:
    """Greedy walk; logits [n, V] per node; embeddings [V, H] needed only when the gate is on."""
    argmax = logits.argmax(dim=-1).tolist()  # [n]
    tokens = tree.tokens.tolist()
    gate_on = gate is not None and gate.enabled
    node, path, gated = 0, [0], 0
    while True:
        a = argmax[node]
        nxt = next((c for c in tree.children[node] if tokens[c] == a), None)
        if nxt is None and gate_on and tree.children[node]:
            nxt = _gate_pick(tree, node, logits[node], a, gate, embeddings)
            gated += nxt is not None
        if nxt is None:
            return Acceptance(tuple(path), a, gated)
        path.append(nxt)
        node = nxt


def _gate_pick(tree: Tree, node: int, logits: torch.Tensor, a: int, gate: SoftGateConfig,
               embeddings: torch.Tensor | None) -> int | None:
    """The best child passing the soft gate at `node`, or None. logits [V]."""
    assert embeddings is not None, "the soft gate needs the target's input embeddings"
    kids = list(tree.children[node])
    cand = tree.tokens[kids]  # [m]
    probs = torch.softmax(logits.float(), dim=-1)  # [V]
    p_d, p_a = probs[cand], probs[a]  # [m], []
    e_d = embeddings[cand].float()  # [m, H]
    e_a = embeddings[a].float()  # [H]
    cos = torch.nn.functional.cosine_similarity(e_d, e_a.unsqueeze(0), dim=-1)  # [m]
    ok = (p_d >= gate.alpha * p_a) & (cos >= gate.tau_e)  # [m]
    if not bool(ok.any()):
        return None
    best = int(torch.where(ok, p_d, torch.full_like(p_d, -1.0)).argmax())
    return kids[best]


def accept_sampling(tree: Tree, logits: torch.Tensor, sampling: SamplingConfig,
                    generator: torch.Generator) -> Acceptance:
    """Lossless multi-candidate speculative sampling over the tree; logits [n, V]."""
    probs = target_probs(logits, sampling)  # [n, V]
    tokens = tree.tokens.tolist()
    node, path = 0, [0]
    while True:
        residual = probs[node].clone()  # [V]
        nxt = None
        for c in tree.children[node]:
            t = tokens[c]
            total = float(residual.sum())
            if total <= 0.0:
                break
            if float(torch.rand((), generator=generator)) * total < float(residual[t]):
                nxt = c
                break
            residual[t] = 0.0  # rejected: p' = norm(max(p' - delta_t, 0))
        if nxt is None:
            if float(residual.sum()) <= 0.0:  # every allowed token was drafted and rejected
                residual = probs[node]
            bonus = int(torch.multinomial(residual, 1, generator=generator))
            return Acceptance(tuple(path), bonus)
        path.append(nxt)
        node = nxt
