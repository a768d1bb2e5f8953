"""P(a drafted node is accepted | its score, its depth): the acceptance calibration of tree sizing.

`AcceptanceModel` turns any proposer's node scores into acceptance probabilities, learnt online
over score and depth bins from a Beta prior (`sizing.TreeSizingConfig`: prior_mean, prior_weight,
prior_depth). A server shares one per method across its requests (`child`: a hierarchical prior);
`specgen generate` keeps one per model and method on disk across runs (`stored.py`).
"""
from __future__ import annotations

import bisect
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .sizing import TreeSizingConfig

# Nodes per score-and-depth bin that a calibration shared across generations remembers.
SHARED_WINDOW = 256.0


class AcceptanceModel:
    """P(a drafted node is accepted | its score, its depth), calibrated online over bins.

    Scores fall in log-spaced bins; depth matters on its own because a proposer may give every node
    of a candidate the same score (a prompt-lookup chain), while deeper nodes are accepted less often.
    """

    EDGES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)  # score bin i holds scores in [EDGES[i-1], EDGES[i])
    DEPTHS = (2, 3, 4, 6, 9)  # depth bin j holds depths in [DEPTHS[j-1], DEPTHS[j])

    def __init__(self, prior_mean: float = 0.3, prior_weight: float = 2.0, *, geometric: bool = False,
                 window: float | None = None) -> None:
        lowest = (1, *self.DEPTHS)  # the smallest depth of each depth bin
        self.accepted = [prior_weight * (prior_mean ** d if geometric else prior_mean)
                         for _ in range(len(self.EDGES) + 1) for d in lowest]
        self.drafted = [prior_weight] * len(self.accepted)
        # A model shared by many generations (a server's, per method) keeps about the last `window`
        # nodes per bin: past it both counts shrink in proportion, so the estimate follows a change of
        # workload instead of averaging over the server's whole life. None: keep every count.
        self.window = window
        assert window is None or window > prior_weight, "the window must hold more than the prior"
        self.parent: AcceptanceModel | None = None  # a shared model that every update also reaches (`child`)

    def child(self, weight: float) -> "AcceptanceModel":
        """One generation's model over this shared one: its prior is this model's estimate per bin at
        `weight` pseudo-counts, and its updates reach this model as well. A request thus starts from
        what earlier requests of its method found (a hierarchical Beta prior) and still follows its own
        evidence: a prompt full of repeats may draft where the method's average one does not."""
        kid = AcceptanceModel.__new__(AcceptanceModel)
        kid.accepted = [weight * a / d for a, d in zip(self.accepted, self.drafted)]
        kid.drafted = [weight] * len(self.drafted)
        kid.window, kid.parent = None, self
        return kid

    @classmethod
    def for_sizing(cls, cfg: "TreeSizingConfig", window: float | None = None) -> "AcceptanceModel":
        """A fresh model with `cfg`'s prior (prior_mean, prior_weight, prior_depth)."""
        return cls(cfg.prior_mean, cfg.prior_weight, geometric=cfg.prior_depth == "geometric", window=window)

    def to_dict(self) -> dict[str, Any]:
        """The counts per bin and the bins' edges (what `from_dict` reads back); not the parent link."""
        return {"edges": list(self.EDGES), "depths": list(self.DEPTHS), "window": self.window,
                "accepted": list(self.accepted), "drafted": list(self.drafted)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AcceptanceModel":
        """A model from `to_dict`'s output; ValueError when it does not fit this class's bins."""
        if list(d["edges"]) != list(cls.EDGES) or list(d["depths"]) != list(cls.DEPTHS):
            raise ValueError("calibration bins differ from this version's")
        accepted, drafted = [float(a) for a in d["accepted"]], [float(n) for n in d["drafted"]]
        n_bins = (len(cls.EDGES) + 1) * (len(cls.DEPTHS) + 1)
        if len(accepted) != n_bins or len(drafted) != n_bins:
            raise ValueError("calibration has the wrong number of bins")
        if not all(0.0 <= a <= n and n > 0.0 for a, n in zip(accepted, drafted)):
            raise ValueError("calibration counts out of range")
        model = cls.__new__(cls)
        model.accepted, model.drafted = accepted, drafted
        model.window = None if d["window"] is None else float(d["window"])
        model.parent = None
        return model

    def _bin(self, score: float, depth: int) -> int:
        return bisect.bisect_right(self.EDGES, score) * (len(self.DEPTHS) + 1) + bisect.bisect_right(self.DEPTHS, depth)

    def prob(self, score: float, depth: int) -> float:
        b = self._bin(score, depth)
        return self.accepted[b] / self.drafted[b]

    def update(self, scores: list[float], depths: list[int], accepted: list[bool]) -> None:
        """Fold in one verified tree: each drafted node's score, depth and whether it was accepted."""
        for s, d, a in zip(scores, depths, accepted):
            b = self._bin(s, d)
            self.drafted[b] += 1.0
            self.accepted[b] += 1.0 if a else 0.0
            if self.window is not None and self.drafted[b] > self.window:
                shrink = self.window / self.drafted[b]
                self.drafted[b] *= shrink
                self.accepted[b] *= shrink
        if self.parent is not None:
            self.parent.update(scores, depths, accepted)
