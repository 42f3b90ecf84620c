"""Edge ablation as a change to a recorded run: only what the changed edges reach is recomputed.

Edge patching cuts one edge of the whole model; ACDC cuts one more edge of its current circuit.
Either way the run differs from a run already recorded (`State`: every receiver's input, every
head's queries, keys, values and z, every sender's output, the logits) in a few edges. Writing
kv / kb for the variant's and the recorded run's keep masks, out_s for a sender's recorded output,
abl_s for its ablated value and d_s for the change of its output in the variant, a receiver's
input moves by

    dx(r) = sum_s kv[s, r] * d_s + (kv[s, r] - kb[s, r]) * (out_s - abl_s)

so a receiver none of whose kept senders moved, and none of whose edges changed, keeps its
recorded input, and a head or MLP with unmoved inputs keeps its recorded output; one whose
output no variant reads (every edge out of it cut) is not run either, except in a recorded run.
The rest is recomputed per head (queries, keys and values of the moved heads only) and per MLP;
on the last layer, with the metric's positions known, the queries, MLP and logits run only there
(a causal model's keys and values still run at every position). Many variants run stacked,
[k, B, ...].

This is a second implementation of the model's block (norms, per-head causal attention, the MLP
through its own module), so `ResidualDelta.build` checks that its own clean run reproduces the
model's (each layer's hook_z and hook_mlp_out, the last residual stream) and returns None where it
does not, or where the architecture is one it does not cover (rotary or other position-dependent
attention, clipped or normalised queries and keys): callers then use `ResidualAblation.run`, the
hook-based pass.

Rounding: both compute a receiver's input as a difference of sums of large streams. Where most of
a receiver's senders are cut and ablated to zero, that difference is small and its norm scales
its rounding up; in float32 the two then differ by up to 2e-4 in KL divergence on random masks
(patch and mean ablation: 1e-7, as the hook pass; float64: 1e-13).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import einops
import numpy as np
import torch
from torch import Tensor

from circuits.adapters.transformer_lens import can_resume, place_logits
from circuits.modelgraph.residual import norm_forward, norm_params
from circuits.modelgraph.residual_ablation import Clean, ResidualAblation

# Largest relative error of the clean run, against the model's own, that `build` accepts.
TOLERANCE = 1e-4
# Attention options this block does not compute (the clean-run check cannot see all of them).
_UNCOVERED = ("use_local_attn", "use_qk_norm", "use_attention_sinks", "use_logn_attn")


@dataclass
class State:
    """A run with the edges `keep` [senders, receivers] kept: per receiver its input x [B, p, d]
    (receivers reading the same stream share one tensor); per layer q, k, v, z [B, p, head,
    d_head]; per sender its output [B, p, d] (heads: z_h @ W_O[h]); the logits [B, P, vocab] at
    the metric's positions (all when it declares none); per sender out - its ablated value, filled
    on first use (`gap`)."""

    keep: Tensor
    x: list[Tensor]
    q: list[Tensor]
    k: list[Tensor]
    v: list[Tensor]
    z: list[Tensor]
    out: list[Tensor]
    logits: Tensor
    gap: dict[int, Tensor] = field(default_factory=dict)


class ResidualDelta:
    """Runs of a TransformerLens model with edges ablated, each computed from a recorded run."""

    def __init__(self, g: ResidualAblation, clean: Clean, ablated: Mapping[str, Tensor]) -> None:
        self.g, self.model = g, g.model
        x0 = clean.acts[g.embed]
        self.batch, self.seq = int(x0.shape[0]), int(x0.shape[1])
        pos = clean.positions
        self.positions = None if pos is None else sorted({p % self.seq for p in pos})
        self.abl = [a.to(x0) for site in g.sender_sites
                    for a in g.sender_outputs(site, ablated[site]).unbind(0)]  # fmt: skip
        self.attn = [blk.attn for blk in self.model.blocks]
        self.scale = [_attn_scale(blk.attn) for blk in self.model.blocks]
        cap = getattr(g.model.cfg, "attn_scores_soft_cap", None)  # Gemma 2's; off at <= 0
        self.cap = float(cap) if cap is not None and cap > 0 else None
        with torch.no_grad():
            self.clean = self._forward(x0)

    @classmethod
    def build(
        cls, g: ResidualAblation, clean: Clean, ablated: Mapping[str, Tensor]
    ) -> ResidualDelta | None:
        """The delta runner for this model, or None where it does not reproduce the model's own
        clean run (see the module docstring)."""
        cfg = g.model.cfg
        if (
            not can_resume(g.model, clean.inputs)
            or getattr(cfg, "positional_embedding_type", "standard") not in ("standard", None)
            or getattr(cfg, "attention_dir", "causal") != "causal"
            or getattr(cfg, "clip_qkv", None) is not None  # a clip the clean run may not reach
            or any(getattr(cfg, flag, False) for flag in _UNCOVERED)
        ):
            return None
        try:
            delta = cls(g, clean, ablated)
        except (AttributeError, RuntimeError, TypeError, ValueError):
            return None
        return delta if delta._reproduces(clean) else None

    @torch.no_grad()
    def state(self, keep: Tensor, near: State | None = None) -> State:
        """The recorded run that keeps the edges `keep`, computed as changes to `near` (a
        recorded run it differs from in few edges; default the clean run)."""
        base = self.clean if near is None else near
        return self._propagate(base, keep[None], record=True)  # type: ignore[return-value]

    def rows_per_pass(self, layer: int, memory: int) -> int:
        """How many variants one pass holds under `memory` bytes when their first changed
        receiver is in `layer`: a stream's change per sender written from there on (the last
        layer's at the metric's positions only) and a few more."""
        g = self.g
        streams = (g.n_layers - 1 - layer) * g.per_layer + 4
        x = self.clean.x[0]
        return max(1, memory // (streams * x.numel() * x.element_size()))

    @torch.no_grad()
    def outputs(self, base: State, keeps: Tensor) -> list[Tensor]:
        """The logits [B, seq, vocab] of each variant keeps[k, senders, receivers], computed as
        changes to `base`; at positions the metric does not read they are unspecified
        (`place_logits`)."""
        logits = self._propagate(base, keeps, record=False)
        assert isinstance(logits, Tensor)
        return [place_logits(x, self.positions, self.seq) for x in logits.unbind(0)]

    def output(self, state: State) -> Tensor:
        """The logits [B, seq, vocab] of a recorded run (as `outputs`)."""
        return place_logits(state.logits, self.positions, self.seq)

    # the propagation ------------------------------------------------------------------------

    def _propagate(self, base: State, keeps: Tensor, *, record: bool) -> State | Tensor:
        """The logits [k, B, P, vocab] of the variants `keeps` as changes to `base`, layer by
        layer: each receiver's input change (`_dx`), the moved heads and MLPs run again, their
        output changes summed into the stream's; with `record`, the one variant's `State`."""
        g, H = self.g, self.g.n_heads
        kv = (keeps & g.valid).numpy()
        change = kv.astype(np.int8) - (base.keep & g.valid).numpy().astype(np.int8)
        # [receivers]: some variant changes an edge into it
        touched = np.asarray(change.any(axis=(0, 1)))
        # [senders]: some variant keeps an edge out of it. The others' outputs are never read, so
        # they do not run again, except in a recorded run (later variants may keep them)
        read = np.asarray(kv.any(axis=(0, 2)) | record)
        k = kv.shape[0]
        moved = _Moved()  # sender -> its output's change [k, B, p, d]
        total: Tensor | None = None  # sum of moved, the stream's change
        new = _Recorder(base, k) if record else None
        for ly in range(g.n_layers):
            win = None if record or ly < g.n_layers - 1 else self.positions
            base_col = ly * g.recv_per_layer
            parts: dict[str, tuple[list[int], Tensor]] = {}
            live = [h for h in range(H) if read[1 + ly * g.per_layer + h]]
            for i, p in enumerate("qkv"):
                at = win if p == "q" else None
                cols = [base_col + i * H + h for h in range(H)]
                got = self._dx(base, kv, change, touched, moved, total,
                               [cols[h] for h in live], at) if live else []  # fmt: skip
                dxs = dict(zip(live, got, strict=True))
                heads = [h for h in live if dxs[h] is not None]
                if heads:
                    parts[p] = (heads, self._project(base, ly, p, heads, dxs, cols, at, new))
            if win is not None and total is not None:  # the rest of the last layer: at win
                total = _at(total, win, 2)
            heads = sorted({h for hs, _ in parts.values() for h in hs})
            if heads:
                z = self._attend(base, ly, heads, parts, win)
                dz = z - _at(base.z[ly][:, :, heads], win, 1)
                w_o = self.attn[ly].W_O.detach()[heads]
                step = einops.einsum(dz, w_o, "k b p h e, h e d -> k b p d")
                total = step if total is None else total + step
                for j, h in enumerate(heads):
                    s = 1 + ly * g.per_layer + h
                    moved.head(s, dz[..., j, :], w_o[j])
                    if new is not None:
                        new.out[s] = base.out[s] + moved[s][0]
                if new is not None:
                    new.heads(ly, heads, parts, z)
            if g.mlp and read[(ly + 1) * g.per_layer]:
                col = base_col + 3 * H
                (dx,) = self._dx(base, kv, change, touched, moved, total, [col], win)
                if dx is not None:
                    x = _at(base.x[col], win, 1) + dx
                    out = self._mlp(ly, x)
                    s = (ly + 1) * g.per_layer
                    moved[s] = out - _at(base.out[s], win, 1)
                    total = moved[s] if total is None else total + moved[s]
                    if new is not None:
                        new.receiver(col, x)
                        new.out[s] = out[0]
        (dx,) = self._dx(base, kv, change, touched, moved, total, [len(g.receivers) - 1],
                         None if record else self.positions)  # fmt: skip
        if dx is None:
            logits = base.logits.expand(k, *base.logits.shape)
        else:
            x = _at(base.x[-1], None if record else self.positions, 1) + dx
            if new is not None:
                new.receiver(len(g.receivers) - 1, x)
            logits = self._logits(_at(x, self.positions, 2))
        if new is None:
            return logits
        return new.state(keep=keeps[0], logits=logits[0])

    def _dx(
        self, base: State, kv: np.ndarray, change: np.ndarray, touched: np.ndarray,
        moved: _Moved,
        total: Tensor | None, cols: list[int], at: Sequence[int] | None,
    ) -> list[Tensor | None]:  # fmt: skip
        """Per receiver column, its input's change [k, B, p', d] (p': `at` or every position),
        or None where no variant moves it; columns with the same weights share one tensor."""
        valid = self.g.valid[:, cols[0]]
        send = [s for s in moved if valid[s]]
        if not send and not touched[cols].any():
            return [None] * len(cols)
        w = kv[:, send][:, :, cols]
        edges = np.flatnonzero(change[:, :, cols].any(axis=(0, 2))).tolist()
        e = change[:, edges][:, :, cols]
        cache: dict[bytes, Tensor | None] = {}
        out: list[Tensor | None] = []
        for j in range(len(cols)):
            key = w[:, :, j].tobytes() + e[:, :, j].tobytes()
            if key not in cache:
                cache[key] = self._sum(base, send, w[:, :, j], edges, e[:, :, j], moved, total, at)
            out.append(cache[key])
        return out

    def _sum(
        self, base: State, send: list[int], w: np.ndarray, edges: list[int], e: np.ndarray,
        moved: _Moved, total: Tensor | None, at: Sequence[int] | None,
    ) -> Tensor | None:  # fmt: skip
        """sum_s w[:, s] * moved[s] + sum_s e[:, s] * (out_s - abl_s), out_s the recorded
        run's; through the running total of the moved senders where few weights are 0."""
        k = len(w)
        acc: Tensor | None = None

        def add(weights: np.ndarray, t: Tensor) -> None:
            """acc[i] += weights[i] * t[i] (t: [k or 1, ...]), on the rows with a weight."""
            nonlocal acc
            rows = np.flatnonzero(weights)
            if acc is None:
                acc = t.new_zeros(k, *t.shape[1:])
            for sign in (1, -1):
                hit = rows[weights[rows] == sign]
                if len(hit) == k:
                    acc.add_(t, alpha=sign)
                elif len(hit):
                    index = torch.from_numpy(hit).to(acc.device)
                    part = (
                        t.index_select(0, index)
                        if t.shape[0] == k
                        else t.expand(len(hit), *t.shape[1:])
                    )
                    acc.index_add_(0, index, part, alpha=sign)

        cut = np.flatnonzero(~w.all(0)).tolist()
        if total is not None and len(send) == len(moved) and 2 * len(cut) < len(send):
            acc = _at(total, at, 2).clone()
            for j in cut:
                add(-(~w[:, j]).astype(np.int8), _at(moved[send[j]], at, 2))
        else:
            for j in np.flatnonzero(w.any(0)).tolist():
                add(w[:, j].astype(np.int8), _at(moved[send[j]], at, 2))
        for j in np.flatnonzero(e.any(0)).tolist():
            s = edges[j]
            if s not in base.gap:
                base.gap[s] = base.out[s] - self.abl[s]
            add(e[:, j], _at(base.gap[s], at, 1)[None])
        return acc

    def _project(
        self, base: State, ly: int, p: str, heads: list[int], dx: Mapping[int, Tensor | None],
        cols: list[int], at: Sequence[int] | None, new: _Recorder | None,
    ) -> Tensor:  # fmt: skip
        """The moved heads' q, k or v [k, B, p', head', d_head] from their moved inputs."""
        g = self.g
        block = self.model.blocks[ly]
        w = getattr(block.attn, f"W_{p.upper()}").detach()
        b = getattr(block.attn, f"b_{p.upper()}").detach()
        params = norm_params(block.ln1, g.norm)
        groups: dict[tuple[int, int], list[int]] = {}  # heads reading one moved input
        for h in heads:
            groups.setdefault((id(base.x[cols[h]]), id(dx[h])), []).append(h)
        out: Tensor | None = None
        for hs in groups.values():
            d = dx[hs[0]]
            assert d is not None
            x = _at(base.x[cols[hs[0]]], at, 1) + d
            if new is not None:
                for h in hs:
                    new.receiver(cols[h], x)
            normed = norm_forward(x, g.norm, params, g.eps)
            y = einops.einsum(normed, w[hs], "k b p d, h d e -> k b p h e") + b[hs]
            if len(groups) == 1:
                return y
            if out is None:
                out = y.new_empty(*y.shape[:3], len(heads), y.shape[-1])
            out[:, :, :, [heads.index(h) for h in hs]] = y
        assert out is not None
        return out

    def _attend(
        self, base: State, ly: int, heads: list[int], parts: dict[str, tuple[list[int], Tensor]],
        win: Sequence[int] | None,
    ) -> Tensor:  # fmt: skip
        """z [k, B, p', head', d_head] of the moved heads: causal attention of their queries (at
        `win`, or every position) over their keys and values, moved or recorded."""

        def get(p: str, at: Sequence[int] | None) -> Tensor:
            rec = getattr(base, p)[ly][:, :, heads]
            rec = _at(rec, at, 1)[None]
            if p not in parts:
                return rec
            hs, val = parts[p]
            if hs == heads:  # every head moved: nothing recorded to fill in
                return val
            idx = [hs.index(h) if h in hs else -1 for h in heads]
            rows = torch.tensor([i for i in idx if i >= 0])
            where = torch.tensor([j for j, i in enumerate(idx) if i >= 0])
            full = rec.expand(val.shape[0], *rec.shape[1:]).clone()
            full[:, :, :, where] = val[:, :, :, rows]
            return full

        q, k, v = get("q", win), get("k", None), get("v", None)
        return _causal(q, k, v, self.scale[ly], win, self.seq, self.cap)

    def _mlp(self, ly: int, x: Tensor) -> Tensor:
        """The MLP's output on the stream x [..., d] through the block's own module."""
        block = self.model.blocks[ly]
        normed = norm_forward(x, self.g.norm, norm_params(block.ln2, self.g.norm), self.g.eps)
        return block.mlp(normed.flatten(0, -3)).view_as(x)

    def _logits(self, x: Tensor) -> Tensor:
        """The logits on the final stream x [..., P, d] through the model's own modules."""
        ln = getattr(self.model, "ln_final", None)
        flat = x.flatten(0, -3)
        out = self.model.unembed(flat if ln is None else ln(flat))
        return out.view(*x.shape[:-1], out.shape[-1])

    # the clean run and its check --------------------------------------------------------------

    def _forward(self, x0: Tensor) -> State:
        """The clean run, every edge kept, computed by this module's own block."""
        g = self.g
        stream = x0
        xs: list[Tensor] = []
        qs, ks, vs, zs, outs = [], [], [], [], [x0]
        for ly, block in enumerate(self.model.blocks):
            params = norm_params(block.ln1, g.norm)
            normed = norm_forward(stream, g.norm, params, g.eps)
            qkv = [
                einops.einsum(normed, getattr(block.attn, f"W_{p}").detach(),
                              "b s d, h d e -> b s h e") + getattr(block.attn, f"b_{p}").detach()
                for p in "QKV"
            ]  # fmt: skip
            q, k, v = (t[None] for t in qkv)
            z = _causal(q, k, v, self.scale[ly], None, self.seq, self.cap)[0]
            head_out = einops.einsum(z, block.attn.W_O.detach(), "b s h e, h e d -> h b s d")
            xs += [stream] * (3 * g.n_heads)
            qs.append(q[0])
            ks.append(k[0])
            vs.append(v[0])
            zs.append(z)
            outs += list(head_out.unbind(0))
            stream = stream + head_out.sum(0) + block.attn.b_O.detach()
            if g.mlp:
                xs.append(stream)
                out = self._mlp(ly, stream)
                outs.append(out)
                stream = stream + out
        xs.append(stream)
        final = stream if self.positions is None else stream[:, self.positions]
        keep = g.valid.clone()
        return State(keep, xs, qs, ks, vs, zs, outs, self._logits(final))

    def _reproduces(self, clean: Clean) -> bool:
        """Whether the clean run matches the model's own: hook_z, hook_mlp_out per layer and the
        last residual stream, to `TOLERANCE` of their size."""
        pairs = [(self.clean.z[ly], clean.acts[f"blocks.{ly}.attn.hook_z"])
                 for ly in range(self.g.n_layers)]  # fmt: skip
        if self.g.mlp:
            mlps = [(ly + 1) * self.g.per_layer for ly in range(self.g.n_layers)]
            pairs += [(self.clean.out[s], clean.acts[f"blocks.{ly}.hook_mlp_out"])
                      for ly, s in enumerate(mlps)]  # fmt: skip
        pairs.append((self.clean.x[-1], clean.acts[self.g.last]))
        for ours, theirs in pairs:
            theirs = theirs.to(ours)
            if ours.shape != theirs.shape:
                return False
            scale = float(theirs.abs().max()) or 1.0
            if float((ours - theirs).abs().max()) > TOLERANCE * scale:
                return False
        return True


class _Moved:
    """The senders whose output a variant changes, and the change [k, B, p', d]; a head's is
    computed from its z change on first use (a stream's change sums the heads in one product, so
    most heads' own changes are never read)."""

    def __init__(self) -> None:
        self.done: dict[int, Tensor] = {}
        self.pending: dict[int, tuple[Tensor, Tensor]] = {}
        self.order: list[int] = []

    def head(self, s: int, dz: Tensor, w_o: Tensor) -> None:
        """Head sender s moved by dz [k, B, p', d_head] (its W_O: w_o)."""
        self.pending[s] = (dz, w_o)
        self.order.append(s)

    def __setitem__(self, s: int, change: Tensor) -> None:
        self.done[s] = change
        self.order.append(s)

    def __getitem__(self, s: int) -> Tensor:
        if s in self.pending:
            dz, w_o = self.pending.pop(s)
            self.done[s] = dz @ w_o
        return self.done[s]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


class _Recorder:
    """Builds the `State` of a propagated run (one variant) from the recorded one it changed."""

    def __init__(self, base: State, k: int) -> None:
        assert k == 1, "a recorded state holds one variant"
        self.x = list(base.x)
        self.q, self.k, self.v, self.z = (list(t) for t in (base.q, base.k, base.v, base.z))
        self.out = list(base.out)
        self.views: dict[int, tuple[Tensor, Tensor]] = {}

    def receiver(self, col: int, x: Tensor) -> None:
        """Receiver `col` reads x [1, B, p, d] (receivers given one x share one tensor)."""
        self.x[col] = self.views.setdefault(id(x), (x, x[0]))[1]

    def heads(self, ly: int, heads: list[int], parts: Any, z: Tensor) -> None:
        for p, (hs, val) in parts.items():
            t = getattr(self, p)[ly].clone()
            t[:, :, hs] = val[0]
            getattr(self, p)[ly] = t
        t = self.z[ly].clone()
        t[:, :, heads] = z[0]
        self.z[ly] = t

    def state(self, *, keep: Tensor, logits: Tensor) -> State:
        return State(keep.clone(), self.x, self.q, self.k, self.v, self.z, self.out, logits)


def _causal(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    scale: float,
    at: Sequence[int] | None,
    seq: int,
    cap: float | None,
) -> Tensor:
    """z [n, B, p', head, d_head] of causal attention; queries [n, B, p', head, d_head] at the
    positions `at` (every position when None), keys and values at every position."""
    n = max(q.shape[0], k.shape[0], v.shape[0])
    q, k, v = (t.expand(n, *t.shape[1:]) for t in (q, k, v))
    scores = einops.einsum(q, k, "n b q h e, n b s h e -> n b h q s") / scale
    if cap is not None:
        scores = cap * torch.tanh(scores / cap)
    rows = torch.arange(seq) if at is None else torch.tensor(list(at))
    mask = rows[:, None] < torch.arange(seq)[None, :]
    pattern = scores.masked_fill(mask.to(scores.device), float("-inf")).softmax(-1)
    return einops.einsum(pattern, v, "n b h q s, n b s h e -> n b q h e")


def _attn_scale(attn: Any) -> float:
    """The attention's score divisor: HookedTransformer's attn_scale, a TransformerBridge native
    attention's scale, or 1 / a Hugging Face attention's scaling (a factor); ValueError where
    none is found (no delta runs then)."""
    for module in (attn, getattr(attn, "original_component", None)):
        for name in ("attn_scale", "scale", "scaling"):
            value = getattr(module, name, None)
            if isinstance(value, int | float) or (isinstance(value, Tensor) and value.numel() == 1):
                return 1 / float(value) if name == "scaling" else float(value)
    raise ValueError("an attention without a known score scale")


def _at(t: Tensor, at: Sequence[int] | None, axis: int) -> Tensor:
    """t at the positions `at` of its position axis `axis` (all when None or already cut)."""
    if at is None or t.shape[axis] == len(at):
        return t
    return t.index_select(axis, torch.tensor(list(at), device=t.device))
