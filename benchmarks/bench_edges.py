"""Exact edge patching and batched edge ablation against plain forward passes, on one thread
(a second core is free only some of the time on a shared 2-core box).

1. Edge patching of every edge of a 4-layer, d_model 256, 8-head model with MLPs (8 x 32 tokens)
   against one forward pass per edge: single-edge variants stacked along the batch, each computed
   as the change the cut edge makes to the clean run (`circuits.modelgraph.residual_delta`: only
   the receiver's head or MLP and what it reaches, the last layer's queries, MLP and unembedding
   at the metric's position). ACDC on the same model, each edge test the change one more cut
   makes to the current circuit's recorded run, against one forward pass per edge test (what the
   reference implementation runs; like it, ACDC leaves the edges into receivers cut off from the
   output untested) and against the same algorithm with one edge test per pass (same circuit);
   EAP with zero ablation against patch ablation.
2. On the ResNet-18 shape (batch 2 x 3 x 64 x 64): edge-level faithfulness of the top 5% of EAP's
   channel edges against one forward pass (masked-weight convolutions of the kept channel pairs,
   one stacked pass), whole and without turning the graph into masks; and edge patching of the
   stem conv's edges (its input channels and its edges to the output: every later conv is on the
   paths) against one forward pass per edge.
"""

from __future__ import annotations

import json
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import circuits as cc
from benchmarks.resnet import logit0, resnet_case
from benchmarks.timing import interleaved, row, threads
from circuits.acdc import acdc
from circuits.faithfulness import Faithfulness
from circuits.metrics import logit_diff

TAU = 0.01
MODEL = dict(n_layers=4, d_model=256, n_heads=8, d_head=32, d_mlp=1024, d_vocab=1000, n_ctx=32)


def _flops(fn: object) -> int:
    """The matmul and conv FLOPs `fn` runs (torch's counter; elementwise work is not counted):
    where a machine is compute-bound, the FLOP ratio is the most batching can give."""
    with FlopCounterMode(display=False) as counter:
        fn()  # type: ignore[operator]
    return int(counter.get_total_flops())


def _once(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def transformer_rows() -> list[dict[str, object]]:
    model = cc.zoo.tiny_transformer(**MODEL)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(0)
    clean = torch.randint(0, MODEL["d_vocab"], (8, 32), generator=gen)
    corrupt = clean.clone()
    corrupt[:, :16] = torch.randint(0, MODEL["d_vocab"], (8, 16), generator=gen)
    metric = logit_diff(correct=11, incorrect=13, position=-1)

    def forward_time() -> float:
        with torch.no_grad():
            return interleaved([lambda: model(clean)], repeat=5)[0]

    times = [forward_time()]
    got = {}
    took = _once(
        lambda: got.update(res=cc.attribute(model, clean, corrupt, metric, method="edge_patching"))
    )
    res = got["res"]
    n_edges = int((~torch.isnan(res.scores)).sum())
    times.append(forward_time())
    runs: dict[str, object] = {}
    batched = _once(lambda: runs.update(batched=acdc(model, clean, corrupt, None, tau=TAU)))
    single = _once(lambda: runs.update(single=acdc(model, clean, corrupt, None, tau=TAU, memory=1)))
    times.append(forward_time())
    forward = min(times)  # the quietest of three measurements, around the timed runs
    a, b = runs["batched"], runs["single"]
    same = sorted(a.edges) == sorted(b.edges)  # type: ignore[attr-defined]
    record = json.loads(a.graph["thresholds"])  # type: ignore[attr-defined]
    tests, passes = record["edge_tests"], record["passes"]
    with torch.no_grad():
        forward_flops = _flops(lambda: model(clean))
    patch_flops = _flops(
        lambda: cc.attribute(model, clean, corrupt, metric, method="edge_patching", progress=False)
    )
    acdc_flops = _flops(lambda: acdc(model, clean, corrupt, None, tau=TAU, progress=False))
    eap_zero, eap_patch = interleaved(
        [
            lambda: cc.attribute(model, clean, corrupt, metric, method="eap", ablation="zero"),
            lambda: cc.attribute(model, clean, corrupt, metric, method="eap"),
        ],
        repeat=3,
    )
    return [
        row(
            f"edge patching, {n_edges} edges / one forward per edge, 4L d256 8 heads",
            took,
            forward * n_edges,
            "8 x 32 tokens, MLPs and LayerNorm; FLOP ratio "
            f"{n_edges * forward_flops / patch_flops:.1f}",
        ),
        row(
            f"ACDC (tau {TAU}), {tests} edge tests / one forward per edge test, 4L d256 8 heads",
            batched,
            forward * tests,
            f"{a.number_of_edges()} edges; KL at every position; {passes} passes; "  # type: ignore[attr-defined]
            f"FLOP ratio {tests * forward_flops / acdc_flops:.1f}",
        ),
        row(
            f"ACDC (tau {TAU}), batched / one edge test per pass, 4L d256 8 heads",
            batched,
            single,
            f"same circuit: {same}",
        ),
        row(
            "EAP, zero ablation / patch ablation, 4L d256 8 heads",
            eap_zero,
            eap_patch,
            "target >= 1 (no slower)",
        ),
    ]


def conv_rows() -> list[dict[str, object]]:
    model, clean, corrupt = resnet_case()
    metric = logit0

    full = cc.build_graph(cc.attribute(model, clean, corrupt, metric, method="eap"))
    circuit = cc.prune(full, top_k=full.number_of_edges() // 20)
    check = Faithfulness(model, full, clean, corrupt, metric)
    mask = check.keep(circuit)
    with torch.no_grad():
        forward, score, masked = interleaved(
            [lambda: model(clean), lambda: check.score(circuit), lambda: check.values([mask])],
            repeat=3,
        )
    got = {}
    took = _once(
        lambda: got.update(
            res=cc.attribute(model, clean, corrupt, metric, method="edge_patching", layers=["0"])
        )
    )
    res = got["res"]
    n_edges = int((~torch.isnan(res.scores)).sum())
    return [
        row(
            f"faithfulness, {circuit.number_of_edges()} edges / one forward, ResNet-18 shape",
            score,
            forward,
            f"{len(check.runner.order)} convs; value {check.score(circuit):.2f}; FLOPs "
            f"{_flops(lambda: check.score(circuit)) / _flops(lambda: model(clean)):.1f} forwards",
        ),
        row(
            "faithfulness, the ablated run of the circuit's mask / one forward, ResNet-18 shape",
            masked,
            forward,
            "the score less turning the graph's edges into masks",
        ),
        row(
            f"conv edge patching, {n_edges} stem edges / one forward per edge, ResNet-18 shape",
            took,
            forward * n_edges,
            "2 x 3 x 64 x 64; one stacked pass per chunk of single-edge variants",
        ),
    ]


def run() -> list[dict[str, object]]:
    with threads(1):
        return transformer_rows() + conv_rows()
