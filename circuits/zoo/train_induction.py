"""Train the induction model that `circuits.zoo.induction` ships, reproducibly from a seed.

    python -m circuits.zoo.train_induction --out circuits/zoo/weights/induction.safetensors --seed 0

builds `tiny_transformer(**CONFIG)`, draws its initial weights from a seeded generator (the same
numbers on both transformer-lens lines) and trains it with AdamW on next-token cross-entropy over
every position, in two phases, each batch drawn from a second seeded generator:

1. Warm-up (SKIP_STEPS, 20-token sequences): random tokens where, with probability 1/2, a token is
   a fixed function of the token two places back (a skip-bigram). Predicting it needs the previous
   token at the current position, so this rewards previous-token heads, as local structure in
   natural text does. Without it the model still learns induction, but through soft "recent
   tokens" layer-0 heads (none above 0.1 previous-token attention): a less legible circuit.
2. Induction (STEPS): `repeated_tokens` batches, 20 tokens long for GROW_START steps, then growing
   to n_ctx = 64 by GROW_END, with segment lengths scaled to fit (3..8 at 20 tokens, 6..16 at 64).
   Trained at full length from the start, the loss sat at chance (ln 64) for thousands of steps in
   every setting tried: with attention spread over 64 positions no part of the circuit pays off on
   its own. Short sequences break that plateau; induction then carries over to the full length.

The run is deterministic on CPU (seeded generators, `torch.use_deterministic_algorithms`) for a
given machine and torch build. The shipped file came from the command above with transformer-lens
4.x (TransformerBridge) on one CPU thread: 4,500 steps, about 6 minutes on a busy 2-core machine.
The other line starts from the same weights and data but may round differently, so it lands close,
not bit-identical. Other seeds may need more steps (the emergence time of induction varies). Next
to the weights it writes a JSON record: the config, the training settings, the loss curve, and the
held-out losses, head scores and ablation effects from `evaluate`, with the heads it picks.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import Tensor, nn

from circuits.hooks import hooks
from circuits.zoo.induction import (
    CONFIG,
    MAX_LEN,
    MIN_LEN,
    RepeatBatch,
    head_scores,
    repeated_tokens,
    sample,
)
from circuits.zoo.trainer import train_command
from circuits.zoo.transformers import Line, fit, load_weights, tiny_transformer

__all__ = ["evaluate", "init_weights", "main", "next_token_loss", "train"]

log = logging.getLogger(__name__)

STEPS, SKIP_STEPS, BATCH_SIZE, LR, WEIGHT_DECAY = 4000, 500, 32, 3e-3, 0.01
SHORT, GROW_START, GROW_END = 20, 1500, 2500  # sequence length schedule of the induction phase
EMBED_STD, INIT_STD = 1.0, 0.8  # W_E, W_pos ~ N(0, 1); other weights ~ N(0, 0.8 / sqrt(d_model))
EVAL_SEED = 12_345  # held-out data for the record; training data come from another stream


def init_weights(seed: int) -> dict[str, Tensor]:
    """Initial weights in HookedTransformer layout (see EMBED_STD, INIT_STD); zero biases."""
    gen = torch.Generator().manual_seed(seed)
    d_model, n_heads, d_head = CONFIG["d_model"], CONFIG["n_heads"], CONFIG["d_head"]
    d_vocab, std = CONFIG["d_vocab"], INIT_STD / math.sqrt(d_model)

    def normal(*shape: int, scale: float = std) -> Tensor:
        return torch.randn(*shape, generator=gen) * scale

    weights = {
        "embed.W_E": normal(d_vocab, d_model, scale=EMBED_STD),
        "pos_embed.W_pos": normal(CONFIG["n_ctx"], d_model, scale=EMBED_STD),
    }
    for layer in range(CONFIG["n_layers"]):
        pre = f"blocks.{layer}.attn."
        for name in ("Q", "K", "V"):
            weights[pre + "W_" + name] = normal(n_heads, d_model, d_head)
            weights[pre + "b_" + name] = torch.zeros(n_heads, d_head)
        weights[pre + "W_O"] = normal(n_heads, d_head, d_model)
        weights[pre + "b_O"] = torch.zeros(d_model)
    weights["unembed.W_U"] = normal(d_model, d_vocab)
    weights["unembed.b_U"] = torch.zeros(d_vocab)
    return weights


def train(
    *,
    seed: int = 0,
    steps: int = STEPS,
    skip_steps: int = SKIP_STEPS,
    batch_size: int = BATCH_SIZE,
    lr: float = LR,
    line: Line | None = None,
    progress: bool = False,
) -> tuple[nn.Module, list[float]]:
    """Train a fresh model from `seed`; returns it (eval mode) and the loss at every step.

    skip_steps of warm-up, then `steps` on repeated segments (see the module docstring). The
    learning rate warms up over 100 steps, holds, and decays on a cosine to a tenth over the last
    40% of all steps. Same seed and settings, same weights (same machine and torch build).
    """
    model = load_weights(tiny_transformer(**CONFIG, line=line), init_weights(seed)).train()
    data = torch.Generator().manual_seed(10_000 + seed)
    skip_map = torch.randperm(CONFIG["d_vocab"], generator=data)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=WEIGHT_DECAY)
    total = skip_steps + steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: _lr_factor(step, total))

    def loss_at(step: int) -> Tensor:
        if step < skip_steps:
            tokens = _skip_bigrams(batch_size, data, SHORT, skip_map)
        else:
            tokens = _repeats(batch_size, data, seq_len_at(step - skip_steps)).tokens
        return next_token_loss(model, tokens)[:, 1:].mean()

    losses = fit(model, opt, sched, total, loss_at, desc="train induction", progress=progress)
    return model.eval(), losses


def seq_len_at(step: int) -> int:
    """Sequence length at `step` of the induction phase: SHORT, then growing to n_ctx."""
    grown = (step - GROW_START) / (GROW_END - GROW_START)
    return SHORT + round((CONFIG["n_ctx"] - SHORT) * min(1.0, max(0.0, grown)))


def next_token_loss(model: nn.Module, tokens: Tensor) -> Tensor:
    """Loss of predicting tokens[:, p] from position p - 1, as [batch, seq] (column 0 is 0)."""
    logits = model(tokens)
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none"
    )
    return torch.nn.functional.pad(loss, (1, 0))


def evaluate(model: nn.Module, batch: RepeatBatch) -> dict[str, Any]:
    """Losses, both scores of every head, ablation effects, and the heads the circuit relies on.

    ablated_loss_second_occurrence[layer][head]: the loss on the second occurrence with that head's
    output (hook_z) set to zero. The induction head is the layer-1 head whose ablation costs the
    most there; the previous-token head is the layer-0 head whose ablation lowers that induction
    head's score the most (its K-composition partner). Heads are picked by what the behaviour
    needs, not by attention alone, so patching and attribution find the same ones.
    """
    scores = head_scores(model, batch)
    ind, prev = scores["induction"], scores["previous_token"]
    ablated = torch.tensor(
        [
            [_repeat_loss(model, batch, {layer: head}) for head in range(ind.shape[1])]
            for layer in range(ind.shape[0])
        ]
    )
    induction = int(ablated[1].argmax())
    without = [
        float(_ablated_scores(model, batch, head)["induction"][1, induction])
        for head in range(ind.shape[1])
    ]
    return {
        "loss_second_occurrence": _repeat_loss(model, batch, {}),
        "loss_first_occurrence": _loss(model, batch.tokens, batch.is_first, {}),
        "loss_all": _loss(model, batch.tokens, None, {}),
        "induction_scores": ind.tolist(),
        "previous_token_scores": prev.tolist(),
        "ablated_loss_second_occurrence": ablated.tolist(),
        "induction_score_without_layer0_head": without,
        "heads": {
            "previous_token": [0, int(torch.tensor(without).argmin())],
            "induction": [1, induction],
        },
    }


def _loss(model: nn.Module, tokens: Tensor, mask: Tensor | None, ablate: dict[int, int]) -> float:
    """Mean next-token loss over `mask` (None: every predicted token), some heads zeroed."""
    with torch.no_grad(), hooks(model, _zeroed(ablate)):
        loss = next_token_loss(model, tokens)
    return float(loss[:, 1:].mean() if mask is None else loss[mask].mean())


def _repeat_loss(model: nn.Module, batch: RepeatBatch, ablate: dict[int, int]) -> float:
    return _loss(model, batch.tokens, batch.is_repeat, ablate)


def _ablated_scores(model: nn.Module, batch: RepeatBatch, head: int) -> dict[str, Tensor]:
    """Head scores with layer-0 `head` zeroed."""
    with hooks(model, _zeroed({0: head})):
        return {str(k): v for k, v in head_scores(model, batch).items()}


def _zeroed(ablate: dict[int, int]) -> dict[str, Any]:
    """Hook functions that zero the output (hook_z) of head `ablate[layer]` in each layer."""

    def zero(head: int) -> Any:
        def fn(z: Tensor, site: Any) -> Tensor:
            z = z.clone()
            z[:, :, head] = 0.0
            return z

        return fn

    return {f"blocks.{layer}.attn.hook_z": zero(head) for layer, head in ablate.items()}


def _lr_factor(step: int, total: int) -> float:
    decay_from = int(0.6 * total)
    if step < 100:
        return (step + 1) / 100
    if step < decay_from:
        return 1.0
    done = (step - decay_from) / max(1, total - decay_from)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * done))


def _repeats(n: int, gen: torch.Generator, seq_len: int) -> RepeatBatch:
    """Repeated segments scaled to the sequence length (MIN_LEN..MAX_LEN at full length)."""
    min_len, max_len = min(MIN_LEN, max(3, seq_len // 6)), min(MAX_LEN, seq_len * 2 // 5)
    return sample(n, gen, seq_len, min_len, max_len, CONFIG["d_vocab"])


def _skip_bigrams(n: int, gen: torch.Generator, seq_len: int, skip_map: Tensor) -> Tensor:
    """Random tokens; with probability 1/2 a token is skip_map[the token two places back]."""
    tokens = torch.randint(len(skip_map), (n, seq_len), generator=gen)
    follow = torch.rand(n, seq_len, generator=gen) < 0.5
    for p in range(2, seq_len):
        tokens[:, p] = torch.where(follow[:, p], skip_map[tokens[:, p - 2]], tokens[:, p])
    return tokens


def main(argv: list[str] | None = None) -> None:
    """The command line: train, save the weights and the JSON record, log the figures."""

    def run(seed: int, steps: int) -> tuple[nn.Module, dict[str, Any], str]:
        model, losses = train(seed=seed, steps=steps, progress=True)
        settings = {
            "skip_steps": SKIP_STEPS, "batch_size": BATCH_SIZE, "lr": LR,
            "weight_decay": WEIGHT_DECAY, "seq_len_schedule": [SHORT, GROW_START, GROW_END],
            "segment_lengths": [MIN_LEN, MAX_LEN],
            "loss_every_100_steps": [round(x, 4) for x in losses[::100]] + [round(losses[-1], 4)],
        }  # fmt: skip
        return model, settings, f"final loss {losses[-1]:.3f}"

    def figures(model: nn.Module) -> dict[str, Any]:
        return {"seed": EVAL_SEED, "n": 512,
                **evaluate(model, repeated_tokens(512, seed=EVAL_SEED))}  # fmt: skip

    train_command(argv, name="induction", steps=STEPS, config=CONFIG, train=run,
                  evaluate=figures, steps_help="steps on repeated segments")  # fmt: skip


if __name__ == "__main__":
    main()
