"""Every hostile input in `tests.hostile` gets a clear CircuitsError or is handled correctly,
and leaves its model exactly as it was (parameters, buffers, training flags, hooks)."""

from __future__ import annotations

import pytest

from tests.hostile import CASES, Case, outcome


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input(case: Case) -> None:
    kind, detail = outcome(case)
    assert kind in ("clear", "handled"), f"{case.name}: {kind} ({detail})"
