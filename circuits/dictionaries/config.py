"""What a dictionary is, apart from its tensors: a frozen, validated config.

A sparse autoencoder (kind "sae") reconstructs the activation it reads; a transcoder (kind
"transcoder") reads one site and predicts another (an MLP's input -> its output). Both encode a
row x [d_in] into n latents z = act(x W_enc + b_enc) and decode z W_dec + b_dec [d_out].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from circuits.checks import check_int
from circuits.errors import ConfigError
from circuits.options import check_choice

Kind = Literal["sae", "transcoder"]
"""What a dictionary predicts: "sae" reconstructs the activation it reads (d_out = d_in);
"transcoder" reads one site and predicts another (`target_site`, e.g. an MLP's output)."""
Activation = Literal["relu", "topk", "jumprelu"]
"""How pre-activations become latents: "relu"; "topk" keeps the k largest (then relu); "jumprelu"
keeps a latent's pre-activation where it exceeds its threshold (one per latent), else 0."""

__all__ = ["Activation", "DictionaryConfig", "Kind"]


@dataclass(frozen=True, kw_only=True)
class DictionaryConfig:
    """A dictionary's shape and meaning.

    d_in, n_latents, d_out: input width, number of latents, output width (d_out = d_in for an
        SAE). kind: "sae" or "transcoder". activation: "relu", "topk" (keep the k largest
        pre-activations, then relu) or "jumprelu" (z = pre where pre > threshold, else 0).
    k: the number of latents "topk" keeps. site: the site it reads; target_site: the site a
        transcoder predicts. axis: the name of the feature axis at the site ("d_model",
        "channel"; every other axis becomes rows).
    apply_b_dec_to_input: subtract b_dec from x before encoding (SAELens's default for SAEs).
    """

    d_in: int
    n_latents: int
    d_out: int | None = None
    kind: Kind = "sae"
    activation: Activation = "relu"
    k: int | None = None
    site: str | None = None
    target_site: str | None = None
    axis: str | None = None
    apply_b_dec_to_input: bool = False

    def __post_init__(self) -> None:
        check_int(self.d_in, "d_in")
        check_int(self.n_latents, "n_latents")
        check_int(self.d_out, "d_out", allow_none=True)
        check_choice(self.kind, Kind, "kind")
        check_choice(self.activation, Activation, "activation")
        if self.d_out is None:
            object.__setattr__(self, "d_out", self.d_in)
        if self.kind == "sae" and self.d_out != self.d_in:
            raise ConfigError(
                f"an SAE reconstructs its input, so d_out must equal d_in ({self.d_in}), got "
                f"{self.d_out}; use kind='transcoder' to predict another site"
            )
        if self.activation == "topk":
            check_int(self.k, "k (the number of latents topk keeps)")
            if self.k is not None and self.k > self.n_latents:
                raise ConfigError(f"k={self.k} exceeds n_latents={self.n_latents}")
        elif self.k is not None:
            raise ConfigError(
                f"k is the topk activation's option; activation is {self.activation!r}"
            )
        for name in ("site", "target_site", "axis"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"{name} must be a non-empty name or None, got {value!r}")
        if self.kind == "sae" and self.target_site is not None:
            raise ConfigError("target_site is a transcoder's; an SAE predicts its own site")
        if not isinstance(self.apply_b_dec_to_input, bool):
            raise ConfigError(
                f"apply_b_dec_to_input must be True or False, got {self.apply_b_dec_to_input!r}"
            )

    @property
    def width(self) -> int:
        """d_out, never None after validation."""
        return int(self.d_out or self.d_in)
