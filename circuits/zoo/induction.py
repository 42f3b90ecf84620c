"""A 2-layer attention-only transformer trained here to do induction, and the data it learned from.

Induction is the simplest circuit found in real language models: seeing "A B ... A", predict "B".
Two heads in different layers implement it: a previous-token head in layer 0 writes "the token
before me was A" into each position, and an induction head in layer 1 lets the query "A" attend to
the position whose previous token was A (K-composition), then copies the token found there, B.

`induction_transformer()` loads shipped weights (`weights/induction.safetensors`, HookedTransformer
layout, so both transformer-lens lines load them) trained by `circuits.zoo.train_induction` on
`repeated_tokens` sequences: random tokens in which one segment occurs twice, at random positions
with a random gap. The offset between the occurrences varies, so copying by fixed relative position
does not work and the model has to learn induction.

What the shipped model does (512 held-out sequences, `weights/induction.json` has every figure):
the loss on the second occurrence is 0.85 nats against 4.17 on the first (ln 64 = 4.16 is chance).
Two layer-1 heads are induction heads (induction score 0.88 for head 0, 0.82 for head 2) and two
layer-0 heads are previous-token heads (0.62 for head 0, 0.61 for head 2); the other heads score
below 0.07 on both. The pairs are partly redundant, as in real models. `INDUCTION_HEADS` (also
`model.induction_heads`) names the pair the behaviour relies on most: the layer-1 head whose
zero-ablation costs the most on the second occurrence (head 2: 0.85 -> 3.08 nats; head 0: 1.74),
and the layer-0 head whose ablation cuts that head's induction score the most (head 2: 0.82 ->
0.28; head 0: 0.30). `induction_score` and `prev_token_score` measure heads from their attention.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Bool, Int
from torch import Tensor, nn

from circuits.capture import capture
from circuits.checks import check_int
from circuits.errors import ConfigError, InputError, ModelError
from circuits.zoo.transformers import Line, load_weights, tiny_transformer

__all__ = [
    "CONFIG",
    "INDUCTION_HEADS",
    "WEIGHTS_PATH",
    "RepeatBatch",
    "head_scores",
    "induction_pair",
    "induction_score",
    "induction_transformer",
    "prev_token_score",
    "repeated_tokens",
]

CONFIG: dict[str, Any] = dict(
    n_layers=2,
    d_model=64,
    n_heads=4,
    d_head=16,
    d_vocab=64,
    n_ctx=64,
    attn_only=True,
    normalization_type=None,
)
"""`tiny_transformer(**CONFIG)` builds the architecture the shipped weights fit."""

INDUCTION_HEADS: dict[str, tuple[int, int]] = {"previous_token": (0, 2), "induction": (1, 2)}
"""(layer, head) of the previous-token head and of the induction head in the shipped weights."""

WEIGHTS_PATH = Path(__file__).parent / "weights" / "induction.safetensors"

SEQ_LEN = CONFIG["n_ctx"]
MIN_LEN, MAX_LEN = 6, 16  # segment lengths, both ends included


@dataclass(frozen=True)
class RepeatBatch:
    """Token sequences in which one segment occurs twice, with where it occurs.

    tokens: the sequences. first, second: where the segment's first and second occurrences start.
    length: the segment's length. In sequence i the second occurrence repeats the first exactly:
    tokens[i, second + j] == tokens[i, first + j] for 0 <= j < length, and the segment's tokens are
    distinct and occur nowhere else in the sequence, so each has one earlier occurrence to find.
    is_repeat: positions second + 1 .. second + length - 1, the tokens of the second occurrence that
    induction predicts (from the previous position; the occurrence's first token is unpredictable).
    is_first: the same offsets inside the first occurrence (first + 1 .. first + length - 1), which
    nothing predicts: the baseline to compare the loss on `is_repeat` with.
    """

    tokens: Int[Tensor, "n seq"]
    first: Int[Tensor, " n"]
    second: Int[Tensor, " n"]
    length: Int[Tensor, " n"]
    is_repeat: Bool[Tensor, "n seq"]
    is_first: Bool[Tensor, "n seq"]

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def induction_transformer(*, line: Line | None = None) -> nn.Module:
    """The trained induction model (eval mode), built with `tiny_transformer(**CONFIG)`.

    line: "hooked" (HookedTransformer, transformer-lens 3.x) or "bridge" (TransformerBridge); None
    picks HookedTransformer where it exists. `model.induction_heads` is `INDUCTION_HEADS`.

    Shapes: tokens [batch, pos] (pos <= 64, ids < 64) -> logits [batch, pos, 64]; 2 layers of 4
    heads, d_model 64, d_head 16, no MLPs and no LayerNorm.

        model = cc.zoo.induction_transformer()
        clean, corrupt, batch = cc.zoo.induction_pair(32)
        cc.zoo.head_scores(model, batch)["induction"]      # [2, 4]: heads (1, 0), (1, 2) ~0.85

    Raises:
        ConfigError: line is not "hooked", "bridge" or None, or "hooked" without
            transformer-lens 3.x.
    """
    from safetensors.torch import load_file

    model = load_weights(tiny_transformer(**CONFIG, line=line), load_file(WEIGHTS_PATH))
    model.induction_heads = dict(INDUCTION_HEADS)  # type: ignore[assignment]
    return model.eval()


def repeated_tokens(
    n: int,
    *,
    seq_len: int = SEQ_LEN,
    min_len: int = MIN_LEN,
    max_len: int = MAX_LEN,
    d_vocab: int = CONFIG["d_vocab"],
    seed: int = 0,
) -> RepeatBatch:
    """`n` sequences of random tokens in which a random segment occurs twice; same seed, same data.

    The segment (min_len..max_len distinct tokens) starts at a random position and is copied at a
    random later position, after a random gap of zero or more filler tokens. Filler tokens are drawn
    uniformly from the tokens not in the segment, so the repeat is the only way to predict a token.

    Shapes: `tokens`, `is_repeat`, `is_first` [n, seq_len]; `first`, `second`, `length` [n]
    (see `RepeatBatch`).

        batch = cc.zoo.repeated_tokens(128, seed=1)
        logits = model(batch.tokens)                       # [128, 64, 64]
        loss_on_repeats = cc.metrics.cross_entropy(batch.tokens, mask=batch.is_repeat)

    Raises:
        ConfigError: a size (n, seq_len, min_len, max_len, d_vocab) is not a positive int, seed
            is not an int >= 0, min_len < 2 or min_len > max_len, seq_len < 2 * max_len, or
            d_vocab <= max_len.
    """
    _check(n, seq_len, min_len, max_len, d_vocab, seed)
    return sample(n, torch.Generator().manual_seed(seed), seq_len, min_len, max_len, d_vocab)


def induction_pair(
    n: int,
    *,
    seq_len: int = SEQ_LEN,
    min_len: int = MIN_LEN,
    max_len: int = MAX_LEN,
    d_vocab: int = CONFIG["d_vocab"],
    seed: int = 0,
) -> tuple[Int[Tensor, "n seq"], Int[Tensor, "n seq"], RepeatBatch]:
    """Clean and corrupt tokens for patching, and the clean batch's metadata.

    clean is `repeated_tokens(n, ...).tokens`; corrupt is the same sequences with the segment's
    first occurrence replaced by fresh random tokens (none from the segment; tokens the sequence
    does not use where there are enough), so the second occurrence has nothing earlier to copy
    from. Only the first occurrence's positions differ.

    Shapes: clean, corrupt [n, seq_len] int64 tokens; the batch as `repeated_tokens`.

        clean, corrupt, batch = cc.zoo.induction_pair(32)
        metric = cc.metrics.cross_entropy(clean, mask=batch.is_repeat)
        res = cc.patch(model, clean, corrupt, metric, site="blocks.{L}.attn.hook_z", unit="head")

    Raises:
        ConfigError: as `repeated_tokens`, for the same arguments.
    """
    batch = repeated_tokens(
        n, seq_len=seq_len, min_len=min_len, max_len=max_len, d_vocab=d_vocab, seed=seed
    )
    gen = torch.Generator().manual_seed(seed + 1_000_003)  # a stream apart from the clean data
    corrupt = batch.tokens.clone()
    for i in range(n):
        a, b, length = int(batch.first[i]), int(batch.second[i]), int(batch.length[i])
        pool = _complement(batch.tokens[i], d_vocab)  # tokens that add no new repeat
        if len(pool) < length:  # too few: any token outside the segment
            pool = _complement(batch.tokens[i, b : b + length], d_vocab)
        corrupt[i, a : a + length] = _fresh(pool, length, gen)
    return batch.tokens, corrupt, batch


def sample(
    n: int, gen: torch.Generator, seq_len: int, min_len: int, max_len: int, d_vocab: int
) -> RepeatBatch:
    """Draw a RepeatBatch from `gen` (unchecked arguments; the training loop's data stream)."""
    tokens = torch.empty(n, seq_len, dtype=torch.long)
    starts = torch.empty(3, n, dtype=torch.long)  # first, second, length
    for i in range(n):
        length = int(torch.randint(min_len, max_len + 1, (1,), generator=gen))
        free = seq_len - 2 * length  # filler tokens around and between the two occurrences
        x, y = sorted(torch.randint(free + 1, (2,), generator=gen).tolist())
        a, b = x, y + length  # gap b - a - length = y - x >= 0, end b + length <= seq_len
        perm = torch.randperm(d_vocab, generator=gen)
        segment, outside = perm[:length], perm[length:]
        filler = outside[torch.randint(len(outside), (free,), generator=gen)]
        tokens[i, :a], tokens[i, a + length : b], tokens[i, b + length :] = filler.split(
            [a, b - a - length, seq_len - b - length]
        )
        tokens[i, a : a + length] = segment
        tokens[i, b : b + length] = segment
        starts[:, i] = torch.tensor([a, b, length])
    pos = torch.arange(seq_len)
    first, second, length_ = starts

    def span(start: Tensor) -> Tensor:
        return (pos > start[:, None]) & (pos < (start + length_)[:, None])

    return RepeatBatch(tokens, first, second, length_, span(second), span(first))


def induction_score(model: nn.Module, batch: RepeatBatch, layer: int, head: int) -> float:
    """Mean attention from each second-occurrence token to the token after its first occurrence.

    Queries are the second occurrence's positions from its second token on (second + j, j >= 1);
    each one's induction target is first + j + 1, the token that followed it last time. A perfect
    induction head scores 1, a head that spreads attention evenly scores about 1 / position.
    """
    pattern = _pattern(model, batch, layer, head)
    return float(_induction(pattern[:, None], batch)[0])


def prev_token_score(model: nn.Module, batch: RepeatBatch, layer: int, head: int) -> float:
    """Mean attention from each position (from the second on) to the position just before it."""
    pattern = _pattern(model, batch, layer, head)
    return float(_previous(pattern[:, None])[0])


def head_scores(
    model: nn.Module, batch: RepeatBatch
) -> dict[Literal["induction", "previous_token"], Tensor]:
    """Both scores for every head from one forward pass: each a [layer, head] tensor.

    "induction": `induction_score` of each head, "previous_token": `prev_token_score`, both
    means of attention weights in [0, 1], read from every layer's `hook_pattern` on
    `batch.tokens`.

        scores = cc.zoo.head_scores(model, cc.zoo.repeated_tokens(256, seed=1))
        scores["induction"][1]                             # ~[0.87, 0.06, 0.81, 0.06]

    Raises:
        ModelError: the model is not a TransformerLens model (it has no cfg).
        InputError: `batch` is not a RepeatBatch, or the forward pass fails on its tokens (ids
            beyond the model's d_vocab, more positions than its n_ctx).
    """
    n_layers = _cfg(model).n_layers
    sites = [f"blocks.{layer}.attn.hook_pattern" for layer in range(n_layers)]
    cache = capture(model, _tokens(model, batch), sites=sites)
    patterns = [cache[site] for site in sites]
    return {
        "induction": torch.stack([_induction(p, batch) for p in patterns]),
        "previous_token": torch.stack([_previous(p) for p in patterns]),
    }


def _pattern(model: nn.Module, batch: RepeatBatch, layer: int, head: int) -> Tensor:
    """The attention pattern of one head: [batch, query_pos, key_pos]."""
    cfg = _cfg(model)
    for name, value, size in (("layer", layer, cfg.n_layers), ("head", head, cfg.n_heads)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < size:
            raise ConfigError(f"{name} must be an int in [0, {size}), got {value!r}")
    site = f"blocks.{layer}.attn.hook_pattern"
    return capture(model, _tokens(model, batch), sites=site)[site][:, head]


def _cfg(model: nn.Module) -> Any:
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        raise ModelError(
            f"induction scores need a TransformerLens model (with .cfg), got {type(model).__name__}"
        )
    return cfg


def _tokens(model: nn.Module, batch: RepeatBatch) -> Tensor:
    if not isinstance(batch, RepeatBatch):
        raise InputError(
            f"batch must be a RepeatBatch (from repeated_tokens or induction_pair), "
            f"got {type(batch).__name__}"
        )
    return batch.tokens.to(next(model.parameters()).device)


def _induction(pattern: Tensor, batch: RepeatBatch) -> Tensor:
    """Per head, the mean attention of is_repeat queries to their induction targets."""
    seq, query = torch.nonzero(batch.is_repeat.to(pattern.device), as_tuple=True)
    key = query - (batch.second - batch.first).to(pattern.device)[seq] + 1
    return pattern[seq, :, query, key].mean(0)


def _previous(pattern: Tensor) -> Tensor:
    """Per head, the mean attention from each position to the one before (the -1 diagonal)."""
    return pattern.diagonal(offset=-1, dim1=-2, dim2=-1).mean(dim=(0, -1))


def _fresh(pool: Tensor, count: int, gen: torch.Generator) -> Tensor:
    """`count` tokens from `pool` in random order, all different while the pool lasts."""
    reps = -(-count // len(pool))
    return torch.cat([pool[torch.randperm(len(pool), generator=gen)] for _ in range(reps)])[:count]


def _complement(used: Tensor, d_vocab: int) -> Tensor:
    keep = torch.ones(d_vocab, dtype=torch.bool)
    keep[used] = False
    return torch.arange(d_vocab)[keep]


def _check(n: int, seq_len: int, min_len: int, max_len: int, d_vocab: int, seed: int = 0) -> None:
    sizes = {"n": n, "seq_len": seq_len, "min_len": min_len, "max_len": max_len, "d_vocab": d_vocab}
    for name, value in sizes.items():
        check_int(value, name)
    check_int(seed, "seed", low=0)
    if not 2 <= min_len <= max_len:
        raise ConfigError(
            f"segment lengths need 2 <= min_len <= max_len, got min_len={min_len}, "
            f"max_len={max_len} (a segment needs two tokens for induction to predict one)"
        )
    if seq_len < 2 * max_len:
        raise ConfigError(
            f"seq_len={seq_len} is too short for two copies of a segment of up to max_len="
            f"{max_len} tokens; use seq_len >= {2 * max_len} or a smaller max_len"
        )
    if d_vocab <= max_len:
        raise ConfigError(
            f"d_vocab={d_vocab} leaves no filler tokens beside a segment of {max_len} distinct "
            f"tokens; use d_vocab > max_len"
        )
