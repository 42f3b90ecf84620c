"""The batched patching engine: many patched variants of one input share a forward pass.

The base input (B examples) is repeated k times along the batch, so rows i*B .. (i+1)*B - 1 are
variant i. A hook on each patched site views its activation as [k, B, ...] and writes, in one
`torch.where`, variant i's patch: a bool mask over the activation (its unit) and a source (another
run's activation, an ablation value, or a per-variant tensor). Every hook goes through
`circuits.hooks.attach`, so none outlives the call. The output is cut back into k outputs, one per
variant, and the metric is applied to each.

Resume (TransformerLens models with token inputs): a patch inside block L cannot change anything
before it, so a variant starts from the base run's cached `blocks.L.hook_resid_pre` and runs only
blocks L.., and when the metric declares the positions it reads, the final LayerNorm and the
unembedding run only there. The logits handed to the metric keep their full shape: with one
position the computed column is broadcast along the position axis (no copy), with several the other
positions are zero. Before first use the resumed pass is checked against the base run's output; a
model on which it does not reproduce the full forward falls back to full passes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from circuits.capture import run_model
from circuits.hooks import attach, require_fired
from circuits.site import Site

from .spec import repeat_input, split_output

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
    ) -> None:
        self.model = model
        self.base = base
        self.batch = batch
        self.resid = dict(resid or {})
        seq = base.shape[1] if isinstance(base, Tensor) and base.ndim >= 2 else None
        self.seq = seq
        self.positions = (
            None
            if positions is None or seq is None
            else sorted({p % seq for p in positions if -seq <= p < seq})
        )
        self.resumable = False

    def enable_resume(self, base_output: Any, layer: int) -> bool:
        """Turn the resumed pass on if, from `layer`, it reproduces the base run's output."""
        if not self.resid or not can_resume(self.model, self.base):
            return False
        try:
            with torch.no_grad():
                (out,) = self._resume(1, layer, None)
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
        self.resumable = ok
        return ok

    def forward(
        self,
        k: int,
        patches: Mapping[str, Sequence[SitePatch]],
        *,
        start: int | None = None,
        stop: int | None = None,
        record: Sequence[str] = (),
    ) -> tuple[list[Any] | None, dict[str, Tensor]]:
        """Run k variants; returns their outputs (None when stopped early) and recordings.

        start: resume from this block (needs `enable_resume`); stop: end before this block and
        return no output. record: sites whose activation (before this call's patches) is kept,
        as [k, B, ...].
        """
        recorded: dict[str, Tensor] = {}
        batch = self.batch

        def make(name: str) -> Any:
            mine = list(patches.get(name, ()))
            keep = name in record

            def fn(act: Tensor, site: Site) -> Tensor | None:
                stacked = act.reshape(k, batch, *act.shape[1:])
                if keep:
                    recorded[name] = stacked.detach().clone()
                if not mine:
                    return None
                for p in mine:
                    src = p.source.to(act.device, act.dtype)
                    src = src if p.per_variant else src.unsqueeze(0)
                    stacked = torch.where(p.mask.to(act.device).unsqueeze(1), src, stacked)
                return stacked.reshape(act.shape)

            return fn

        names = list(dict.fromkeys([*patches, *record]))
        resume = start is not None and self.resumable
        with attach(self.model, {n: make(n) for n in names}) as fired, torch.no_grad():
            if start is not None and self.resumable:
                outputs = self._resume(k, start, stop)
            else:
                out = run_model(self.model, repeat_input(self.base, k))
                outputs = split_output(out, k, batch)
        require_fired(names, fired)
        return (None if resume and stop is not None else outputs), recorded

    def _resume(self, k: int, start: int, stop: int | None) -> list[Tensor]:
        model: Any = self.model
        x = repeat_input(self.resid[start], k)
        for block in model.blocks[start:stop]:
            x = block(x)
            x = x[0] if isinstance(x, tuple) else x
        if stop is not None:
            return []
        rows, seq = x.shape[0], x.shape[1]
        if self.positions is not None:
            x = x[:, self.positions]
        ln_final = getattr(model, "ln_final", None)
        if ln_final is not None:
            x = ln_final(x)
        logits = model.unembed(x)
        if self.positions is not None and len(self.positions) == 1:
            logits = logits.expand(rows, seq, logits.shape[-1])
        elif self.positions is not None:
            full = logits.new_zeros(rows, seq, logits.shape[-1])
            index = torch.tensor(self.positions, device=logits.device)
            logits = full.index_copy_(1, index, logits)
        return list(logits.split(self.batch))


def can_resume(model: nn.Module, inputs: Any) -> bool:
    """A TransformerLens model (blocks, unembed) run on a [batch, pos] tensor of token ids."""
    return (
        getattr(model, "cfg", None) is not None
        and isinstance(getattr(model, "blocks", None), nn.ModuleList)
        and isinstance(getattr(model, "unembed", None), nn.Module)
        and isinstance(inputs, Tensor)
        and inputs.ndim == 2
        and not inputs.is_floating_point()
    )


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
