"""Path patching: the effect of a sender on the metric through one receiver only.

The method (direct path patching, as in the IOI paper, Wang et al. 2022), in two batched passes of
the base input (the corrupted run when denoising, the clean run when noising):

1. Sender pass, one variant per sender: the sender's unit takes its value from the source run;
   every other component that writes to the residual stream (for TransformerLens models: each
   head's `hook_z` and each `hook_mlp_out`, from the sender's layer on) is frozen at its base
   value, the sender's own head or MLP excepted. Each receiver's activation is recorded. With the
   rest frozen, a receiver's input is the base residual stream plus the sender's change alone,
   carried by the residual stream: the receiver's q / k / v are what its own pre-LayerNorm copy of
   "base + sender delta" gives, which is what TransformerLens's `get_act_patch_direct_path`
   computes through `use_split_qkv_input`, but without that flag (a boot_native TransformerBridge
   cannot split q/k/v inputs) and for any receiver site.
2. Receiver pass, one variant per (sender, receiver): only the receiver's unit takes its recorded
   value; everything downstream runs freely. The metric there is the path's value.

The receiver `"logits"` (`OUTPUT`) reads the metric straight off the sender pass: the sender's
direct effect through the unembedding. Other models have no residual-stream writers to freeze by
default; pass `freeze=[...]` to name the sites to hold at their base value.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Num
from torch import Tensor, nn

from circuits.adapters.transformer_lens import check_editable, hook_table, is_transformer_lens
from circuits.capture import capture
from circuits.errors import ConfigError
from circuits.hooks.variants import BaseRun, Budget, SitePatch, base_run
from circuits.inputs import check_pair
from circuits.loops import chunks, progress_bar
from circuits.metrics import MetricFn, check_metric, metric_name, metric_value
from circuits.options import Direction, check_choice, configure, runs
from circuits.site import Site, layer_of, resolve
from circuits.units import index_mask

from .nodes import OUTPUT, Node, as_node
from .result import PatchingResult

_ATTN = re.compile(r"blocks\.(\d+)\.(attn\.|ln1\.|hook_(q|k|v)_input|hook_attn_(in|out))")
_MLP = re.compile(r"blocks\.(\d+)\.(mlp\.|ln2\.|hook_mlp_(in|out))")


def path_patch(
    model: nn.Module,
    clean: Num[Tensor, "batch ..."] | Any,
    corrupt: Num[Tensor, "batch ..."] | Any,
    metric: MetricFn,
    *,
    senders: Sequence[Any],
    receivers: Sequence[Any],
    direction: Direction = "denoise",
    freeze: Sequence[str] | None = None,
    budget: Budget | None = None,
    **budget_options: Any,
) -> PatchingResult:
    """The metric with each sender -> receiver path patched: a [sender, receiver] result.

    senders, receivers: Nodes (`node("blocks.0.attn.hook_z", head=3)`, `heads(model, layers=1,
        kind="k")`), site names (the whole site) or (site, {axis: index}); a receiver may be
        "logits", the sender's direct effect on the output.
    direction: "denoise" (run corrupt, senders from clean, as TransformerLens's direct path
        patching) or "noise" (run clean, senders from corrupt, as in the IOI paper).
    freeze: the sites held at their base value in the sender pass; None: every head (hook_z) and
        MLP (hook_mlp_out) of a TransformerLens model, nothing on other models.
    budget (or its fields as keywords: max_batch, memory, fast, progress): as for `patch`.

    Shapes: clean and corrupt are inputs of the same structure and shapes (tokens [batch, pos]).
    The result's `values` are [sender, receiver], labelled by the nodes (`res.coords["sender"]`,
    `res.coords["receiver"]`: "blocks.0.attn.hook_z[head=3]", "logits").

    For example:

        res = cc.path_patch(model, clean, corrupt, metric,
                            senders=cc.heads(model, layers=0),
                            receivers=cc.heads(model, layers=1, kind="k"))
        res.values.shape                        # [n_heads, n_heads]: layer-0 head -> layer-1 key
        direct = cc.path_patch(model, clean, corrupt, metric,
                               senders=cc.heads(model, layers=1), receivers=["logits"])

    Raises:
        ConfigError: senders or receivers is empty, lists a node twice or holds something that
            is not a node, a site name or (site, {axis: index}); `direction` is not "denoise"
            or "noise"; `freeze` is a string; `metric` is not callable; a budget option is
            unknown or invalid.
        ShapeMismatchError: clean and corrupt differ in structure or shape.
        SiteNotFoundError: a sender's, receiver's or frozen site is not one of the model's.
        ModelError: a site is one a TransformerBridge does not read edits back from
            (hook_attn_scores), or the model is not a torch module in eval mode.
        InputError: a node's index is out of range or names an axis its site does not have,
            or the forward pass fails.
        MetricError: the metric does not return a finite scalar float tensor.
    """
    budget = configure(Budget, budget, budget_options)
    check_metric(metric)
    check_choice(direction, Direction, "direction")
    check_pair(clean, corrupt)
    send = [as_node(s) for s in _listed(senders, "senders")]
    recv = [as_node(r, receiver=True) for r in _listed(receivers, "receivers")]
    for group, what in ((send, "senders"), (recv, "receivers")):
        if len({n.label for n in group}) != len(group):
            raise ConfigError(f"{what} lists a node twice: {[n.label for n in group]}")
    send_sites = list(dict.fromkeys(n.site for n in send))
    recv_sites = list(dict.fromkeys(n.site for n in recv if n.site != OUTPUT))
    to_output = any(n.site == OUTPUT for n in recv)
    frozen = _freeze_sites(model, freeze, send_sites, recv_sites, to_output)
    every = list(dict.fromkeys([*send_sites, *recv_sites, *frozen]))
    resolve(model, every)
    check_editable(model, every)

    base, source = runs(direction, clean, corrupt)
    src = capture(model, source, sites=send_sites, metric=metric)
    run = base_run(model, base, metric, sites=every, budget=budget)
    k = run.per_pass
    values = torch.full((len(send), len(recv)), torch.nan)
    n_pairs = len(send) * (len(recv) + 1) - len(send) * int(to_output)
    with progress_bar(n_pairs, "path patching", budget.progress, unit="patch") as bar:
        recorded = _sender_pass(run, send, recv, frozen, src, metric, values, k, bar)
        _receiver_pass(run, send, recv, recorded, metric, values, k, bar)

    clean_value, corrupt_value = runs(direction, run.value, src.metric)
    return PatchingResult(
        values=values,
        axes=("sender", "receiver"),
        coords={"sender": tuple(n.label for n in send), "receiver": tuple(n.label for n in recv)},
        baseline=run.value,
        clean_value=clean_value,
        corrupt_value=corrupt_value,
        method=f"path/{direction}",
        metric=metric_name(metric),
    )


def _sender_pass(
    run: BaseRun,
    send: list[Node],
    recv: list[Node],
    frozen: list[str],
    src: Any,
    metric: MetricFn,
    values: Tensor,
    k: int,
    bar: Any,
) -> dict[str, Tensor]:
    """Pass 1: each sender patched, the rest frozen; returns receiver sites as [sender, B, ...]."""
    recv_sites = list(dict.fromkeys(n.site for n in recv if n.site != OUTPUT))
    out_cols = [j for j, n in enumerate(recv) if n.site == OUTPUT]
    stop = None if out_cols else 1 + max(layer_of(s) or 0 for s in recv_sites)
    kept: dict[str, list[Tensor]] = {s: [] for s in recv_sites}
    for part in chunks(len(send), k):
        group = [send[i] for i in part]
        layers = [layer_of(n.site) for n in group]
        lo = None if None in layers else min(ly for ly in layers if ly is not None)
        held = [f for f in frozen if not _before(layer_of(f), lo)]  # earlier: nothing to hold
        start = run.runner.start([*(n.site for n in group), *recv_sites, *held])
        stop_after = None
        if start is not None and stop is not None:  # a pass that stops after the receivers
            held = [f for f in held if (layer_of(f) or 0) < stop]
            stop_after = f"blocks.{stop - 1}.hook_resid_post"
        patches: dict[str, list[SitePatch]] = {}
        for site in held:  # freeze first, so a sender at a frozen site overrides it
            info = run.sites[site]
            patches[site] = [SitePatch(_freeze_mask(info, group), run.acts[site])]
        for site in dict.fromkeys(n.site for n in group):
            info = run.sites[site]
            mask = _stack([_mask_if(info, n, n.site == site) for n in group])
            patches.setdefault(site, []).append(SitePatch(mask, src[site]))
        outs, rec = run.runner.forward(
            len(part), patches, start=start, stop_after=stop_after, record=recv_sites
        )
        for site in recv_sites:
            kept[site].append(rec[site])
        if out_cols and outs is not None:
            for i, out in zip(part, outs, strict=True):
                values[i, out_cols] = metric_value(metric, out).detach().float().cpu()
        bar.update(len(part) * max(1, len(out_cols)))
    return {site: torch.cat(parts) for site, parts in kept.items()}


def _receiver_pass(
    run: BaseRun,
    send: list[Node],
    recv: list[Node],
    recorded: dict[str, Tensor],
    metric: MetricFn,
    values: Tensor,
    k: int,
    bar: Any,
) -> None:
    """Pass 2: a receiver takes its pass-1 value for one sender; the metric is the path's."""
    for site, acts in recorded.items():
        info = run.sites[site]
        pairs = [(i, j) for j, n in enumerate(recv) if n.site == site for i in range(len(send))]
        for part in chunks(len(pairs), k):
            chosen = [pairs[p] for p in part]
            mask = _stack([index_mask(info, recv[j].index) for _, j in chosen])
            source = acts[[i for i, _ in chosen]]
            outs, _ = run.runner.forward(
                len(part),
                {site: [SitePatch(mask, source, per_variant=True)]},
                start=run.runner.start([site]),
            )
            assert outs is not None  # a pass without `stop` returns outputs
            for (i, j), out in zip(chosen, outs, strict=True):
                values[i, j] = metric_value(metric, out).detach().float().cpu()
            bar.update(len(part))


