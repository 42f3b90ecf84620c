"""Many patched variants of one input in one forward pass, and the unpatched base run they share.

The base input (B examples) is repeated k times along the batch, so rows i*B .. (i+1)*B - 1 are
variant i. A hook on each patched site views its activation as [k, B, ...] and writes, in one
`torch.where`, variant i's patch: a bool mask over the activation (its unit) and a source (another
run's activation, an ablation value, or a per-variant tensor). Every pass goes through
`circuits.hooks.run`. The output is cut back into k outputs, one per variant.

Resume (TransformerLens models with token inputs): a patch inside block L cannot change anything
before it, so a variant starts from the base run's cached `blocks.L.hook_resid_pre` and runs only
blocks L.., and when the metric declares the positions it reads, the final LayerNorm and the
unembedding run only there (`circuits.adapters.transformer_lens.resume`). In a causal model a patch
that first touches position p cannot change positions before p either: when the metric reads only
positions >= p, the blocks run on positions p.. alone, attending to the base run's cached keys and
values (hook_k, hook_v) at the earlier ones. A patch at that one position p, after the patched
block's attention has mixed positions (`position_local`), changes nothing else in that block: the
block runs on position p alone and the next one starts from it and the base run's stream after
the block. Before first use each resumed pass is checked against the base run's output; a model on
which it does not reproduce the full forward falls back to full passes (or to all positions).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from circuits.adapters.transformer_lens import (
    can_resume,
    hook_axes,
    hook_table,
    position_local,
    resume,
)
from circuits.checks import check_int
from circuits.errors import ConfigError
from circuits.hooks.run import run
from circuits.inputs import batch_size, repeat, split
from circuits.metrics import MetricFn, check_metric, metric_value
from circuits.site import Site, layer_of

log = logging.getLogger(__name__)

DEFAULT_MEMORY = 512 * 2**20


@dataclass(frozen=True)
class SitePatch:
    """Variant i takes `source` where `mask[i]` is True.

    mask: bool [k, *shape] (shape: the activation's without the batch axis, 1 on axes it spans).
    source: [B or 1, *rest] shared by every variant, or [k, B or 1, *rest] with `per_variant`.
    """

    mask: Tensor
    source: Tensor
    per_variant: bool = False


class Runner:
    """Runs k variants of the base input stacked along the batch, with patches and recordings."""

    def __init__(
        self,
        model: nn.Module,
        base: Any,
        *,
        batch: int,
        positions: tuple[int, ...] | None = None,
        resid: Mapping[int, Tensor] | None = None,
        past: Mapping[int, tuple[Tensor, Tensor]] | None = None,
        after: Mapping[int, Tensor] | None = None,
    ) -> None:
        self.model = model
        self.base = base
        self.batch = batch
        self.resid = dict(resid or {})
        self.past = dict(past or {})  # block -> its keys and values (hook_k, hook_v) on the base
        self.after = dict(after or {})  # block -> the base's stream after it (hook_resid_post)
        seq = base.shape[1] if isinstance(base, Tensor) and base.ndim >= 2 else None
        self.positions = (
            None
            if positions is None or seq is None
            else sorted({p % seq for p in positions if -seq <= p < seq})
        )
        self.resumable = False
        self.suffix = False  # whether resumed passes may skip the positions before a patch
        self.local = False  # whether a one-position patch may run its block on that position alone
        self.tail = False  # whether the last block may skip all but its keys and values before
        # the metric's positions (`resume`'s tail), when no patch is in it

    def enable_resume(self, base_output: Any, layer: int) -> bool:
        """Turn the resumed pass on if, from `layer`, it reproduces the base run's output; then the
        pass over a suffix of the positions likewise, from the first cached block."""
        if not self.resid or not can_resume(self.model, self.base):
            return False
        self.resumable = self._reproduces(base_output, layer, 0)
        if self.resumable and self.past and self.positions:
            cut = min(self.base.shape[1] // 2, self.positions[0])
            self.suffix = cut > 0 and self._reproduces(base_output, min(self.past), cut)
            self.local = (
                self.suffix
                and bool(self.after)
                and self._reproduces(base_output, max(self.after), cut, local=True)
            )
        if self.resumable and self.positions:
            self.tail = self._reproduces(base_output, min(self.resid), 0, tail=True)
        return self.resumable

    def _reproduces(
        self, base_output: Any, layer: int, first: int, local: bool = False, tail: bool = False
    ) -> bool:
        """Whether the pass resumed at `layer` over positions `first`.. (with `local`, block
        `layer` on position `first` alone; with `tail`, `resume`'s tail) gives the base output."""
        try:
            with torch.no_grad():
                (out,) = self._resume(1, layer, first, local, tail)()
        except Exception as err:  # a capability probe: any failure means "use full passes"
            log.info("resumed forward unavailable (%s); running full forward passes", err)
            return False
        expected = base_output if isinstance(base_output, Tensor) else None
        if expected is None or out.shape != expected.shape:
            return False
        cols = self.positions if self.positions is not None else slice(None)
        scale = float(expected[:, cols].abs().max()) + 1.0
        ok = torch.allclose(out[:, cols], expected[:, cols], rtol=0, atol=1e-4 * scale)
        if not ok:
            log.info("resumed forward differs from the full one; running full forward passes")
        return ok

    def _prefix(self, start: int, first: int, k: int) -> dict[int, tuple[Tensor, Tensor]] | None:
        """Each block's cached keys and values before position `first`, for k variants."""
        if not first:
            return None
        return {
            ly: (repeat(keys[:, :first], k), repeat(values[:, :first], k))
            for ly, (keys, values) in self.past.items()
            if ly >= start
        }

    def _resume(self, k: int, start: int, first: int, local: bool, tail: bool) -> Any:
        """The forward of k variants resumed at block `start` over positions `first`.. (with
        `local`, block `start` over position `first` alone; `tail`: see `resume`)."""
        end = first + 1 if local else None
        x = repeat(self.resid[start][:, first:end], k)
        after = repeat(self.after[start][:, first + 1 :], k) if local else None
        past = self._prefix(start, first, k)
        return lambda: resume(self.model, x, start, self.positions, self.batch, past, after, tail)

    def _firsts(self, k: int, patches: Mapping[str, Sequence[SitePatch]]) -> list[tuple[int, bool]]:
        """Per variant, the first position a patch touches, capped by the metric's first (0:
        a patch spans all positions, or its site has no position axis), and whether the patches
        touch that position alone at sites of one block where it stays local (`position_local`)."""
        cap = self.positions[0] if self.positions else 0
        firsts = torch.full((k,), cap)
        lasts = torch.full((k,), -1)
        local = self.local and len({layer_of(n) for n in patches}) == 1
        for name, mine in patches.items():
            local = local and position_local(name)
            for p in mine:
                axes = hook_axes(name, p.mask.ndim)
                if axes is None or "pos" not in axes or p.mask.shape[axes.index("pos")] == 1:
                    return [(0, False)] * k
                hit = p.mask.movedim(axes.index("pos"), 1).flatten(2).any(2).expand(k, -1).cpu()
                seen = hit.any(1)
                firsts = torch.minimum(firsts, torch.where(seen, hit.int().argmax(1), cap))
                final = hit.shape[1] - 1 - hit.flip(1).int().argmax(1)
                lasts = torch.maximum(lasts, torch.where(seen, final, -1))
        pairs = zip(firsts.tolist(), lasts.tolist(), strict=True)
        return [(first, local and first == last) for first, last in pairs]

    def start(self, names: Sequence[str]) -> int | None:
        """The block to resume from for a pass that touches `names` (None: a full pass)."""
        layers = [layer_of(n) for n in names]
        if not self.resumable or not layers or None in layers:
            return None
        return min(ly for ly in layers if ly is not None)

    def forward(
        self,
        k: int,
        patches: Mapping[str, Sequence[SitePatch]],
        *,
        start: int | None = None,
        stop_after: str | None = None,
        record: Sequence[str] = (),
    ) -> tuple[list[Any] | None, dict[str, Tensor]]:
        """Run k variants; returns their outputs (None when stopped early) and recordings.

        start: resume from this block (ignored unless `enable_resume` succeeded); stop_after: end
        the pass once that site has run. record: sites whose activation (before this call's
        patches) is kept, as [k, B, ...].
        """
        if start is not None and self.suffix and not record and stop_after is None:
            firsts = self._firsts(k, patches)
            if len(set(firsts)) > 1:  # one pass per first position: each skips what it can
                return self._by_first(k, patches, start, firsts), {}
            return self._pass(k, patches, start, None, (), *firsts[0])
        return self._pass(k, patches, start, stop_after, record, 0)

    def _by_first(
        self,
        k: int,
        patches: Mapping[str, Sequence[SitePatch]],
        start: int,
        firsts: list[tuple[int, bool]],
    ) -> list[Any]:
        """The outputs of k variants, run in groups that share their first patched position."""
        outputs: list[Any] = [None] * k
        for first in sorted(set(firsts)):
            rows = [i for i in range(k) if firsts[i] == first]
            mine = {name: [_pick(p, rows) for p in ps] for name, ps in patches.items()}
            outs, _ = self._pass(len(rows), mine, start, None, (), *first)
            for i, out in zip(rows, outs or [], strict=True):
                outputs[i] = out
        return outputs

    def _pass(
        self,
        k: int,
        patches: Mapping[str, Sequence[SitePatch]],
        start: int | None,
        stop_after: str | None,
        record: Sequence[str],
        first: int,
        local: bool = False,
    ) -> tuple[list[Any] | None, dict[str, Tensor]]:
        """One forward pass of k variants (`forward`), over positions `first`.. when resumed
        (with `local`, the patched block over position `first` alone)."""
        batch = self.batch

        def make(mine: Sequence[SitePatch]) -> Any:
            def fn(act: Tensor, site: Site) -> Tensor:
                stacked = act.reshape(k, batch, *act.shape[1:])
                pos = site.axes.index("pos") + 1 if first or local else 0
                for p in mine:
                    src = p.source.to(act.device, act.dtype)
                    src = src if p.per_variant else src.unsqueeze(0)
                    mask = p.mask.to(act.device).unsqueeze(1)
                    if pos:  # this pass holds positions first.. (or first alone) only
                        n = stacked.shape[pos]
                        src, mask = _window(src, pos, first, n), _window(mask, pos, first, n)
                    stacked = torch.where(mask, src, stacked)
                return stacked.reshape(act.shape)

            return fn

        forward = None
        if start is not None and self.resumable:
            last = f"blocks.{len(getattr(self.model, 'blocks', ())) - 1}."
            touched = [*patches, *record, *([stop_after] if stop_after else [])]
            tail = self.tail and not any(n.startswith(last) for n in touched)
            forward = self._resume(k, start, first, local, tail)
        ran = run(
            self.model,
            repeat(self.base, k),
            replace={name: make(mine) for name, mine in patches.items() if mine},
            record=record,
            stop_after=stop_after,
            forward=forward,
        )
        recorded = {n: t.reshape(k, batch, *t.shape[1:]) for n, t in ran.recorded.items()}
        if ran.output is None:
            return None, recorded
        outputs = ran.output if forward is not None else split(ran.output, k, batch)
        return outputs, recorded


def _pick(patch: SitePatch, rows: list[int]) -> SitePatch:
    """The patch of the variants `rows` only."""
    mask = patch.mask if patch.mask.shape[0] == 1 else patch.mask[rows]
    return SitePatch(
        mask, patch.source[rows] if patch.per_variant else patch.source, patch.per_variant
    )


def _window(t: Tensor, dim: int, first: int, n: int) -> Tensor:
    """Positions `first` .. `first + n - 1` of axis `dim` (an axis of size 1 broadcasts and
    stays)."""
    return t if t.shape[dim] == 1 else t.narrow(dim, first, n)


@dataclass(frozen=True)
class Budget:
    """How many variants share a forward pass, and whether to resume from a cached layer.

    max_batch: rows (variants x batch) per forward pass; None picks it from `memory` (bytes).
    fast: resume from the cached residual stream before the patched block, skip the positions a
    patch cannot reach, and compute logits only at the positions the metric declares
    (TransformerLens models; module docstring); False runs every variant through the whole model.
    progress: show a tqdm bar (None: only on a terminal).
    """

    max_batch: int | None = None
    memory: int = DEFAULT_MEMORY
    fast: bool = True
    progress: bool | None = None

    def __post_init__(self) -> None:
        check_int(self.max_batch, "max_batch", allow_none=True)
        if isinstance(self.memory, bool) or not isinstance(self.memory, int) or self.memory < 1:
            raise ConfigError(f"memory must be a positive number of bytes, got {self.memory!r}")


@dataclass
class BaseRun:
    """The unpatched run the variants start from: activations and sites, metric value, runner,
    and how many rows (variants x batch) one pass may hold."""

    acts: dict[str, Tensor]
    sites: dict[str, Site]
    value: float
    runner: Runner
    rows: int

    @property
    def batch(self) -> int:
        return self.runner.batch

    @property
    def per_pass(self) -> int:
        """Variants per forward pass."""
        return max(1, self.rows // self.batch)


def base_run(
    model: nn.Module,
    base: Any,
    metric: MetricFn,
    *,
    sites: Sequence[str],
    budget: Budget,
) -> BaseRun:
    """Run the base input once, keeping `sites` (and the residual stream before each block they
    live in, for resuming), the metric and the output; set up the runner and the chunk size."""
    positions = check_metric(metric)
    layers = [layer_of(n) for n in sites]
    blocks = sorted({ly for ly in layers if ly is not None})
    resume_ok = budget.fast and bool(blocks) and None not in layers and can_resume(model, base)
    resid = [f"blocks.{ly}.hook_resid_pre" for ly in blocks] if resume_ok else []
    kv = _kv_sites(model, min(blocks)) if resume_ok and positions else {}
    kv_names = [name for pair in kv.values() for name in pair]
    # the stream after each block a one-position patch may run alone in (`position_local`): the
    # next block's cached input where it is one of `resid`, else that block's hook_resid_post
    after = {
        ly: (f"blocks.{ly + 1}.hook_resid_pre" if ly + 1 in blocks
             else f"blocks.{ly}.hook_resid_post")
        for name, ly in zip(sites, layers, strict=True)
        if kv and ly is not None and position_local(name)
    }  # fmt: skip
    record = [*sites, *resid, *kv_names, *after.values()]
    ran = run(model, base, record=list(dict.fromkeys(record)))
    value = float(metric_value(metric, ran.output))
    batch = batch_size(base)
    runner = Runner(
        model,
        base,
        batch=batch,
        positions=positions,
        resid={ly: ran.recorded[f"blocks.{ly}.hook_resid_pre"] for ly in blocks}
        if resume_ok
        else None,
        past={ly: (ran.recorded[k], ran.recorded[v]) for ly, (k, v) in kv.items()},
        after={ly: ran.recorded[name] for ly, name in after.items()},
    )
    if resume_ok:
        runner.enable_resume(ran.output, max(blocks))
    rows = rows_per_pass(
        model,
        base,
        batch=batch,
        output_row=row_numel(ran.output, batch),
        site_row=max((row_numel(ran.recorded[n], batch) for n in sites), default=1),
        positions=runner.positions,
        resume=runner.resumable,
        max_batch=budget.max_batch,
        memory=budget.memory,
    )
    sites_seen = {n: ran.sites[n] for n in ran.recorded}
    return BaseRun(ran.recorded, sites_seen, value, runner, rows)


def _kv_sites(model: nn.Module, start: int) -> dict[int, tuple[str, str]]:
    """hook_k and hook_v of every block from `start` on, where the model has them all."""
    table = hook_table(model)
    n_layers = len(getattr(model, "blocks", ()))
    names = {
        ly: (f"blocks.{ly}.attn.hook_k", f"blocks.{ly}.attn.hook_v")
        for ly in range(start, n_layers)
    }
    return names if all(n in table for pair in names.values() for n in pair) else {}


def rows_per_pass(
    model: nn.Module,
    inputs: Any,
    *,
    batch: int,
    output_row: int,
    site_row: int,
    positions: Sequence[int] | None,
    resume: bool,
    max_batch: int | None,
    memory: int,
) -> int:
    """Rows (k * batch) one forward pass may hold: `max_batch`, or what fits in `memory` bytes.

    A rough peak-memory estimate per row: for a TransformerLens model, the residual stream and its
    temporaries, the MLP hidden layer, attention scores and the logits actually computed; for
    any other model, a few copies of its output and of the widest patched activation.
    """
    if max_batch is not None:
        return max(batch, max_batch)
    param = next(model.parameters(), None)
    item = param.element_size() if param is not None else 4
    cfg = getattr(model, "cfg", None)
    if cfg is not None and isinstance(inputs, Tensor) and inputs.ndim == 2:
        seq = inputs.shape[1]
        d_model = int(getattr(cfg, "d_model", 0) or 0)
        d_mlp = int(getattr(cfg, "d_mlp", 0) or 0)
        n_heads = int(getattr(cfg, "n_heads", 0) or 0)
        vocab = output_row // max(seq, 1)
        if resume and positions is not None:
            logits = (len(positions) + (seq if len(positions) > 1 else 0)) * vocab
        else:
            logits = 2 * seq * vocab
        per_row = seq * (8 * d_model + 2 * d_mlp + 3 * n_heads * seq) + logits + 2 * site_row
    else:
        per_row = 4 * (output_row + site_row)
    return max(batch, memory // max(item * per_row, 1))


def row_numel(t: Any, batch: int) -> int:
    """Elements per example of a tensor (or the largest tensor in a tuple / dict)."""
    if isinstance(t, Tensor):
        return math.prod(t.shape[1:]) if t.ndim else 1
    if isinstance(t, tuple | list):
        return max((row_numel(x, batch) for x in t), default=1)
    if isinstance(t, dict):
        return max((row_numel(x, batch) for x in t.values()), default=1)
    return 1
