"""When to verify drafts that a cost model declines: explorations at a bounded cost.

A cost model that says no draft pays is never corrected unless a draft is verified now and then:
the acceptance calibration (or a profile timed on a busy machine) would stay wrong forever. Such
explorations cost what an unneeded verification forward costs, so their share of the time is
bounded (`exploration_wait`), and a method whose explorations keep failing explores ever more
rarely (`ExplorationClock`'s backoff). Used by the tree sizer (decoding/sizing.py) and the
server's load-aware drafting (decoding/batch.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


def exploration_wait(extra: float, every: int, share: float) -> int:
    """Starved steps before an exploration whose forward costs `extra` plain steps more than the one it
    replaces: at least `every`, and enough that explorations take at most `share` of the time."""
    return max(1, every, math.ceil(extra / share - 1e-9))


@dataclass
class ExplorationClock:
    """When to verify drafts that the cost model declines, so that a wrong estimate can be corrected.

    One clock serves the tree sizer (its node count and its draft depth) and the server's load-aware
    drafting (per batch size): each keeps a count of starved steps under its own key. The wait is
    `exploration_wait` times the backoff, which each exploration that accepts nothing doubles (up to
    `backoff_max`) and one that accepts resets; after one that paid for its own forward the next wait
    is `every` alone. `every` = 0 never explores.
    """

    every: int = 8
    share: float = 0.02
    backoff_max: int = 16
    starved: dict[Any, int] = field(default_factory=dict)  # key -> starved steps since the last verified
    backoff: int = 1
    exploring: bool = False  # the last drafts let through were an exploration
    paid: bool = False  # the last exploration paid for its forward
    explorations: int = 0

    def wait(self, extra: float) -> int:
        """Starved steps before the next exploration, whose forward costs `extra` plain steps more."""
        base = max(1, self.every) if self.paid else exploration_wait(extra, self.every, self.share)
        return base * self.backoff

    def starve(self, key: Any, extra: float) -> bool:
        """One more step under `key` that the cost model sized to nothing: True when it explores."""
        if not self.every:
            return False
        self.starved[key] = self.starved.get(key, 0) + 1
        if self.starved[key] < self.wait(extra):
            return False
        self.starved[key], self.exploring = 0, True
        self.explorations += 1
        return True

    def verified(self, key: Any) -> None:
        """A step under `key` that the cost model let draft: the starved count starts again."""
        self.starved[key] = 0

    def outcome(self, accepted: int, *, paid: bool) -> None:
        """The drafts let through were verified and `accepted` draft tokens accepted, which `paid` (or not)
        for the forward: an exploration's outcome sets the next wait."""
        if self.exploring:
            self.backoff = 1 if accepted > 0 else min(self.backoff * 2, self.backoff_max)
            self.paid = paid
            self.exploring = False