def _freeze_sites(
    model: nn.Module,
    freeze: Sequence[str] | None,
    send_sites: list[str],
    recv_sites: list[str],
    to_output: bool,
) -> list[str]:
    """The sites held at their base value: given, or every head and MLP output of a TL model."""
    if freeze is not None:
        if isinstance(freeze, str):
            raise ConfigError("freeze takes a list of site names")
        return list(dict.fromkeys(freeze))
    if not is_transformer_lens(model):
        return []
    hooks = hook_table(model)
    cfg: Any = model.cfg
    n_layers = int(cfg.n_layers)
    lows = [layer_of(s) for s in send_sites]
    lo = 0 if None in lows else min(ly for ly in lows if ly is not None)
    ends = [layer_of(s) for s in recv_sites]
    hi = n_layers if to_output or None in ends else 1 + max(e for e in ends if e is not None)
    names = []
    for layer in range(lo, min(hi, n_layers)):
        for name in (f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.hook_mlp_out"):
            if name in hooks and not (name.endswith("mlp_out") and cfg.attn_only):
                names.append(name)
    return names


def _component(name: str) -> tuple[int, str] | None:
    """(layer, "attn" or "mlp") for a site inside a block's attention or MLP, else None."""
    for kind, pattern in (("attn", _ATTN), ("mlp", _MLP)):
        found = pattern.match(name)
        if found:
            return int(found.group(1)), kind
    return None


def _freeze_mask(site: Site, group: list[Node]) -> Tensor:
    """[k, *shape]: True where variant i holds the site at its base value. A sender's own
    component is left free: its head alone (when the sender names one) or all of it."""
    rest = site.shape[1:]
    head = site.axes.index("head") - 1 if "head" in site.axes else None
    shape = [len(group)] + [rest[d] if d == head else 1 for d in range(len(rest))]
    mask = torch.ones(shape, dtype=torch.bool)
    mine = _component(site.name)
    for v, sender in enumerate(group):
        if mine is None or _component(sender.site) != mine:
            continue
        index = dict(sender.index)
        if head is not None and "head" in index:
            sel: list[Any] = [v] + [slice(None)] * len(rest)
            sel[1 + head] = index["head"] % rest[head]
            mask[tuple(sel)] = False
        else:
            mask[v] = False
    return mask


def _mask_if(site: Site, sender: Node, here: bool) -> Tensor:
    mask = index_mask(site, sender.index)
    return mask if here else torch.zeros_like(mask)


def _before(layer: int | None, lo: int | None) -> bool:
    return layer is not None and lo is not None and layer < lo


def _stack(masks: list[Tensor]) -> Tensor:
    """Concatenate [1, ...] masks that may span different axes (broadcast to a common shape)."""
    shape = torch.broadcast_shapes(*(m.shape for m in masks))
    return torch.cat([m.expand(shape) for m in masks])


def _listed(items: Sequence[Any], what: str) -> list[Any]:
    if isinstance(items, str | Node) or (
        isinstance(items, tuple) and len(items) == 2 and isinstance(items[1], dict)
    ):
        items = [items]
    listed = list(items)
    if not listed:
        raise ConfigError(f"{what} is empty; name at least one node")
    return listed
