"""Known circuits come out of patching: the trained induction model's heads and their K-composition.

Runs under both transformer-lens lines (the `transformer` mark).
"""

from __future__ import annotations

import pytest
import torch

from circuits.metrics import cross_entropy, normalised
from circuits.patching import heads, node, patch, path_patch
from circuits.zoo.induction import WEIGHTS_PATH, induction_pair, induction_transformer
from circuits.zoo.transformers import hooked_available

pytestmark = [
    pytest.mark.transformer,
    pytest.mark.skipif(not WEIGHTS_PATH.exists(), reason="induction weights not built yet"),
]
LINES = ["hooked", "bridge"] if hooked_available() else ["bridge"]


@pytest.fixture(scope="module", params=LINES)
def setup(request):
    model = induction_transformer(line=request.param)
    clean, corrupt, batch = induction_pair(8, seed=0)
    loss = cross_entropy(clean, mask=batch.is_repeat)  # next-token loss on the repeated segment
    with torch.no_grad():
        metric = normalised(loss, loss(model(clean)), loss(model(corrupt)))  # 1 clean, 0 corrupt
    return model, clean, corrupt, metric


def test_head_patching_ranks_the_induction_head_first_in_its_layer(setup):
    model, clean, corrupt, metric = setup
    res = patch(model, clean, corrupt, metric, site="blocks.{L}.attn.hook_z", unit="head")
    layer, head = model.induction_heads["induction"]
    assert res.values.shape == (2, 4)
    assert int(res.values[layer].argmax()) == head
    assert float(res.values[layer, head]) > 0.3  # restores a good part of the clean behaviour
    assert res.clean_value != res.corrupt_value


def test_path_patching_finds_k_composition(setup):
    """Noising (IOI style): the previous-token head's corrupted output reaches the induction head
    through its key, not through its query or value."""
    model, clean, corrupt, metric = setup
    prev, induction = model.induction_heads["previous_token"], model.induction_heads["induction"]
    receivers = [node(f"blocks.1.attn.hook_{c}", head=induction[1]) for c in "qkv"]
    res = path_patch(
        model,
        clean,
        corrupt,
        metric,
        senders=heads(model, layers=0),
        receivers=receivers,
        direction="noise",
    )
    effects = res.effects.abs()
    q, k, v = effects[prev[1]]
    assert k > 3 * q and k > 3 * v, effects
    assert k > 0.05  # a sizeable share of the clean-corrupt gap goes through the key alone
