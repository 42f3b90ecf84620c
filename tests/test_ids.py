"""NodeId: one format for every node key, parsed back exactly, and refused when malformed."""

from __future__ import annotations

import pytest

import circuits as cc
from circuits.graph import node_key
from circuits.ids import NodeId


@pytest.mark.parametrize(
    ("node", "key"),
    [
        (NodeId("blocks.1.attn.hook_z", 2), "blocks.1.attn.hook_z[2]"),
        (NodeId("blocks.1.attn.hook_z", 2, pos=5), "blocks.1.attn.hook_z[2]@5"),
        (NodeId("layer2.0.conv1", 7, h=3, w=4), "layer2.0.conv1[7]@3,4"),
        (NodeId("relu1", error=True), "relu1[error]"),
        (NodeId("blocks.1.attn.hook_k", named=(("head", 2),)), "blocks.1.attn.hook_k[head=2]"),
        (NodeId("x", 3, named=(("batch", 0),)), "x[3,batch=0]"),
        (NodeId("conv1:input", 0), "conv1:input[0]"),
        (
            NodeId("blocks.0.hook_resid_pre", named=(("pos", -1),)),
            "blocks.0.hook_resid_pre[pos=-1]",
        ),
        (NodeId("logits"), "logits"),
    ],
)
def test_format_and_parse_round_trip(node: NodeId, key: str) -> None:
    assert str(node) == node.key == key
    assert NodeId.parse(key) == node


def test_every_stage_writes_the_same_format() -> None:
    assert node_key("layer2.0.conv1", 7, h=3, w=4) == str(NodeId("layer2.0.conv1", 7, h=3, w=4))
    assert cc.node("blocks.1.attn.hook_k", head=2).label == "blocks.1.attn.hook_k[head=2]"


@pytest.mark.parametrize(
    "key", ["", "a[", "a[x]", "a@1,2,3", "a[01]", "a@", "[3]", "a[3][4]", "a[error,3]", 7]
)
def test_malformed_keys_are_refused(key: object) -> None:
    with pytest.raises(cc.SchemaError):
        NodeId.parse(key)  # type: ignore[arg-type]


def test_bad_fields_are_refused() -> None:
    for bad in (dict(site=""), dict(site="a[b]"), dict(site="a", unit=True), dict(site="a", h=1)):
        with pytest.raises(cc.SchemaError):
            NodeId(**bad)  # type: ignore[arg-type]
