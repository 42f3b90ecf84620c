"""Every hostile input in `tests.hostile` gets a clear CircuitsError or is handled correctly,
and leaves its model exactly as it was (parameters, buffers, training flags, hooks)."""

from __future__ import annotations

import pytest

from tests.hostile import CASES, Case, outcome


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input(case: Case) -> None:
    kind, detail = outcome(case)
    assert kind in ("clear", "handled"), f"{case.name}: {kind} ({detail})"


def test_zoo_weights_that_do_not_fit_a_plain_module_are_a_model_error() -> None:
    import torch

    from circuits.errors import ModelError
    from circuits.zoo import load_weights

    with pytest.raises(ModelError, match="do not fit Linear"):
        load_weights(torch.nn.Linear(2, 2), {"weight": torch.zeros(3, 3)})
