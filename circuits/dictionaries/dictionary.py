"""Dictionary: a trained SAE or transcoder (config + tensors), and its feature basis.

    d = cc.train_dictionary(acts, 512)          # or cc.load_dictionary("folder")
    z = d.encode(x)                             # [..., d_in] -> [..., n_latents], sparse
    x_hat = d.decode(z)                         # [..., n_latents] -> [..., d_out]
    d.error(x)                                  # what the dictionary misses: x - x_hat
    basis = d.as_basis()                        # a FeatureBasis patching and attribution accept

Tensors follow SAELens: W_enc [d_in, n], b_enc [n], W_dec [n, d_out], b_dec [d_out] and, for
JumpReLU, threshold [n]. Rows are features-last; the basis moves a site's feature axis (the
channel axis of a conv activation, say) last and back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuits.errors import ConfigError, InputError, ShapeMismatchError
from circuits.features import Which, _check_axis, _values, _which

from .config import DictionaryConfig

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Dictionary", "DictionaryBasis"]


@dataclass(frozen=True, eq=False)
class Dictionary:
    """A sparse dictionary: `config` plus W_enc, b_enc, W_dec, b_dec (and threshold for
    JumpReLU). Build one with `cc.train_dictionary` or `cc.load_dictionary`."""

    config: DictionaryConfig
    W_enc: Float[Tensor, "d_in n"]
    b_enc: Float[Tensor, " n"]
    W_dec: Float[Tensor, "n d_out"]
    b_dec: Float[Tensor, " d_out"]
    threshold: Float[Tensor, " n"] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.config, DictionaryConfig):
            raise ConfigError(
                f"config must be a DictionaryConfig, got {type(self.config).__name__}"
            )
        c = self.config
        shapes = {
            "W_enc": (c.d_in, c.n_latents), "b_enc": (c.n_latents,),
            "W_dec": (c.n_latents, c.width), "b_dec": (c.width,),
        }  # fmt: skip
        if c.activation == "jumprelu":
            shapes["threshold"] = (c.n_latents,)
        elif self.threshold is not None:
            raise ConfigError(f"threshold is JumpReLU's; activation is {c.activation!r}")
        for name, shape in shapes.items():
            t = getattr(self, name)
            if not isinstance(t, Tensor) or not t.is_floating_point():
                got = type(t).__name__ if not isinstance(t, Tensor) else str(t.dtype)
                raise InputError(f"{name} must be a float tensor of shape {shape}, got {got}")
            if tuple(t.shape) != shape:
                raise ShapeMismatchError(
                    f"{name} has shape {tuple(t.shape)} but the config (d_in={c.d_in}, "
                    f"n_latents={c.n_latents}, d_out={c.width}) needs {shape}"
                )
            if not bool(torch.isfinite(t).all()):
                raise InputError(f"{name} holds NaN or infinite values")

    @property
    def n_latents(self) -> int:
        """The number of latents n (`config.n_latents`): the width of encode's output."""
        return self.config.n_latents

    def pre_activation(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... n"]:
        """x W_enc + b_enc (after subtracting b_dec when the config says so)."""
        _check_axis(x, -1, self.config.d_in, "input (rows, features last)")
        if self.config.apply_b_dec_to_input:
            x = x - self.b_dec.to(x)
        return x @ self.W_enc.to(x) + self.b_enc.to(x)

    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... n"]:
        """The latents of x: relu, topk or jumprelu of the pre-activation."""
        pre = self.pre_activation(x)
        kind = self.config.activation
        if kind == "relu":
            return torch.relu(pre)
        if kind == "jumprelu":
            assert self.threshold is not None  # checked in __post_init__
            return pre * (pre > self.threshold.to(pre))
        top = pre.topk(int(self.config.k or 1), dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))

    def decode(self, z: Float[Tensor, "... n"]) -> Float[Tensor, "... d_out"]:
        """z W_dec + b_dec."""
        _check_axis(z, -1, self.n_latents, "latents (rows, latents last)")
        return z @ self.W_dec.to(z) + self.b_dec.to(z)

    def reconstruct(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_out"]:
        """decode(encode(x)): the SAE's reconstruction, or the transcoder's prediction."""
        return self.decode(self.encode(x))

    def error(
        self, x: Float[Tensor, "... d_in"], target: Float[Tensor, "... d_out"] | None = None
    ) -> Float[Tensor, "... d_out"]:
        """What the dictionary misses: target - reconstruct(x) (target = x for an SAE; a
        transcoder needs the site it predicts)."""
        if target is None:
            if self.config.kind == "transcoder":
                raise InputError(
                    "a transcoder's error needs the target: error(x, target) with target the "
                    f"activation at {self.config.target_site or 'the site it predicts'}"
                )
            target = x
        out = self.reconstruct(x)
        if target.shape != out.shape:
            raise ShapeMismatchError(
                f"target has shape {tuple(target.shape)}, the prediction {tuple(out.shape)}"
            )
        return target - out

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> Dictionary:
        """A copy with every tensor on `device` / in `dtype`."""
        w_enc, b_enc, w_dec, b_dec = (
            t.to(device=device, dtype=dtype)
            for t in (self.W_enc, self.b_enc, self.W_dec, self.b_dec)
        )
        threshold = (
            None if self.threshold is None else self.threshold.to(device=device, dtype=dtype)
        )
        return Dictionary(self.config, w_enc, b_enc, w_dec, b_dec, threshold)

    def evaluate(self, acts: Any, **options: Any) -> pd.DataFrame:
        """Reconstruction, sparsity and (given model, inputs and metric) the spliced effect on
        `acts`: `circuits.dictionaries.evaluate_dictionary(self, acts, **options)`.

            d.evaluate(cache)[["fve", "l0", "dead", "dense"]]

        Raises what `evaluate_dictionary` raises.
        """
        from .evaluate import evaluate_dictionary  # evaluate.py imports this module

        return evaluate_dictionary(self, acts, **options)

    def save(self, folder: Any, *, overwrite: bool = False, layout: str = "saelens") -> Path:
        """Write the dictionary to `folder` in SAELens's layout (cfg.json and
        sae_weights.safetensors), or circuit-tracer's for a transcoder: `save_dictionary`.

            d.save("sae/"); cc.load_dictionary("sae/")

        Raises what `circuits.dictionaries.save_dictionary` raises.
        """
        from .files import save_dictionary  # files.py imports this module

        return save_dictionary(self, folder, overwrite=overwrite, layout=layout)  # type: ignore[arg-type]

    def as_basis(self, *, dim: int = -1, site: str | None = None) -> DictionaryBasis:
        """The latents as a FeatureBasis at `site` (default: the config's), on axis `dim` of the
        site's activation (-1 for d_model; 1 for a conv site's channels)."""
        if self.config.kind != "sae":
            raise ConfigError(
                "a transcoder reads one site and writes another, so it is not a basis at one site; "
                "use an SAE (kind='sae') as a basis, and transcoders in feature graphs"
            )
        return DictionaryBasis(self, dim=dim, site=site or self.config.site)

    def __repr__(self) -> str:
        c = self.config
        where = f", site={c.site!r}" if c.site else ""
        return (
            f"Dictionary({c.kind}, {c.activation}, d_in={c.d_in}, n_latents={c.n_latents}{where})"
        )


@dataclass(frozen=True, eq=False)
class DictionaryBasis:
    """An SAE's latents as features at one site (`circuits.features.FeatureBasis`).

    encode gives the latents; decode the reconstruction (b_dec included), so act minus
    decode(encode(act)) is the error term. ablate and steer move act along decoder rows and leave
    the error term as it was: ablating latent i adds (value - z_i) W_dec[i].
    """

    dictionary: Dictionary
    dim: int = -1
    site: str | None = None
    labels: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if isinstance(self.dim, bool) or not isinstance(self.dim, int):
            raise ConfigError(f"dim must be an int (an axis index), got {self.dim!r}")
        n = self.n_features
        labels = self.labels or tuple(
            f"{self.site}:latent{i}" if self.site else f"latent{i}" for i in range(n)
        )
        if len(labels) != n:
            raise ConfigError(f"labels must name each of the {n} latents, got {len(labels)}")
        object.__setattr__(self, "labels", tuple(str(label) for label in labels))

    @property
    def d(self) -> int:
        """The size of the site's axis `dim` the basis reads: the dictionary's d_in."""
        return self.dictionary.config.d_in

    @property
    def n_features(self) -> int:
        """The number of features k: the dictionary's latents (the error term not counted)."""
        return self.dictionary.n_latents

    def encode(self, act: Tensor) -> Tensor:
        """The latents: axis `dim` of size d becomes n_latents."""
        _check_axis(act, self.dim, self.d, "activation")
        return self.dictionary.encode(act.movedim(self.dim, -1)).movedim(-1, self.dim)

    def decode(self, coeffs: Tensor) -> Tensor:
        """The reconstruction z W_dec + b_dec: axis `dim` of size n_latents becomes d."""
        _check_axis(coeffs, self.dim, self.n_features, "coefficients")
        return self.dictionary.decode(coeffs.movedim(self.dim, -1)).movedim(-1, self.dim)

    def ablate(
        self, act: Tensor, which: Which = None, value: float | Tensor | None = None
    ) -> Tensor:
        """Set the chosen latents to 0 (or `value`: a number, one per latent, or laid out like
        encode(act) restricted to them), keeping the error term: act + (value - z) W_dec."""
        idx = _which(which, self.n_features).to(act.device)
        z = self.encode(act).movedim(self.dim, -1)[..., idx]
        target = _values(value, len(idx), z, dim=self.dim, ndim=act.ndim)
        shift = (target - z) @ self.dictionary.W_dec.to(act)[idx]
        return act + shift.movedim(-1, self.dim)

    def steer(self, act: Tensor, which: Which, alpha: float | Tensor) -> Tensor:
        """act + alpha * W_dec[i] for each chosen latent i (alpha one number or one per latent)."""
        _check_axis(act, self.dim, self.d, "activation")
        idx = _which(which, self.n_features).to(act.device)
        rows = self.dictionary.W_dec.to(act)[idx]
        shift = torch.as_tensor(alpha, dtype=act.dtype, device=act.device).reshape(-1)
        if shift.numel() not in (1, len(idx)):
            raise ShapeMismatchError(
                f"alpha must be a number or one per chosen latent ({len(idx)}), got "
                f"{shift.numel()} values"
            )
        vector = (shift[:, None] * rows).sum(0) if shift.numel() > 1 else shift * rows.sum(0)
        return (act.movedim(self.dim, -1) + vector).movedim(-1, self.dim)

    def __repr__(self) -> str:
        return f"DictionaryBasis({self.dictionary!r}, dim={self.dim})"
