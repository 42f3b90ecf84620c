"""`feature_graph`: an attribution graph over dictionary latents, with error nodes.

Nodes: the input (a token per position, or a pixel / spatial input row for a conv net), every
latent active on the prompt (per position, or per (h, w)), an error node per dictionary and
position (what the dictionary misses there), and the outputs (the target logits, or the metric).
Edges: A[t, s] from `trace.adjacency`, the effect of node s on target t's pre-activation (an
output's value) along paths through no other node:

- "direct" (circuit-tracer's local replacement model): attention patterns and norm scales held
  at their clean values (on TransformerLens models; for other models the sites named in
  `freeze`), so everything is linear in the nodes and each edge is exactly the change of the
  target when the source is switched off. Piecewise-linear ops (ReLU, max pooling) are
  linearised at the clean run by the gradient itself.
- "attribution_patching" / "ig" (Marks et al. 2024, sparse feature circuits): the real model,
  each node's change between the clean run and the baseline (`corrupt`, or zero) times the
  gradient at the clean run, or integrated along the straight path (complete: a target's
  incoming edges add up to its change between the two runs).

Outputs are circuit-tracer's: each target logit minus the mean logit, at the last position,
weighted by its probability; by default the most likely tokens up to 95% of the probability
(at most `max_logits`). With `metric=` (attribution patching and IG) one output node, the metric.

A node's ``score`` is its edge into the outputs (their probability-weighted sum); its
``influence`` (set by pruning) counts every path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from circuits.adapters.transformer_lens import is_transformer_lens
from circuits.attribution.direct import frozen_sites, python_norms
from circuits.checks import check_int, check_model
from circuits.dictionaries import Dictionary
from circuits.errors import ConfigError, InputError
from circuits.graph import build_graph_from_matrix
from circuits.graph.prune import output_weights
from circuits.graph.scores import score_arrays
from circuits.hooks import run
from circuits.ids import block_of
from circuits.inputs import batch_size, describe
from circuits.metrics import metric_value
from circuits.options import check_choice, configure

from .faithfulness import feature_faithfulness
from .nodes import node_rows, sum_positions
from .trace import (
    adjacency,
    centred_logits,
    check_dictionaries,
    last_logits,
    path_points,
    sites_of,
    trace,
)

log = logging.getLogger(__name__)

Method = Literal["direct", "attribution_patching", "ig"]
Positions = Literal["each", "sum"]


@dataclass(frozen=True)
class FeatureGraphOptions:
    """`feature_graph`'s settings (module docstring); `feature_graph` takes them as keywords.

    method: "direct", "attribution_patching" or "ig". target: the output token(s) (class
    index(es) for a classifier); None: the most likely, covering `logit_prob` of the
    probability, at most `max_logits`. node_threshold / edge_threshold: influence pruning
    (circuit-tracer's node and edge shares, in (0, 1]); node_threshold None keeps every node.
    steps: IG's interpolation steps. batch: targets per backward pass. positions: "each" (a
    node per position) or "sum" (a node per latent: positions summed, for conv feature maps).
    input_site: the site whose rows are the input nodes (default: a TransformerLens model's
    blocks.0.hook_resid_pre, else the first module's input). freeze: the sites "direct" holds
    at their clean values (default: attention q, k and norm scales on TransformerLens models,
    none elsewhere). labels: a label per input row (token strings). faithfulness: measure the
    pruned graph's faithfulness by intervention. progress: a progress bar (None: automatic).
    """

    method: Method = "direct"
    target: int | Sequence[int] | None = None
    node_threshold: float | None = 0.8
    edge_threshold: float = 0.98
    max_logits: int = 10
    logit_prob: float = 0.95
    steps: int = 64
    batch: int = 64
    positions: Positions = "each"
    input_site: str | None = None
    freeze: Sequence[str] | None = None
    labels: Sequence[str] | None = None
    faithfulness: bool = True
    progress: bool | None = None

    def __post_init__(self) -> None:
        check_choice(self.method, Method, "method")
        check_choice(self.positions, Positions, "positions")
        for name in ("node_threshold", "edge_threshold", "logit_prob"):
            value = getattr(self, name)
            if value is None and name == "node_threshold":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
                raise ConfigError(f"{name} must be a share in (0, 1], got {value!r}")
        for name in ("max_logits", "steps", "batch"):
            check_int(getattr(self, name), name)
        for name in ("freeze", "labels"):
            value = getattr(self, name)
            if isinstance(value, str) or not (value is None or isinstance(value, Sequence)):
                raise ConfigError(f"{name} must be a list of strings, got {value!r}")


def feature_graph(
    model: nn.Module,
    inputs: Any,
    dictionaries: Mapping[str, Dictionary] | Sequence[Dictionary],
    *,
    corrupt: Any = None,
    metric: Callable[[Any], Tensor] | None = None,
    options: FeatureGraphOptions | None = None,
    **keywords: Any,
) -> Any:
    """The attribution graph of one input over dictionary latents (module docstring).

    dictionaries: {site: Dictionary} (the site the dictionary reads) or a list of them.
    corrupt: the baseline input of "attribution_patching" / "ig" (default: every node zero).
    metric: a scalar function of the model output, the one output node of those two methods.
    options, keywords: a `FeatureGraphOptions` or its fields.

    Returns a networkx DiGraph in the project's schema (kinds input, feature, error, output)
    with ``g.graph`` holding replacement_score, completeness_score (of the graph before
    pruning) and faithfulness (of the pruned graph, measured).

    For example:

        model = cc.zoo.lookup_transformer()
        tcs = {t.config.site: t for t in (cc.zoo.lookup_transcoder(0), cc.zoo.lookup_transcoder(1))}
        g = cc.feature_graph(model, cc.zoo.lookup_batch(1).tokens, tcs)
        g.graph["completeness_score"], g.graph["faithfulness"]

    Raises:
        ConfigError: an option is out of range, or a dictionary is keyed by a site it does not
            read, or two write the same site, or `metric` is given with "direct".
        InputError: `inputs` is not a single example, or a target is outside the output.
        SiteNotFoundError: a dictionary's site is not a site of the model.
        ShapeMismatchError: a dictionary's width does not match its site.
    """
    opts = configure(FeatureGraphOptions, options, keywords, what="feature_graph")
    check_model(model)
    ds = check_dictionaries(dictionaries)
    for name, batch in (("inputs", inputs), ("corrupt", corrupt)):
        if batch is not None and batch_size(batch) != 1:
            raise InputError(
                f"{name} must hold one example (batch size 1), got {describe(batch)}; a feature "
                "graph explains one prompt: pass inputs[:1]"
            )
    if opts.method == "direct" and (metric is not None or corrupt is not None):
        raise ConfigError(
            'metric= and corrupt= need method="attribution_patching" or "ig"; "direct" explains '
            "the logits of one run, each node against zero"
        )
    lens = is_transformer_lens(model)
    input_site = opts.input_site or _input_site(model, inputs, lens)
    freeze = None
    if opts.method == "direct":
        freeze = list(opts.freeze) if opts.freeze is not None else _frozen(model, ds, lens)
    with python_norms(model):
        traced = trace(model, inputs, ds, input_site=input_site, freeze=freeze, corrupt=corrupt)
        labels = opts.labels or _token_labels(model, traced.tokens)
        if labels is not None and len(labels) != traced.clean.input.shape[0]:
            raise ConfigError(
                f"labels must name each of the {traced.clean.input.shape[0]} input rows, got "
                f"{len(labels)}"
            )
        outputs, out_rows = _outputs(traced.output, opts, metric)
        points = path_points(opts.method, opts.steps)
        a = adjacency(model, inputs, traced, outputs, points=points, batch=opts.batch,
                      progress=opts.progress)  # fmt: skip
    for row in out_rows:
        if "token" in row:
            row["label"] = _decode(model, row["token"])
    sources, targets = node_rows(traced, out_rows, labels)
    if opts.positions == "sum":
        a, sources, targets = sum_positions(a, sources, targets)
    meta = {"model": _describe(model), "metric": _metric_name(out_rows),
            "ablation": "zero" if corrupt is None else "patch",
            "n_layers": 1 + max(sp.layer for sp in traced.spliced)}  # fmt: skip
    g = _graph(a, sources, targets, opts, meta)
    if opts.faithfulness and opts.node_threshold is not None:
        g.graph["faithfulness"] = feature_faithfulness(model, g, inputs, ds, metric=metric)
    return g


def _token_labels(model: nn.Module, tokens: Tensor | None) -> list[str] | None:
    """Each input token as text, where the model has a tokenizer (else None: ids are labels)."""
    if tokens is None or getattr(model, "tokenizer", None) is None:
        return None
    return [_decode(model, int(t)) for t in tokens]


def _decode(model: nn.Module, token: int) -> str:
    tokenizer: Any = getattr(model, "tokenizer", None)
    return str(token) if tokenizer is None else str(tokenizer.decode([token]))


def _input_site(model: nn.Module, inputs: Any, lens: bool) -> str:
    """blocks.0.hook_resid_pre on a TransformerLens model; else the input of the first module
    that runs (found by running the model: registration order need not be run order)."""
    if lens:
        return "blocks.0.hook_resid_pre"
    names = [f"{n}:input" for n, m in model.named_modules() if n and not any(m.children())]
    fired: list[str] = []
    run(model, inputs, replace=dict.fromkeys(names, lambda act, site: fired.append(site.name)),
        calls="any", tensors_only=False)  # fmt: skip
    if not fired:
        raise ConfigError("cannot tell the model's input site; pass input_site='module:input'")
    return fired[0]


def _frozen(model: nn.Module, ds: list[Dictionary], lens: bool) -> list[str]:
    """What "direct" holds by default: a TransformerLens model's attention q, k, norm scales and
    MLP activations (`frozen_sites`), less any site a dictionary reads or writes. An MLP that no
    transcoder replaces is then a constant, outside the graph: said in a warning."""
    if not lens:
        return []
    used = {site for d in ds for site in sites_of(d)}
    held = [name for name in frozen_sites(model) if name not in used]
    replaced = {block_of(w) for _, w in map(sites_of, ds) if w.endswith("hook_mlp_out")}
    constant = sorted({block_of(n) for n in held if n.endswith("mlp.hook_post")} - replaced)
    if constant:
        log.warning(
            "the MLPs of layers %s are held at their clean outputs (no transcoder replaces "
            "them): what they add is a constant, in no node of the graph; pass their "
            "transcoders for a complete graph",
            constant,
        )
    return held


def _outputs(
    output: Any, opts: FeatureGraphOptions, metric: Callable[[Any], Tensor] | None
) -> tuple[Callable[[Any], Tensor], list[dict[str, Any]]]:
    """The outputs function and a row per output (token, prob, value at the clean run)."""
    if metric is not None:
        value = float(metric_value(metric, output).detach())
        return (lambda out: metric_value(metric, out).reshape(1)), [
            {"metric": True, "label": "metric", "value": value, "prob": 1.0}
        ]
    probs = torch.softmax(last_logits(output).detach().double(), -1)
    tokens = _targets(opts, probs)
    centred = centred_logits(output).detach()
    rows = [{"token": t, "label": str(t), "value": float(centred[t]), "prob": float(probs[t])}
            for t in tokens]  # fmt: skip
    return (lambda out: centred_logits(out)[tokens]), rows


def _targets(opts: FeatureGraphOptions, probs: Tensor) -> list[int]:
    n = probs.shape[0]
    if opts.target is None:
        order = torch.argsort(probs, descending=True)
        cumulative = probs[order].cumsum(0)
        count = int((cumulative < opts.logit_prob).sum()) + 1
        return order[: min(count, opts.max_logits)].tolist()
    tokens = [opts.target] if isinstance(opts.target, int) else list(opts.target)
    bad = [t for t in tokens if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < n]
    if bad or not tokens:
        raise InputError(
            f"target must be output indices in [0, {n}) (tokens of the vocabulary, or classes), "
            f"got {opts.target!r}"
        )
    return tokens


def _graph(
    a: Tensor, sources: list[dict[str, Any]], targets: list[dict[str, Any]],
    opts: FeatureGraphOptions, meta: dict[str, Any],
) -> Any:  # fmt: skip
    """Node scores, the scores of the whole graph, then the (pruned) networkx graph."""
    m = a.detach().double().cpu().numpy()
    is_out = np.asarray([r["kind"] == "output" for r in targets])
    probs = np.asarray([r.get("prob", 1.0) for r in targets])[is_out]
    score = (probs / probs.sum()) @ m[is_out]
    sources = [{**r, "score": float(s)} for r, s in zip(sources, score, strict=True)]
    targets = [{**r, "score": float("nan")} if r["kind"] == "output" else r for r in targets]
    meta.update(_whole_graph_scores(m, sources, targets))
    prune = {} if opts.node_threshold is None else {
        "influence": opts.node_threshold, "edge_influence": opts.edge_threshold}  # fmt: skip
    g = build_graph_from_matrix(m, sources=sources, targets=targets, meta=meta,
                                method=f"feature-{opts.method}", **prune)  # fmt: skip
    # as circuit-tracer does, pruning never drops an input token or a target output
    for row in sources + targets:
        if row["kind"] in ("input", "output") and row["key"] not in g:
            g.add_node(row["key"], **{k: v for k, v in row.items() if k != "key"})
    return g


def _whole_graph_scores(
    m: np.ndarray, sources: list[dict[str, Any]], targets: list[dict[str, Any]]
) -> dict[str, float]:
    """Replacement and completeness scores of the unpruned graph (circuit-tracer computes them
    before pruning). Features lead both lists in the same order, so they share indices."""
    n_s = len(sources)
    n_f = sum(r["kind"] != "output" for r in targets)
    i, j = np.nonzero(m)
    dst = np.where(i < n_f, i, n_s + i - n_f)
    keep = dst != j
    kinds = [r["kind"] for r in sources] + [r["kind"] for r in targets[n_f:]]
    probs = [r.get("prob", float("nan")) for r in sources] + [r["prob"] for r in targets[n_f:]]
    out_w = output_weights([str(k) for k in range(len(kinds))], kinds, None, probs)
    return score_arrays(j[keep], dst[keep], m[i, j][keep], kinds, out_w)


def _describe(model: nn.Module) -> str:
    cfg = getattr(model, "cfg", None)
    if cfg is not None and hasattr(cfg, "n_layers"):
        return f"{type(model).__name__} ({cfg.n_layers} layers, d_model {cfg.d_model})"
    return type(model).__name__


def _metric_name(rows: list[dict[str, Any]]) -> str:
    if rows and rows[0].get("metric"):
        return "metric"
    return "logit - mean logit of " + ", ".join(str(r["token"]) for r in rows)
