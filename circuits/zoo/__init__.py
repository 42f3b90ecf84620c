"""Tiny models whose circuits are known, for tests, tutorials and the demo. Nothing downloads.

- `tiny_transformer(...)`: a random TransformerLens model from a config (either line).
- `corner_cnn()`: a conv net with hand-set weights and its true channel circuit
  (`model.circuit`); `corner_images(n)` draws stimuli with corner labels.
- `induction_transformer()`: a 2-layer attention-only transformer trained here on repeated
  random tokens (`circuits/zoo/train_induction.py` reproduces it); `induction_pair(n)` gives
  clean / corrupted inputs, `head_scores` its heads' induction and previous-token scores.
"""

from circuits.zoo.corner import CORNER_CIRCUIT, CornerCircuit, corner_cnn, corner_images
from circuits.zoo.induction import (
    INDUCTION_HEADS,
    RepeatBatch,
    head_scores,
    induction_pair,
    induction_transformer,
    repeated_tokens,
)
from circuits.zoo.transformers import hooked_state_dict, load_weights, tiny_transformer

__all__ = [
    "CORNER_CIRCUIT",
    "INDUCTION_HEADS",
    "CornerCircuit",
    "RepeatBatch",
    "corner_cnn",
    "corner_images",
    "head_scores",
    "hooked_state_dict",
    "induction_pair",
    "induction_transformer",
    "load_weights",
    "repeated_tokens",
    "tiny_transformer",
]
