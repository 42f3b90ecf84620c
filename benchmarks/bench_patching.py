"""Activation patching: the all-heads, all-positions head-output sweep against TransformerLens.

TransformerLens's `get_act_patch_attn_head_out_by_pos` runs one full forward pass (all logits) per
(layer, pos, head) patch. `circuits.patching.patch` stacks many patches along the batch of one
pass, resumes each from the cached residual stream before the patched block, runs positions before
the patched one not at all (their cached keys and values stand in), runs the patched block on the
patched position alone (a head's output at p changes nothing else in its block), runs the last
block's queries and MLP only at the position the metric (a logit difference at the last position)
reads, and computes logits only there.

Rows, all on one CPU thread and timed in CPU seconds of this process (this 2-core box is shared:
two threads under contention are far slower, and wall-clock times swing with the others' load):
- small: 4 layers, d_model 256, 8 heads, GPT-2's vocabulary (50257); batch 8 x 32 (1024 patches).
- the same model with a toy vocabulary (1000), where the unembedding costs little: there a forward
  pass is compute-bound, and stacking patches saves only TransformerLens's per-call overhead.
- GPT-2-small shape: 12 layers, d_model 768, 12 heads, d_mlp 3072, d_vocab 50257, n_ctx 1024;
  batch 8 x 128 (12 * 12 * 128 = 18432 patches).
- the same, ours against running the blocks from the patched one on, on every position (a whole-
  block resume, the floor without the position savings).

Every full sweep is extrapolated from timed subsets (the full ones take minutes to hours here).
TransformerLens's cost per patch is the same for every patch (one full pass), so it is timed on a
few patches and multiplied out, plus its clean run_with_cache. Ours costs (blocks from the patched
one on) per patch, linear in the layer, so a subset with as many patches in the first layer as in
the last has the mean cost of the full sweep; ours is run on it, the time inside its batched
forward passes is multiplied out per patch, and the rest of the call (the clean and corrupted
captures and the resume check, once per sweep) is added once. Both give the same values on
the patches they share (max |diff| in the note).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pandas as pd
import torch

import circuits as cc
from benchmarks.timing import row, threads
from circuits.hooks import variants as engine
from circuits.metrics import logit_diff
from circuits.patching import patch


def clock() -> float:
    """CPU seconds of this process: with one thread, the compute alone, whatever else runs on
    this shared box (wall-clock time here swings by a factor of two from run to run)."""
    return time.process_time()


def _model(n_layers: int, d_model: int, n_heads: int, d_mlp: int, d_vocab: int) -> Any:
    return cc.zoo.tiny_transformer(
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        d_head=d_model // n_heads,
        d_mlp=d_mlp,
        d_vocab=d_vocab,
        n_ctx=1024,
        seed=0,
    ).eval()


def _inputs(d_vocab: int, batch: int, seq: int) -> tuple[torch.Tensor, torch.Tensor, Any]:
    gen = torch.Generator().manual_seed(0)
    clean, corrupt = torch.randint(0, d_vocab, (2, batch, seq), generator=gen)
    correct, incorrect = torch.randint(0, d_vocab, (2, batch), generator=gen)
    return clean, corrupt, logit_diff(correct, incorrect, position=-1)


def _tl_sweep(model: Any, clean: Any, corrupt: Any, metric: Any, cells: pd.DataFrame) -> Any:
    """TransformerLens's function on the (layer, pos, head_index) rows of `cells`: (values,
    seconds for the clean run_with_cache, seconds per patch)."""
    import transformer_lens.patching as tl_patching

    with torch.no_grad():
        start = clock()
        _, cache = model.run_with_cache(clean)
        setup = clock() - start
        start = clock()
        values = tl_patching.get_act_patch_attn_head_out_by_pos(
            model, corrupt, cache, metric, index_axis_names=None, index_df=cells
        )
        per = (clock() - start) / len(cells)
    return values, setup, per


@contextmanager
def _timed_passes() -> Iterator[list[float]]:
    """Seconds spent in each of ours' batched forward passes (Runner.forward) within the block."""
    times: list[float] = []
    original = engine.Runner.forward

    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        start = clock()
        try:
            return original(self, *args, **kwargs)
        finally:
            times.append(clock() - start)

    engine.Runner.forward = timed  # type: ignore[method-assign]
    try:
        yield times
    finally:
        engine.Runner.forward = original  # type: ignore[method-assign]


def _cells(layers: Sequence[int], positions: Sequence[int], heads: Sequence[int]) -> pd.DataFrame:
    rows = [(ly, p, h) for ly in layers for p in positions for h in heads]
    return pd.DataFrame(rows, columns=["layer", "pos", "head_index"])


