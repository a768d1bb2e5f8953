"""Growing sequences of per-position rows: the loop's committed hidden states and what a proposer
derives from them.

Both grow by a few rows per step for the whole request, so both append into a preallocated buffer
grown by doubling instead of concatenating (or recomputing) the whole context every step.
"""
from __future__ import annotations

from typing import Callable

import torch


class RowBuffer:
    """Rows [n, H] in a preallocated buffer on their device, grown by doubling.

    Appending a step's rows costs a copy of those rows only (amortised), not a `torch.cat` of the
    whole context every step.
    """

    def __init__(self, first: torch.Tensor, capacity: int = 0) -> None:
        n, h = first.shape  # [n, H]
        self._buf = torch.empty(max(capacity, 2 * n, 64), h, dtype=first.dtype, device=first.device)  # [cap, H]
        self._buf[:n] = first
        self.n = n

    def append(self, rows: torch.Tensor) -> None:
        m = rows.shape[0]  # rows [m, H]
        if self.n + m > self._buf.shape[0]:
            grown = torch.empty(2 * (self.n + m), self._buf.shape[1], dtype=self._buf.dtype, device=self._buf.device)
            grown[: self.n] = self._buf[: self.n]
            self._buf = grown
        self._buf[self.n:self.n + m] = rows
        self.n += m

    def view(self) -> torch.Tensor:
        """[n, H] the rows so far (a view: valid until the next append)."""
        return self._buf[: self.n]


class DerivedRows:
    """`fn` of each row of a sequence that only grows ([n, H] -> [n, d]), kept across calls so that a
    call applies `fn` to the rows it has not seen yet.

    `fn` must act on each row alone (normalisation, a projection). A committed position's hidden
    state never changes within a request, so the rows seen stay valid; a call whose sequence is
    shorter than what was seen, or whose last seen row differs, is another history and starts over.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.fn = fn
        self._out: RowBuffer | None = None
        self._last: torch.Tensor | None = None  # [H] the last source row seen

    def reset(self) -> None:
        self._out, self._last = None, None

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        """fn(rows) [n, d] for rows [n, H] (a view: valid until the next call)."""
        n = rows.shape[0]
        seen = self._out.n if self._out is not None else 0
        if seen and (n < seen or self._last is None or not torch.equal(rows[seen - 1], self._last)):
            self.reset()
            seen = 0
        if n > seen:
            new = self.fn(rows[seen:n])  # [n - seen, d]
            assert new.shape[0] == n - seen, "fn must map each row to one row"
            if self._out is None:
                self._out = RowBuffer(new, capacity=2 * n)
            else:
                self._out.append(new)
            self._last = rows[n - 1].clone()
        if self._out is None:
            return self.fn(rows)  # no rows: whatever shape fn gives an empty input
        return self._out.view()[:n]
