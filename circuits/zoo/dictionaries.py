"""Sparse dictionaries trained here on zoo models, shipped as SAELens folders.

- `lookup_transcoder(layer)`: a transcoder of `lookup_transformer`'s MLP in that layer, reading
  `blocks.L.ln2.hook_normalized` and predicting `blocks.L.hook_mlp_out`. MLP 0 computes the
  lookup as a key-value memory over the 256 (previous, current) symbol pairs, so a good
  transcoder of it has about one latent per pair, a handful active at a time.
- `curve_sae()`: an SAE on `curve_cnn`'s `relu2` output, channels as the feature axis and every
  (image, h, w) a row: latents are curve-detector patterns at one place.
- `induction_sae(layer)`: an SAE on `induction_transformer`'s residual stream after that layer
  (`blocks.L.hook_resid_post`), every (sequence, position) a row. The model is attention-only,
  so the residual stream is all there is to read: after layer 0 it holds the token, its position
  and what the previous-token head wrote (the token before), which is what layer 1's induction
  head keys on; after layer 1 it holds what the unembedding reads, the predicted token. The
  stream before layer 0 is only the token and position embeddings, nothing computed, so it has
  no SAE.

`python -m circuits.zoo.train_dictionaries` reproduces them (seeded) and writes
`weights/dictionaries.json`, the quality report of each on held-out data.
"""

from __future__ import annotations

from pathlib import Path

from circuits.checks import check_int
from circuits.dictionaries import Dictionary, load_dictionary
from circuits.errors import ConfigError

__all__ = ["DICTIONARIES_PATH", "curve_sae", "induction_sae", "lookup_transcoder"]

DICTIONARIES_PATH = Path(__file__).parent / "weights"
"""The folder holding the shipped dictionary folders and their report, dictionaries.json."""


def lookup_transcoder(layer: int = 0) -> Dictionary:
    """The shipped transcoder of `lookup_transformer`'s MLP in `layer` (0 or 1).

        t = cc.zoo.lookup_transcoder(0)
        t.config.site, t.config.target_site   # blocks.0.ln2.hook_normalized, blocks.0.hook_mlp_out

    Raises ConfigError for a layer the model does not have.
    """
    check_int(layer, "layer", low=0)
    if layer > 1:
        raise ConfigError(f"lookup_transformer has MLPs in layers 0 and 1, got layer={layer}")
    return load_dictionary(DICTIONARIES_PATH / f"lookup_transcoder_{layer}")


def curve_sae() -> Dictionary:
    """The shipped SAE on `curve_cnn`'s relu2 channels (use `as_basis(dim=1)` on that site).

        sae = cc.zoo.curve_sae()
        z = sae.as_basis(dim=1).encode(acts)     # acts [batch, 16, h, w] -> [batch, n, h, w]

    Raises SchemaError if the shipped folder was damaged.
    """
    return load_dictionary(DICTIONARIES_PATH / "curve_sae")


def induction_sae(layer: int = 0) -> Dictionary:
    """The shipped SAE on `induction_transformer`'s residual stream after `layer` (0 or 1):
    `blocks.{layer}.hook_resid_post`, d_model 64 -> 512 latents, top-k with k = 16.

        sae = cc.zoo.induction_sae(0)
        sae.config.site                         # blocks.0.hook_resid_post
        basis = sae.as_basis()                  # its latents as features at that site

    Raises ConfigError for a layer the model does not have (SchemaError if the shipped folder
    was damaged).
    """
    check_int(layer, "layer", low=0)
    if layer > 1:
        raise ConfigError(
            f"induction_transformer has residual-stream SAEs after layers 0 and 1, got "
            f"layer={layer}"
        )
    return load_dictionary(DICTIONARIES_PATH / f"induction_sae_{layer}")
