"""Circuit graphs at scale: build and prune from 1,000,000 candidate edges.

The candidate graph is shaped like a transformer's: 150 input nodes (positions), 12 layers of
150 features and 10 outputs; 1,000,000 edges drawn without replacement among all pairs that go
from an earlier layer to a later one, weights Gaussian times exponential (heavy-tailed, as
attributions are). Each row runs in a fresh subprocess so its peak memory (``ru_maxrss``) is
its own; the reference is the target, 30 s (and 2 GiB in the note), not another library. The
note also gives the CPU time, which shared machines disturb less than wall time.

Rows: `build_graph(..., influence=0.8)`, which prunes on the arrays before building networkx
objects (the path for large attributions), and the long way: `build_graph` of all 1,000,000
edges into a networkx graph, then `prune(g, influence=0.8)` on it.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.timing import row

LAYERS, WIDTH, OUTPUTS, EDGES = 12, 150, 10, 1_000_000
TARGET_S, TARGET_GIB = 30.0, 2.0


def candidates(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The node table and the 1,000,000-edge candidate table (layered random DAG)."""
    from circuits.graph import node_key

    rng = np.random.default_rng(seed)
    rows = [{"key": node_key("embed", pos=p), "kind": "input", "site": "embed", "layer": -1,
             "pos": p, "unit": -1, "activation": 1.0, "label": f"tok{p}"}
            for p in range(WIDTH)]  # fmt: skip
    for layer in range(LAYERS):
        site = f"blocks.{layer}.mlp.hook_post"
        acts = rng.random(WIDTH)
        rows += [{"key": node_key(site, u), "kind": "neuron", "site": site, "layer": layer,
                  "pos": -1, "unit": u, "activation": float(acts[u]), "label": f"L{layer}N{u}"}
                 for u in range(WIDTH)]  # fmt: skip
    rows += [{"key": node_key("logits", u), "kind": "output", "site": "logits", "layer": -1,
              "pos": -1, "unit": u, "activation": 0.0, "label": f"out{u}"}
             for u in range(OUTPUTS)]  # fmt: skip
    nodes = pd.DataFrame(rows)
    depth = np.concatenate([np.zeros(WIDTH), np.repeat(np.arange(1, LAYERS + 1), WIDTH),
                            np.full(OUTPUTS, LAYERS + 1)])  # fmt: skip
    src, dst = np.nonzero(depth[:, None] < depth[None, :])
    pick = rng.choice(src.size, size=EDGES, replace=False)
    keys = nodes["key"].to_numpy(dtype=object)
    weight = rng.standard_normal(EDGES) * rng.exponential(1.0, EDGES)
    edges = pd.DataFrame({"source": keys[src[pick]], "target": keys[dst[pick]], "weight": weight})
    return nodes, edges


def _child(mode: str) -> dict[str, float]:
    """Runs in the subprocess: time one build(+prune), report time, sizes and peak memory."""
    from circuits.graph import build_graph, prune

    nodes, edges = candidates()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start, cpu = time.perf_counter(), time.process_time()
    if mode == "arrays":
        g = build_graph(edges, nodes=nodes, influence=0.8)
    else:
        g = prune(build_graph(edges, nodes=nodes), influence=0.8)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"seconds": seconds, "cpu_s": cpu, "peak_gib": peak / 2**20,
            "before_gib": before / 2**20, "nodes": g.number_of_nodes(),
            "edges": g.number_of_edges()}  # fmt: skip


def _measure(mode: str) -> dict[str, float]:
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_graph", mode], cwd=root,
                         capture_output=True, text=True, check=True)  # fmt: skip
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def run() -> list[dict[str, object]]:
    rows = []
    names = {
        "arrays": "build_graph(influence=0.8) of 1M candidate edges (prune arrays, then build)",
        "networkx": "build_graph of 1M edges, then prune(g, influence=0.8)",
    }
    for mode, name in names.items():
        r = _measure(mode)
        note = (
            f"CPU {r['cpu_s']:.1f} s; peak RSS {r['peak_gib']:.2f} GiB (data + imports before: "
            f"{r['before_gib']:.2f} GiB; target {TARGET_GIB:g} GiB); kept {r['nodes']:.0f} nodes, "
            f"{r['edges']:.0f} edges; reference = the {TARGET_S:g} s target"
        )
        rows.append(row(name, r["seconds"], TARGET_S, note))
    return rows


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1])))
