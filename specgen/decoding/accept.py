"""Accept: walk the verified tree from the root and pick what the target keeps.

- Greedy: follow the child whose token equals the target's argmax (lossless).
- Sampling: the target's own sample at each position decides, drawn with randomness keyed by
  (seed, position) (`PositionSampler`, the exponential-race form of the Gumbel-max trick). A child
  is accepted when its token equals that sample. Every drafted token is a point mass (q = delta),
  so child t is accepted with probability p(t) and a set of siblings with the sum of their p: the
  same acceptance as SpecInfer's multi-candidate recursive rejection (Miao et al., 2024), and the
  output is distributed exactly as p. Because the draw at a position does not depend on what was
  drafted, a seed gives the same text whatever the tree size, and the same text as `ar`.
- Soft gate (SENSE, our reading, DESIGN.md section 2): a child d != the target's token a (argmax
  or sample) may also be accepted when p(d) >= alpha * p(a) and d is equivalent to a: cos(E[d], E[a])
  >= tau_e on input embeddings, or (signal "hidden") the target's hidden states after d and after a.
Acceptance rules (`ExactMatch`, `SoftGate`) are what the step engine calls.
Where no child is accepted the target's own token (the bonus token) is emitted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

_MASK64 = (1 << 64) - 1

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


def walk(tree: Tree, choose: Callable[[int], int],
         gate: Callable[[int, int], int | None] | None = None) -> Acceptance:
    """From the root, follow the child holding the target's token `choose(node)`; where none does,
    `gate(node, target_token)` may still pick a child (the soft gate). Ends with the bonus token."""
    tokens = tree.token_list
    node, path, gated = 0, [0], 0
    while True:
        a = choose(node)
        nxt = next((c for c in tree.children[node] if tokens[c] == a), None)
        if nxt is None and gate is not None and tree.children[node]:
            nxt = gate(node, a)
            gated += nxt is not None
        if nxt is None:
            return Acceptance(tuple(path), a, gated)
        path.append(nxt)
        node = nxt


class ExactMatch:
    """The lossless rule: a draft token is kept only when it is the target's own choice."""

    def accept(self, tree: Tree, ver: Any) -> Acceptance:
        return walk(tree, ver.choose)


class SoftGate:
    """SENSE's soft-gated evaluation (our reading, DESIGN.md section 2), greedy or sampled.

    Where the target's token at a node is `a` (its argmax, or its sample at that position) and no
    child holds it, the best child d passing `p(d) >= alpha * p(a)` and the equivalence test of
    `cfg.signal` is accepted (`SoftGateConfig`): input-embedding cosine (E [V, H]) or the cosine of
    the target's hidden states after d (from the verification) and after a (`Verification.probe`).
    Lossy by design.
    """

    def __init__(self, cfg: SoftGateConfig, embeddings: torch.Tensor) -> None:
        self.cfg, self.embeddings = cfg, embeddings  # [V, H]
        self.probes = 0  # extra forwards run by the hidden-state signal

    def accept(self, tree: Tree, ver: Any) -> Acceptance:
        assert ver.logits is not None, "the soft gate needs the target's logits"
        if self.cfg.signal == "hidden":
            assert ver.hidden is not None and ver.probe is not None, "the hidden-state gate needs hidden states and a probe"
        return walk(tree, ver.choose, lambda node, a: self._pick(tree, node, a, ver))

    def _pick(self, tree: Tree, node: int, a: int, ver: Any) -> int | None:
        """The best child passing the soft gate at `node`, or None."""
        kids = list(tree.children[node])
        cand = tree.tokens[kids]  # [m]
        probs = torch.softmax(ver.logits[node].float(), dim=-1)  # [V]
        p_d = probs[cand]  # [m]
        ok = p_d >= self.cfg.alpha * probs[a]  # [m]
        if not bool(ok.any()):
            return None  # no probe is spent where the probability test already fails
        if self.cfg.signal == "hidden":
            self.probes += 1
            h_a = ver.probe(node, a).float()  # [H]
            h_d = ver.hidden[torch.tensor(kids, device=ver.hidden.device)].float()  # [m, H]
            cos = torch.nn.functional.cosine_similarity(h_d, h_a.unsqueeze(0), dim=-1).to(ok.device)  # [m]
            ok &= cos >= self.cfg.tau_h
        else:
            e_d = self.embeddings[cand].float()  # [m, H]
            e_a = self.embeddings[a].float()  # [H]
            ok &= torch.nn.functional.cosine_similarity(e_d, e_a.unsqueeze(0), dim=-1) >= self.cfg.tau_e  # [m]
        if not bool(ok.any()):
            return None
        best = int(torch.where(ok, p_d, torch.full_like(p_d, -1.0)).argmax())
        return kids[best]


def _mix64(x: int) -> int:
    """splitmix64's finaliser: a well-spread 64-bit hash of `x`."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


class PositionSampler:
    """Draws the token at sequence position `pos` from probabilities p [V] with noise keyed by (seed, pos).

    token = argmax_i p_i / E_i with E_i ~ Exp(1) i.i.d. (the exponential race, equivalent to
    Gumbel-max): an exact sample of p, and a deterministic function of (seed, pos, p). Positions
    are absolute indices in prompt + output, so every method that verifies the same prefix draws
    the same token there, however many nodes it drafted.
    """

    def __init__(self, seed: int, device: torch.device | str = "cpu") -> None:
        self.seed = int(seed)
        self.device = torch.device(device)
        self._gen = torch.Generator(device=self.device)

    def noise(self, pos: int, vocab: int) -> torch.Tensor:
        """E [V] ~ Exp(1) i.i.d., the same for the same (seed, pos)."""
        self._gen.manual_seed(_mix64(_mix64(self.seed) ^ int(pos)))
        # fp64: an exact 0 (E = 0, a token picked regardless of p) has odds ~V * 2**-53, not V * 2**-24.
        u = torch.rand(vocab, generator=self._gen, device=self.device, dtype=torch.float64)  # [V] in [0, 1)
        return -torch.log1p(-u)  # [V] = -log(1 - u), Exp(1)

    def sample(self, probs: torch.Tensor, pos: int) -> int:
        """The token at position `pos` given probabilities `probs` [V] (sums to 1)."""
        e = self.noise(pos, probs.shape[-1])  # [V]
        return int(torch.argmax(probs.double() / e))


def sampled_chooser(probs: torch.Tensor, tree: Tree, sampler: PositionSampler, n_kv: int) -> Callable[[int], int]:
    """node -> the target's sample at the position after it (n_kv + depth + 1); probs [n, V]."""
    depth = tree.depth_list

    def choose(node: int) -> int:
        return sampler.sample(probs[node], n_kv + depth[node] + 1)

    return choose


def accept_sampling(tree: Tree, logits: torch.Tensor, sampling: SamplingConfig,
                    sampler: PositionSampler, n_kv: int) -> Acceptance:
    """Lossless speculative sampling over the tree; logits [n, V]; the root sits at position `n_kv`.

    At each node on the walk the target's token is drawn by `sampler` at the position it fills
    (n_kv + depth + 1); the child holding that token is followed, else the token is the bonus.
    """
    return walk(tree, sampled_chooser(target_probs(logits, sampling), tree, sampler, n_kv))
