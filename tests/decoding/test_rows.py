"""`specgen.rows`: the doubling row buffer and rows derived once per position across calls."""
from __future__ import annotations

import torch

from specgen.rows import DerivedRows, RowBuffer


def test_row_buffer_holds_every_appended_row_in_order() -> None:
    g = torch.Generator().manual_seed(0)
    parts = [torch.randn(n, 5, generator=g) for n in (3, 1, 70, 0, 200)]
    buf = RowBuffer(parts[0])
    for p in parts[1:]:
        buf.append(p)
    assert torch.equal(buf.view(), torch.cat(parts))


def test_derived_rows_equal_fn_of_the_whole_sequence_and_apply_fn_to_new_rows_only() -> None:
    g = torch.Generator().manual_seed(1)
    seen: list[int] = []

    def fn(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.shape[0])
        return torch.nn.functional.normalize(x, dim=-1) * 2.0

    full = torch.randn(500, 8, generator=g)  # [N, H] a request's committed states, in order
    derived = DerivedRows(fn)
    for n in (1, 4, 4, 9, 130, 131, 400, 500):
        got = derived(full[:n])  # [n, 8]
        torch.testing.assert_close(got, fn(full[:n]))
        seen.pop()  # the oracle's own call
    assert sum(seen) == 500, seen  # each row derived once


def test_derived_rows_start_over_on_another_history() -> None:
    g = torch.Generator().manual_seed(2)
    fn = lambda x: x * 3.0  # noqa: E731
    a, b = torch.randn(50, 4, generator=g), torch.randn(50, 4, generator=g)
    derived = DerivedRows(fn)
    derived(a[:30])
    torch.testing.assert_close(derived(b[:40]), fn(b[:40]))  # another last row: not a's rows 0..29
    torch.testing.assert_close(derived(b[:10]), fn(b[:10]))  # shorter than what was seen
    derived.reset()
    torch.testing.assert_close(derived(a[:20]), fn(a[:20]))
    assert derived(a[:0]).shape == (0, 4)
