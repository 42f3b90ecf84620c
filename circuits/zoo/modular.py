"""A one-layer transformer trained here on modular addition: a clock, by construction.

The task (Nanda et al. 2023, "Progress measures for grokking via mechanistic
interpretability"): the input is three tokens `a b =` (a, b in 0 .. P - 1, "=" the token P), and
the answer, read at the last position, is (a + b) mod P, P = 59. The model sees half of the P^2
pairs in training (`modular_batch("train")`), with strong weight decay, and generalises to the
other half ("test") after first memorising: it groks.

What it learns is a clock. Each residue is embedded as points on a few circles, one per key
frequency k: cos and sin of 2 pi k a / P. Attention and the MLP combine the two inputs' angles
into those of a + b (cos(w(a+b)) = cos(wa) cos(wb) - sin(wa) sin(wb)), and the unembedding reads
cos(w(a + b - c)) for every answer c, largest at c = a + b. So:

- the embedding's Fourier spectrum over the residue is sparse: a few key frequencies carry
  almost all its variance (`MODULAR_KEY_FREQUENCIES`);
- keeping only the key frequencies' part of the answer's representation (restricted loss) keeps
  the loss low, removing it (excluded loss) sends the loss above chance;
- turning every key circle of a's embedding by 2 pi k d / P makes the model answer a + b + d.

`modular_transformer()` loads the shipped weights (`weights/modular.safetensors`,
HookedTransformer layout, so both transformer-lens lines load them), trained by
`circuits.zoo.train_modular`; `weights/modular.json` records the training run and every figure
above as measured on the shipped model: test accuracy 1.0 (from step 3,000 of 6,000); key
frequencies 6, 10 and 13, carrying 92% of the embedding's variance; each a circle
(circularity 0.997 to 0.998); restricted loss 3e-6 against a full loss of 1.3e-5, excluded loss
19 (chance: log 59 = 4.1); turning a's circles by +d answers a + b + d on 96% to 100% of the
pairs, for every d.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Int
from torch import Tensor, nn

from circuits.errors import InputError, ModelError
from circuits.options import check_choice
from circuits.zoo.transformers import Line, load_weights, tiny_transformer

__all__ = [
    "CONFIG",
    "MODULAR_KEY_FREQUENCIES",
    "MODULUS",
    "TRAIN_FRACTION",
    "WEIGHTS_PATH",
    "ModularBatch",
    "modular_accuracy",
    "modular_batch",
    "modular_loss",
    "modular_transformer",
]

MODULUS = 59
"""P: the answer is (a + b) mod P; the token P is "="."""

CONFIG: dict[str, Any] = dict(
    n_layers=1,
    d_model=64,
    n_heads=4,
    d_head=16,
    d_mlp=256,
    d_vocab=MODULUS + 1,
    n_ctx=3,
    act_fn="relu",
    normalization_type=None,
)
"""`tiny_transformer(**CONFIG)` builds the architecture the shipped weights fit (no LayerNorm,
as in Nanda et al.)."""

TRAIN_FRACTION = 0.5
"""The share of the P^2 pairs the model was trained on (the rest are its test split)."""

MODULAR_KEY_FREQUENCIES: tuple[int, ...] = (6, 10, 13)
"""The key frequencies of the shipped model: the fewest frequencies that carry 90% of the
variance of its embedding over the residue (`weights/modular.json` has the spectrum)."""

WEIGHTS_PATH = Path(__file__).parent / "weights" / "modular.safetensors"
SPLIT_SEED = 1  # the seeded permutation of the pairs that decides the train / test split

Split = Literal["all", "train", "test"]


@dataclass(frozen=True)
class ModularBatch:
    """Inputs `a b =` and their answers.

    tokens [n, 3]: a, b, then the "=" token (MODULUS). a, b, answer [n]: the operands and
    (a + b) mod MODULUS, the label at the last position.
    """

    tokens: Int[Tensor, "n 3"]
    a: Int[Tensor, " n"]
    b: Int[Tensor, " n"]
    answer: Int[Tensor, " n"]

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def modular_transformer(*, line: Line | None = None) -> nn.Module:
    """The trained modular-addition model (eval mode), `tiny_transformer(**CONFIG)`.

    line: "hooked" (HookedTransformer, transformer-lens 3.x) or "bridge" (TransformerBridge);
    None picks HookedTransformer where it exists.

        model = cc.zoo.modular_transformer()
        batch = cc.zoo.modular_batch("test")
        cc.zoo.modular_accuracy(model, batch)          # 1.0 on pairs it never saw

    Raises:
        ConfigError: line is not "hooked", "bridge" or None, or "hooked" without
            transformer-lens 3.x.
    """
    from safetensors.torch import load_file

    model = load_weights(tiny_transformer(**CONFIG, line=line), load_file(WEIGHTS_PATH))
    return model.eval()


def modular_batch(split: Split = "all") -> ModularBatch:
    """Every pair (a, b) in order (a-major), or the pairs of the training or test split.

        batch = cc.zoo.modular_batch()            # all 59 * 59 pairs
        batch.tokens[:2]                          # tensor([[0, 0, 59], [0, 1, 59]])

    Raises:
        ConfigError: split is not "all", "train" or "test".
    """
    check_choice(split, Split, "split")
    a, b = torch.meshgrid(torch.arange(MODULUS), torch.arange(MODULUS), indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    if split != "all":
        order = torch.randperm(MODULUS**2, generator=torch.Generator().manual_seed(SPLIT_SEED))
        n_train = int(TRAIN_FRACTION * MODULUS**2)
        rows = (order[:n_train] if split == "train" else order[n_train:]).sort().values
        a, b = a[rows], b[rows]
    tokens = torch.stack([a, b, torch.full_like(a, MODULUS)], 1)
    return ModularBatch(tokens, a, b, (a + b) % MODULUS)


def modular_loss(model: nn.Module, batch: ModularBatch, *, logits: Tensor | None = None) -> Tensor:
    """Mean cross-entropy of the answer at the last position over the P residues (a scalar);
    pass `logits` to score a run made elsewhere (an intervention, say).

        modular_loss(model, modular_batch("test"))      # about 1e-4

    Raises:
        ModelError: model is not a TransformerLens model. InputError: batch is not a
            ModularBatch, or logits are not [n, 3, d_vocab] for its n inputs.
    """
    tokens, answer = _batch(model, batch)
    if logits is None:
        logits = model(tokens)
    if not isinstance(logits, Tensor) or tuple(logits.shape[:2]) != tuple(tokens.shape):
        raise InputError(
            f"logits must be [n, 3, d_vocab] for the batch's {len(batch)} inputs, got "
            f"{getattr(logits, 'shape', type(logits).__name__)}"
        )
    return torch.nn.functional.cross_entropy(logits[:, -1, :MODULUS], answer)


def modular_accuracy(model: nn.Module, batch: ModularBatch) -> float:
    """The fraction of inputs whose top logit at the last position is (a + b) mod P.

        modular_accuracy(modular_transformer(), modular_batch("test"))   # 1.0

    Raises:
        ModelError: model is not a TransformerLens model. InputError: batch is not a
            ModularBatch.
    """
    tokens, answer = _batch(model, batch)
    with torch.no_grad():
        logits = model(tokens)
    return float((logits[:, -1, :MODULUS].argmax(-1) == answer).float().mean())


def _batch(model: nn.Module, batch: ModularBatch) -> tuple[Tensor, Tensor]:
    if getattr(model, "cfg", None) is None:
        raise ModelError(
            f"modular scores need a TransformerLens model (with .cfg), got {type(model).__name__}"
        )
    if not isinstance(batch, ModularBatch):
        raise InputError(
            f"batch must be a ModularBatch (modular_batch()), got {type(batch).__name__}"
        )
    device = next(model.parameters()).device
    return batch.tokens.to(device), batch.answer.to(device)