def _sweep(
    model: Any, seq: int, *, positions: Sequence[int], heads: Sequence[int], tl_heads: int
) -> tuple[dict[str, object], float]:
    """Ours and TransformerLens's full by-position head sweep, extrapolated from subsets: ours on
    `positions` x `heads` in the first and last layer, TransformerLens on the first `tl_heads`
    heads of those. Returns the row and our seconds per patch."""
    cfg = model.cfg
    clean, corrupt, metric = _inputs(cfg.d_vocab, 8, seq)
    n = cfg.n_layers * cfg.n_heads * seq
    layers = [0, cfg.n_layers - 1]
    sites = [f"blocks.{ly}.attn.hook_z" for ly in layers]
    with _timed_passes() as passes:
        start = clock()
        res = patch(
            model, clean, corrupt, metric, site=sites, unit={"pos": positions, "head": heads}
        )
        t_subset = clock() - start
    n_ours = len(layers) * len(positions) * len(heads)
    per_ours = sum(passes) / n_ours
    t_setup = t_subset - sum(passes)  # captures, resume check, bookkeeping: once per sweep

    cells = _cells(layers, positions, heads[:tl_heads])
    ref, tl_setup, per_tl = _tl_sweep(model, clean, corrupt, metric, cells)
    ours_vals = res.values[:, :, :tl_heads].flatten()
    diff = float((ours_vals - ref).abs().max())
    assert diff <= 1e-4, diff
    shape = f"{cfg.n_layers}L d{cfg.d_model} vocab {cfg.d_vocab}, 8x{seq}"
    return (
        row(
            f"head_out_by_pos sweep, {shape} ({n} patches, extrapolated)",
            t_setup + n * per_ours,
            tl_setup + n * per_tl,
            f"{type(model).__name__}, 1 thread, CPU s; timed in layers 0 and {cfg.n_layers - 1}: "
            "ours "
            f"{n_ours} patches, {per_ours * 1e3:.0f} ms/patch + {t_setup:.1f} s set-up; TL "
            f"{len(cells)} patches, {per_tl * 1e3:.0f} ms/patch + run_with_cache; "
            f"max |diff| {diff:.1e}",
        ),
        per_ours,
    )


def _small(d_vocab: int) -> dict[str, object]:
    model = _model(4, 256, 8, 1024, d_vocab)
    return _sweep(model, 32, positions=[0, 13, 31], heads=list(range(8)), tl_heads=2)[0]


def _large() -> list[dict[str, object]]:
    model = _model(12, 768, 12, 3072, 50257)
    sweep, per_ours = _sweep(model, 128, positions=[64], heads=[0, 6], tl_heads=1)
    floor = _floor(model, _inputs(50257, 8, 128)[1], [0, 11], k=2)  # ours: 2 heads per pass
    return [
        sweep,
        row(
            "same gpt2-small sweep, ours per patch vs whole blocks from the patched one on",
            per_ours,
            floor,
            f"floor: mean over layers 0 and 11 of running blocks L.. on the batch (2 patches "
            f"stacked, as ours ran), then the unembedding at the last position: {floor:.2f} "
            "s/patch; ratio = whole blocks/ours (above 1: the position savings)",
        ),
    ]


def _floor(model: Any, tokens: torch.Tensor, layers: Sequence[int], k: int) -> float:
    """Seconds per patch to run only the blocks from the patched one on, then the unembedding at
    the last position, for k patches stacked as ours stacks them, averaged over `layers`: the
    floor of a resume that recomputes whole blocks."""
    cache = cc.capture(model, tokens, sites=[f"blocks.{ly}.hook_resid_pre" for ly in layers])

    def rest(layer: int) -> None:
        with torch.no_grad():
            x = cache[f"blocks.{layer}.hook_resid_pre"].repeat(k, 1, 1)
            for block in model.blocks[layer:]:
                x = block(x)
                x = x[0] if isinstance(x, tuple) else x
            model.unembed(model.ln_final(x[:, -1:]))

    total = 0.0
    for layer in layers:
        start = clock()
        rest(layer)
        total += clock() - start
    return total / len(layers) / k


def run() -> list[dict[str, object]]:
    with threads(1):
        rows = [_small(50257), _small(1000), *_large()]
    load = os.getloadavg()[0]  # a shared box: say how busy it was
    for r in rows:
        r["note"] = f"{r['note']}; load avg {load:.1f} on {os.cpu_count()} cores"
    return rows


if __name__ == "__main__":
    with pd.option_context("display.max_colwidth", 200, "display.width", 250):
        print(pd.DataFrame(run()).to_string(index=False))
