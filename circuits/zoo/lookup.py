"""A 2-layer transformer with MLPs trained here on a pair lookup, and the data it learned from.

The task: sequences of random symbols 0..15; at every position t >= 1 the answer is
`LOOKUP_TABLE[x[t-1]][x[t]]`, a fixed random Latin square (every symbol occurs once in each row and
once in each column). The label sits on position t itself (`LookupBatch.targets`), not on the next
token. The Latin property makes the answer independent of either token alone: whatever the
previous symbol, every answer is equally likely until the current one is known, and the other way
round. So no single-token path can score above chance (1/16), and adding the two paths does not
help: among logits of the form f(x[t-1]) + h(x[t]) the cross-entropy (convex in f and h) is
lowest at the uniform guess, where its gradient vanishes because every row and every column of
the square holds each answer once. The model has to

1. move x[t-1] to position t: attention, a previous-token head (layer 0, head 1), and
2. combine it with x[t] nonlinearly: an MLP after that head (layer 0's) acting as a key-value
   memory, one key per (previous, current) pair and the table's entry as its value.

A lookup of the previous token alone (`g(x[t-1])`) would not need an MLP: a function of one token
is linear in its one-hot code, so a head's OV circuit can write g directly into the logits.

`lookup_transformer()` loads shipped weights (`weights/lookup.safetensors`, HookedTransformer
layout, so both transformer-lens lines load them) trained by `circuits.zoo.train_lookup`, which
also decides which components carry the circuit (`LOOKUP_CIRCUIT`): during a warm-up only the
previous-token head and MLP 0 contribute, the others are faded in afterwards. Left to itself, the
model spreads the job over all four layer-0 heads (0.4 to 0.7 attention to the previous token
each), a less legible circuit.

What the shipped model does (1,024 held-out sequences; `weights/lookup.json` has every figure):
accuracy 1.0. Head 0.1 puts 0.9997 of its attention on the previous position (every other head
below 0.18). Zeroing that head, or replacing MLP 0's output by its mean, leaves 0.065 and 0.059
(chance is 0.0625); doing so to any other head or to MLP 1 leaves 1.0. MLP 0's direct effect on
the logits alone ranks the answer first everywhere. MLP 1 then amplifies it: it reads MLP 0's
answer and writes most of the final margin (its direct effect also ranks the answer first, and
falls to chance when MLP 0 is ablated), but it decides nothing, as ablating it shows.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from circuits.capture import capture
from circuits.checks import check_int
from circuits.errors import ConfigError, InputError, ModelError
from circuits.zoo.transformers import Line, hooked_state_dict, load_weights, tiny_transformer

__all__ = [
    "CONFIG",
    "IGNORE",
    "LOOKUP_CIRCUIT",
    "LOOKUP_TABLE",
    "WEIGHTS_PATH",
    "LookupBatch",
    "LookupCircuit",
    "latin_square",
    "lookup_accuracy",
    "lookup_batch",
    "lookup_pair",
    "lookup_targets",
    "lookup_transformer",
    "mlp_logit_lens",
    "previous_token_scores",
]

N_SYMBOLS = 16

CONFIG: dict[str, Any] = dict(
    n_layers=2,
    d_model=64,
    n_heads=4,
    d_head=16,
    d_mlp=256,
    d_vocab=N_SYMBOLS,
    n_ctx=24,
    act_fn="relu",
    normalization_type="LN",
)
"""`tiny_transformer(**CONFIG)` builds the architecture the shipped weights fit."""

LOOKUP_TABLE: tuple[tuple[int, ...], ...] = (
    (11, 13, 8, 4, 12, 9, 1, 6, 2, 15, 14, 5, 3, 7, 0, 10),
    (10, 1, 4, 6, 7, 11, 0, 5, 13, 2, 12, 14, 15, 9, 3, 8),
    (1, 5, 7, 3, 14, 12, 15, 10, 11, 9, 13, 8, 6, 4, 2, 0),
    (4, 0, 2, 15, 3, 10, 5, 1, 9, 8, 6, 12, 13, 14, 11, 7),
    (5, 10, 12, 11, 9, 6, 8, 2, 0, 4, 1, 13, 7, 15, 14, 3),
    (0, 2, 15, 5, 11, 7, 9, 14, 6, 10, 3, 1, 4, 12, 8, 13),
    (9, 8, 6, 12, 13, 0, 3, 15, 1, 14, 11, 7, 10, 2, 5, 4),
    (2, 11, 10, 0, 5, 14, 13, 9, 4, 1, 15, 3, 12, 8, 7, 6),
    (12, 7, 3, 2, 4, 13, 6, 8, 14, 11, 0, 10, 9, 5, 1, 15),
    (15, 4, 14, 9, 0, 3, 10, 7, 5, 6, 8, 11, 1, 13, 12, 2),
    (7, 14, 9, 8, 1, 5, 11, 13, 10, 3, 4, 15, 2, 0, 6, 12),
    (13, 15, 11, 1, 6, 2, 12, 4, 8, 5, 7, 9, 0, 3, 10, 14),
    (6, 9, 5, 14, 15, 1, 4, 3, 7, 12, 2, 0, 8, 10, 13, 11),
    (8, 3, 1, 13, 2, 4, 7, 12, 15, 0, 10, 6, 14, 11, 9, 5),
    (3, 6, 13, 10, 8, 15, 14, 0, 12, 7, 5, 2, 11, 1, 4, 9),
    (14, 12, 0, 7, 10, 8, 2, 11, 3, 13, 9, 4, 5, 6, 15, 1),
)
"""The answer for (previous symbol a, current symbol b) is `LOOKUP_TABLE[a][b]`: a random Latin
square of order 16, `latin_square(16, seed=0)` (no group structure, so nothing to learn but the
256 entries)."""

IGNORE = -100
"""The target at position 0, which has no previous token (cross-entropy's default ignore_index)."""

WEIGHTS_PATH = Path(__file__).parent / "weights" / "lookup.safetensors"

SEQ_LEN = CONFIG["n_ctx"]


@dataclass(frozen=True)
class LookupCircuit:
    """Where the lookup happens in the shipped weights.

    previous_token: (layer, head) of the head that moves x[t-1] to position t.
    lookup_mlp: the layer whose MLP maps (x[t-1], x[t]) to the table's entry.
    amplifier_mlp: the layer whose MLP reads that entry and amplifies it (not needed for the
        answer, but most of the logits' margin).
    table: the lookup table, LOOKUP_TABLE.
    """

    previous_token: tuple[int, int]
    lookup_mlp: int
    amplifier_mlp: int
    table: tuple[tuple[int, ...], ...]

    @property
    def head_site(self) -> str:
        """The site of the previous-token head's output, `blocks.L.attn.hook_z` (unit: head)."""
        return f"blocks.{self.previous_token[0]}.attn.hook_z"

    @property
    def mlp_site(self) -> str:
        """The lookup MLP's output, `blocks.L.hook_mlp_out`."""
        return f"blocks.{self.lookup_mlp}.hook_mlp_out"


LOOKUP_CIRCUIT = LookupCircuit(
    previous_token=(0, 1), lookup_mlp=0, amplifier_mlp=1, table=LOOKUP_TABLE
)
"""The circuit of the shipped weights: head 0.1 moves x[t-1], MLP 0 looks the pair up, MLP 1
amplifies the answer (`model.circuit` on a loaded model)."""


@dataclass(frozen=True)
class LookupBatch:
    """Random symbol sequences and the answer at each position.

    tokens: the sequences. targets: LOOKUP_TABLE[tokens[:, t-1], tokens[:, t]] at t >= 1, and
    IGNORE (-100) at t = 0, so `cross_entropy(logits.transpose(1, 2), targets)` is the task loss.
    """

    tokens: Int[Tensor, "n seq"]
    targets: Int[Tensor, "n seq"]

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def lookup_transformer(*, line: Line | None = None) -> nn.Module:
    """The trained lookup model (eval mode), built with `tiny_transformer(**CONFIG)`.

    line: "hooked" (HookedTransformer, transformer-lens 3.x) or "bridge" (TransformerBridge); None
    picks HookedTransformer where it exists. `model.circuit` is `LOOKUP_CIRCUIT`.

        model = lookup_transformer()
        batch = lookup_batch(64, seed=1)
        lookup_accuracy(model, batch)          # 1.0
        with cc.hooks(model, {model.circuit.head_site: lambda z, site: z * 0}):
            lookup_accuracy(model, batch)      # about 1/16: the pair cannot be looked up

    Raises:
        ConfigError: line is not "hooked", "bridge" or None, or "hooked" without
            transformer-lens 3.x.
    """
    from safetensors.torch import load_file

    model = load_weights(tiny_transformer(**CONFIG, line=line), load_file(WEIGHTS_PATH))
    model.circuit = LOOKUP_CIRCUIT  # type: ignore[assignment]
    return model.eval()


def lookup_targets(tokens: Int[Tensor, "n seq"]) -> Int[Tensor, "n seq"]:
    """The answers for `tokens` (symbols in 0..15): the table's entry from t = 1 on, IGNORE at 0.

        lookup_targets(torch.tensor([[0, 1, 1]]))   # tensor([[-100, 13, 1]])

    Raises:
        InputError: tokens is not a [n, seq] int64 tensor of symbols in [0, 16).
    """
    if not isinstance(tokens, Tensor) or tokens.ndim != 2 or tokens.dtype != torch.long:
        raise InputError(
            f"tokens must be a [n, seq] tensor of int64 symbols, got "
            f"{getattr(tokens, 'shape', type(tokens).__name__)} {getattr(tokens, 'dtype', '')}"
        )
    if tokens.numel() and (tokens.min() < 0 or tokens.max() >= N_SYMBOLS):
        raise InputError(f"tokens must be symbols in [0, {N_SYMBOLS}), got {tokens.unique()[:8]}")
    table = torch.tensor(LOOKUP_TABLE, device=tokens.device)
    targets = torch.full_like(tokens, IGNORE)
    targets[:, 1:] = table[tokens[:, :-1], tokens[:, 1:]]
    return targets


def lookup_batch(n: int, *, seq_len: int = SEQ_LEN, seed: int = 0) -> LookupBatch:
    """`n` sequences of `seq_len` symbols, each drawn uniformly; same seed, same data.

        batch = lookup_batch(256, seed=1)
        batch.tokens.shape, batch.targets.shape   # (256, 24), (256, 24)

    Raises:
        ConfigError: n < 1, seq_len < 2 or longer than the context (24), or seed < 0.
    """
    _check(n, seq_len, seed)
    return sample(n, torch.Generator().manual_seed(seed), seq_len)


def lookup_pair(
    n: int, *, seq_len: int = SEQ_LEN, position: int = -1, seed: int = 0
) -> tuple[Int[Tensor, "n seq"], Int[Tensor, "n seq"], LookupBatch]:
    """Clean and corrupt tokens for patching, and the clean batch.

    clean is `lookup_batch(n, ...).tokens`; corrupt differs from it in one token per sequence,
    the one before `position`, replaced by another symbol drawn uniformly. The current symbol is
    unchanged, so the answer at `position` changes (a Latin square's column holds each symbol
    once): `lookup_targets(corrupt)[:, position]` is the corrupt answer. Only the previous-token
    route carries the difference to `position`, so patching finds the head that moves it.

        clean, corrupt, batch = lookup_pair(128, seed=3)
        metric = cc.metrics.logit_diff(batch.targets[:, -1], lookup_targets(corrupt)[:, -1])
        res = cc.patch(model, clean, corrupt, metric, site="blocks.0.attn.hook_z", unit=("head",))
        res.normalised()   # about 1 for head 1, about 0 for the others

    Raises:
        ConfigError: bad n, seq_len or seed (as lookup_batch), or a position without a previous
            token inside seq_len.
    """
    _check(n, seq_len, seed)
    if isinstance(position, bool) or not isinstance(position, int):
        raise ConfigError(f"position must be an int, got {position!r}")
    pos = position + seq_len if position < 0 else position
    if not 1 <= pos < seq_len:
        raise ConfigError(
            f"position={position} needs a previous token inside seq_len={seq_len}: use 1 .. "
            f"{seq_len - 1} or -1 .. {1 - seq_len}"
        )
    batch = lookup_batch(n, seq_len=seq_len, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1_000_003)  # a stream apart from the clean data
    shift = torch.randint(1, N_SYMBOLS, (n,), generator=gen)  # never 0: always another symbol
    corrupt = batch.tokens.clone()
    corrupt[:, pos - 1] = (corrupt[:, pos - 1] + shift) % N_SYMBOLS
    return batch.tokens, corrupt, batch


def sample(n: int, gen: torch.Generator, seq_len: int) -> LookupBatch:
    """Draw a LookupBatch from `gen` (unchecked arguments; the training loop's data stream)."""
    tokens = torch.randint(N_SYMBOLS, (n, seq_len), generator=gen)
    return LookupBatch(tokens, lookup_targets(tokens))


def lookup_accuracy(model: nn.Module, batch: LookupBatch) -> float:
    """The fraction of positions t >= 1 where the model's top logit is the table's answer.

        lookup_accuracy(lookup_transformer(), lookup_batch(256, seed=1))   # 1.0

    Raises:
        ModelError: model is not a TransformerLens model (no .cfg).
        InputError: batch is not a LookupBatch.
    """
    tokens, targets = _batch(model, batch)
    with torch.no_grad():
        logits = model(tokens)
    scored = targets != IGNORE
    return float((logits.argmax(-1) == targets)[scored].float().mean())


def previous_token_scores(model: nn.Module, batch: LookupBatch) -> Float[Tensor, "layer head"]:
    """Every head's mean attention from each position (from the second on) to the one before.

        previous_token_scores(model, lookup_batch(256, seed=1))[0, 1]   # about 1.0

    Raises:
        ModelError: model is not a TransformerLens model. InputError: batch is not a LookupBatch.
    """
    tokens, _ = _batch(model, batch)
    sites = [f"blocks.{layer}.attn.hook_pattern" for layer in range(_cfg(model).n_layers)]
    cache = capture(model, tokens, sites=sites)
    return torch.stack(
        [cache[s].diagonal(offset=-1, dim1=-2, dim2=-1).mean(dim=(0, -1)) for s in sites]
    )


def mlp_logit_lens(
    model: nn.Module, batch: LookupBatch, *, layer: int = LOOKUP_CIRCUIT.lookup_mlp
) -> Float[Tensor, "n seq d_vocab"]:
    """The direct effect of MLP `layer`'s output on the logits, position by position.

    The MLP output goes through the final LayerNorm as the residual stream does (centred, scaled
    by ln_final's weight and divided by the residual's own scale at that position) and then the
    unembedding, without the bias: what this one component adds to each logit.

        lens = mlp_logit_lens(model, batch, layer=0)
        (lens.argmax(-1) == batch.targets)[:, 1:].float().mean()   # 1.0: MLP 0 writes the answer

    Raises:
        ModelError: model is not a TransformerLens model. InputError: batch is not a LookupBatch.
        ConfigError: layer is not a layer of the model.
    """
    tokens, _ = _batch(model, batch)
    cfg = _cfg(model)
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < cfg.n_layers:
        raise ConfigError(f"layer must be an int in [0, {cfg.n_layers}), got {layer!r}")
    out_site, scale_site = f"blocks.{layer}.hook_mlp_out", "ln_final.hook_scale"
    cache = capture(model, tokens, sites=[out_site, scale_site])
    weights = hooked_state_dict(model)
    out = cache[out_site]
    out = out - out.mean(-1, keepdim=True)
    return (out * weights["ln_final.w"] / cache[scale_site]) @ weights["unembed.W_U"]


def latin_square(k: int, *, seed: int = 0) -> tuple[tuple[int, ...], ...]:
    """A random Latin square of order `k`, built row by row: each row a random perfect matching
    of columns to the symbols their column has not used yet (one always exists, by Hall's
    theorem). Python's `random.Random(seed)`, so the same seed gives the same square everywhere.

        latin_square(16, seed=0) == LOOKUP_TABLE   # True

    Raises:
        ConfigError: k < 1 or seed < 0.
    """
    check_int(k, "k")
    check_int(seed, "seed", low=0)
    rng = random.Random(seed)
    rows: list[tuple[int, ...]] = []
    used: list[set[int]] = [set() for _ in range(k)]  # symbols each column holds so far
    for _ in range(k):
        row = _random_row(k, used, rng)
        for col, symbol in enumerate(row):
            used[col].add(symbol)
        rows.append(row)
    return tuple(rows)


def _random_row(k: int, used: list[set[int]], rng: random.Random) -> tuple[int, ...]:
    """A perfect matching of columns to symbols not `used` in them (Kuhn's augmenting paths,
    columns and candidate symbols tried in random order)."""
    owner: dict[int, int] = {}  # symbol -> the column it is matched to

    def place(col: int, seen: set[int]) -> bool:
        free = [s for s in range(k) if s not in used[col]]
        rng.shuffle(free)
        for s in free:
            if s not in seen:
                seen.add(s)
                if s not in owner or place(owner[s], seen):
                    owner[s] = col
                    return True
        return False

    cols = list(range(k))
    rng.shuffle(cols)
    for col in cols:
        place(col, set())
    row = [0] * k
    for symbol, col in owner.items():
        row[col] = symbol
    return tuple(row)


def _batch(model: nn.Module, batch: LookupBatch) -> tuple[Tensor, Tensor]:
    _cfg(model)
    if not isinstance(batch, LookupBatch):
        raise InputError(
            f"batch must be a LookupBatch (from lookup_batch or lookup_pair), "
            f"got {type(batch).__name__}"
        )
    device = next(model.parameters()).device
    return batch.tokens.to(device), batch.targets.to(device)


def _cfg(model: nn.Module) -> Any:
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        raise ModelError(
            f"lookup scores need a TransformerLens model (with .cfg), got {type(model).__name__}"
        )
    return cfg


def _check(n: int, seq_len: int, seed: int) -> None:
    check_int(n, "n")
    check_int(seq_len, "seq_len", low=2)
    check_int(seed, "seed", low=0)
    if seq_len > SEQ_LEN:
        raise ConfigError(
            f"seq_len={seq_len} is longer than the model's context (n_ctx={SEQ_LEN}); use "
            f"seq_len <= {SEQ_LEN}"
        )
