"""Tiny models whose circuits are known, for tests, tutorials and the demo. Nothing downloads.

- `tiny_transformer(...)`: a random TransformerLens model from a config (either line).
- `corner_cnn()`: a conv net with hand-set weights and its true channel circuit
  (`model.circuit`); `corner_images(n)` draws stimuli with corner labels.
- `curve_cnn()`: a small conv net trained here to name lines and curves
  (`circuits/zoo/train_curve.py` reproduces it): conv1 line detectors at 8 orientations, conv2
  curve detectors built from the tangent line detectors. `curve_images(n)` draws labelled
  stimuli, `line_stimuli` / `arc_stimuli` clean probes, `peak_responses` a channel's tuning.
- `induction_transformer()`: a 2-layer attention-only transformer trained here on repeated
  random tokens (`circuits/zoo/train_induction.py` reproduces it); `induction_pair(n)` gives
  clean / corrupted inputs, `head_scores` its heads' induction and previous-token scores.
- `lookup_transformer()`: a 2-layer transformer with MLPs trained here on a pair lookup
  (`circuits/zoo/train_lookup.py` reproduces it): the answer at t is `LOOKUP_TABLE[x[t-1]][x[t]]`,
  a Latin square, so a previous-token head (layer 0, head 1) moves x[t-1] and MLP 0 looks the pair
  up (`LOOKUP_CIRCUIT`). `lookup_batch(n)` gives tokens and targets, `lookup_pair(n)` clean /
  corrupt inputs that differ in one previous token.
- `modular_transformer()`: a one-layer transformer trained here on (a + b) mod 59
  (`circuits/zoo/train_modular.py` reproduces it), a clock: residues on circles at the key
  frequencies `MODULAR_KEY_FREQUENCIES`; `modular_batch(split)` gives the pairs.
- `lookup_transcoder(layer)`, `curve_sae()`, `induction_sae(layer)`: sparse dictionaries trained
  here on those models (`circuits/zoo/train_dictionaries.py` reproduces them), shipped as SAELens
  folders; the induction model's are residual-stream SAEs after each layer.
"""

from circuits.zoo.corner import CORNER_CIRCUIT, CornerCircuit, corner_cnn, corner_images
from circuits.zoo.curve import (
    CURVE_DIRECTIONS,
    LINE_ORIENTATIONS,
    CurveBatch,
    arc_stimuli,
    curve_class_names,
    curve_cnn,
    curve_images,
    line_stimuli,
    peak_responses,
)
from circuits.zoo.dictionaries import (
    DICTIONARIES_PATH,
    curve_sae,
    induction_sae,
    lookup_transcoder,
)
from circuits.zoo.induction import (
    INDUCTION_HEADS,
    RepeatBatch,
    head_scores,
    induction_pair,
    induction_transformer,
    repeated_tokens,
)
from circuits.zoo.lookup import (
    LOOKUP_CIRCUIT,
    LOOKUP_TABLE,
    LookupBatch,
    LookupCircuit,
    lookup_accuracy,
    lookup_batch,
    lookup_pair,
    lookup_targets,
    lookup_transformer,
)
from circuits.zoo.modular import (
    MODULAR_KEY_FREQUENCIES,
    MODULUS,
    ModularBatch,
    modular_accuracy,
    modular_batch,
    modular_loss,
    modular_transformer,
)
from circuits.zoo.transformers import hooked_state_dict, load_weights, tiny_transformer

__all__ = [
    "CORNER_CIRCUIT",
    "CURVE_DIRECTIONS",
    "DICTIONARIES_PATH",
    "INDUCTION_HEADS",
    "LINE_ORIENTATIONS",
    "LOOKUP_CIRCUIT",
    "LOOKUP_TABLE",
    "MODULAR_KEY_FREQUENCIES",
    "MODULUS",
    "CornerCircuit",
    "CurveBatch",
    "LookupBatch",
    "LookupCircuit",
    "ModularBatch",
    "RepeatBatch",
    "arc_stimuli",
    "corner_cnn",
    "corner_images",
    "curve_class_names",
    "curve_cnn",
    "curve_images",
    "curve_sae",
    "head_scores",
    "hooked_state_dict",
    "induction_pair",
    "induction_sae",
    "induction_transformer",
    "line_stimuli",
    "load_weights",
    "lookup_accuracy",
    "lookup_batch",
    "lookup_pair",
    "lookup_targets",
    "lookup_transcoder",
    "lookup_transformer",
    "modular_accuracy",
    "modular_batch",
    "modular_loss",
    "modular_transformer",
    "peak_responses",
    "repeated_tokens",
    "tiny_transformer",
]
