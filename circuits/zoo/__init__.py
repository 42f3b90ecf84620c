"""Tiny models whose circuits are known, for tests, tutorials and the demo. Nothing downloads.

- `tiny_transformer(...)`: a random TransformerLens model from a config (either line).
- `corner_cnn()`: a conv net with hand-set weights and its true channel circuit
  (`model.circuit`); `corner_images(n)` draws stimuli with corner labels.
"""

from circuits.zoo.corner import CORNER_CIRCUIT, CornerCircuit, corner_cnn, corner_images
from circuits.zoo.transformers import hooked_state_dict, load_weights, tiny_transformer

__all__ = [
    "CORNER_CIRCUIT",
    "CornerCircuit",
    "corner_cnn",
    "corner_images",
    "hooked_state_dict",
    "load_weights",
    "tiny_transformer",
]
