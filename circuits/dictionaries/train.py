"""Train a sparse dictionary, an SAE or a transcoder, on activations streamed in batches.

    d = cc.train_dictionary(cache, 512, site="blocks.0.hook_resid_post", activation="topk", k=32)

The recipe, kept to what the methods need to work:

- Scale: inputs (and a transcoder's targets) are scaled so that E||x||^2 = d, measured on the
  first batch (Anthropic's April 2024 update), so the default coefficients mean the same at any
  site. The scale is folded back into the returned weights: latents are in the activation's units
  and decoder rows have unit norm.
- Init: W_enc uniform in +-1/sqrt(d_in), W_dec = W_enc.T with unit rows (a transcoder whose
  widths differ draws its own, also with unit rows), b_enc = 0, b_dec = the mean of the first
  batch's targets, a JumpReLU threshold of `threshold`. An SAE subtracts b_dec from its input
  before encoding.
- Loss: squared error (summed over features, averaged over rows) plus a sparsity term whose
  coefficient grows linearly from 0 over the first `warmup` fraction of steps:
  relu: `l1` * sum_i z_i ||W_dec[i]|| (the L1 penalty weighted by decoder norms);
  topk: none (k latents fire on every row);
  jumprelu: `l0` * the number of active latents (Rajamanoharan et al. 2024). The step is not
  differentiable, so the threshold gets straight-through gradients, a rectangle kernel of width
  `bandwidth` around it, from both the reconstruction and the L0 term; the encoder learns from
  the reconstruction alone.
- Optimiser: Adam at `lr`, decaying linearly to 0 over the last `decay` fraction of steps;
  decoder rows are renormalised to unit norm after every step.
- Dead latents (all activations): every `resample_every` steps in the first half of training,
  each latent that has not fired since the last check is resampled (Bricken et al. 2023): a row
  of the current batch is drawn with probability proportional to its squared error; the latent's
  decoder row becomes that row's error direction, its encoder column the same direction (a
  transcoder's: the centred input row) at 0.2 times the mean norm of the live columns, its bias
  0, and Adam's moments for it are reset. One mechanism for every activation (topk included,
  where AuxK would be the other choice) keeps the loop simple.

The loop is a plain PyTorch loop: nothing in it waits on the device but the progress bar's
figures (loss, L0, fraction of variance explained, read every SHOW_EVERY steps when the bar is
shown) and the dead-latent checks. Which latents fired is read off the decoder's gradient: a
row is zero when its latent fired on no row of the batch (and not otherwise, unless the error
where it fired is exactly zero), n x d numbers to read instead of rows x n latents.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from circuits.checks import check_int, check_number
from circuits.errors import ConfigError, InputError
from circuits.loops import progress_bar
from circuits.options import check_choice, configure

from .config import Activation, DictionaryConfig, Kind
from .data import Rows, as_rows
from .dictionary import Dictionary

__all__ = ["TrainConfig", "train_dictionary"]

logger = logging.getLogger(__name__)

SHOW_EVERY = 25  # steps between the progress bar's figures (each read waits on the device)
RESAMPLE_SCALE = 0.2  # a resampled encoder column's norm, relative to the live ones' mean


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Options of `train_dictionary` (module docstring for what each does).

    kind, activation, k: what is trained ("sae" or "transcoder"; "relu", "topk" with k latents
        per row, or "jumprelu"). l1: relu's sparsity coefficient; l0: jumprelu's. bandwidth,
        threshold: jumprelu's straight-through kernel width and initial threshold, in the scaled
        units where E||x||^2 = d. lr, batch_size: Adam's rate and rows per step. steps or
        epochs: how long (default one epoch). warmup, decay: fractions of the steps over which
        the sparsity coefficient ramps up and the rate ramps down. resample_every: steps
        between dead-latent checks (None: never). buffer: rows are shuffled within this many
        batches (0: in order). seed: fixes the init, the shuffle and the resampling.
    """

    kind: Kind = "sae"
    activation: Activation = "relu"
    k: int | None = None
    l1: float = 5.0
    l0: float = 1.0
    bandwidth: float = 0.1
    threshold: float = 0.1
    lr: float = 1e-3
    batch_size: int = 4096
    steps: int | None = None
    epochs: int | None = None
    warmup: float = 0.05
    decay: float = 0.2
    resample_every: int | None = 250
    buffer: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice(self.kind, Kind, "kind")
        check_choice(self.activation, Activation, "activation")
        if self.activation == "topk":
            check_int(self.k, "k (the number of latents topk keeps)")
        elif self.k is not None:
            raise ConfigError(
                f"k is the topk activation's option; activation is {self.activation!r}"
            )
        for name in ("l1", "l0"):
            check_number(getattr(self, name), name, low=0)
        for name in ("bandwidth", "threshold", "lr"):
            if not check_number(getattr(self, name), name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        check_int(self.batch_size, "batch_size")
        check_int(self.steps, "steps", allow_none=True)
        check_int(self.epochs, "epochs", allow_none=True)
        if self.steps is not None and self.epochs is not None:
            raise ConfigError("give steps= or epochs=, not both")
        check_number(self.warmup, "warmup", low=0, high=1)
        check_number(self.decay, "decay", low=0, high=1)
        check_int(self.resample_every, "resample_every", allow_none=True)
        check_int(self.buffer, "buffer", low=0)
        check_int(self.seed, "seed", low=0)

    @classmethod
    def of(cls, config: TrainConfig | None, options: Mapping[str, Any]) -> TrainConfig:
        """`config` (or the defaults) with `options` set."""
        return configure(cls, config, options, what="train_dictionary")


def train_dictionary(
    acts: Any,
    n_latents: int,
    config: TrainConfig | None = None,
    *,
    site: str | None = None,
    target_site: str | None = None,
    axis: str | None = None,
    dim: int | None = None,
    device: torch.device | str | None = None,
    progress: bool | None = None,
    **options: Any,
) -> Dictionary:
    """Train a dictionary of `n_latents` latents on `acts`; returns the Dictionary.

    acts: a tensor (features last, or on axis `dim`), a pair (inputs, targets) for a
        transcoder, an ActivationCache or a DiskCache (read a shard at a time) with `site=`
        (and `target_site=`, the site a transcoder predicts); `axis` names the feature axis
        ("channel" where the site has one, else the last). Every other axis becomes rows.
    config, options: a `TrainConfig` or its fields as keywords (kind, activation, k, l1, l0,
        lr, batch_size, steps, epochs, seed, ...); keywords override the config's fields.
    device: where to train (default: where the activations are). progress: the tqdm bar.

    For example:

        d = cc.train_dictionary(cache, 512, site="blocks.0.hook_resid_post", steps=5000)
        d = cc.train_dictionary(acts, 64, activation="topk", k=8, lr=3e-3)     # [rows, d]
        t = cc.train_dictionary(cache, 1024, kind="transcoder", site="blocks.0.ln2.hook_normalized",
                                target_site="blocks.0.hook_mlp_out")

    Raises:
        ConfigError: an unknown or out-of-range option (n_latents < 1, k > n_latents, steps and
            epochs both), or a site / axis / dim that does not fit the kind of `acts`.
        SiteNotFoundError: a site the cache does not hold (the closest names are listed).
        InputError: activations that are not float, hold NaN or infinite values or are all
            zero, or a feature axis the site does not have.
        ShapeMismatchError: a transcoder's input and target rows differ in number.
    """
    cfg = TrainConfig.of(config, options)
    check_int(n_latents, "n_latents")
    rows = as_rows(acts, site=site, target_site=target_site, axis=axis, dim=dim,
                   transcoder=cfg.kind == "transcoder")  # fmt: skip
    shape = DictionaryConfig(
        d_in=rows.d_in, n_latents=n_latents, d_out=rows.d_out, kind=cfg.kind,
        activation=cfg.activation, k=cfg.k, site=rows.site, target_site=rows.target_site,
        axis=rows.axis, apply_b_dec_to_input=cfg.kind == "sae",
    )  # fmt: skip
    where = torch.device(device) if device is not None else rows.device
    total = cfg.steps or (cfg.epochs or 1) * math.ceil(rows.rows / cfg.batch_size)
    batches = _stream(rows, cfg, where)
    first = next(batches)
    target = first[0] if first[1] is None else first[1]
    scale_x, scale_y = _scale(first[0]), _scale(target)
    params = _init(shape, cfg, target, scale_y, where)
    opt = torch.optim.Adam(list(params.values()), lr=cfg.lr, fused=where.type == "cuda")
    gen = torch.Generator().manual_seed(cfg.seed)
    fired = torch.zeros(n_latents, dtype=torch.bool, device=where)
    resample_until = total // 2 if cfg.resample_every else 0
    with progress_bar(total, "dictionary", progress, unit="step") as bar:
        for step, (x, y) in enumerate(itertools.chain([first], batches)):
            x = x * scale_x
            y = x if y is None else y * scale_y
            for group in opt.param_groups:
                group["lr"] = cfg.lr * _ramp(total - step, cfg.decay * total)
            pre, z, err = _forward(params, x, y, cfg)
            mse = err.square().sum(-1).mean()
            loss = mse + _ramp(step + 1, cfg.warmup * total) * _penalty(params, pre, z, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            w_dec = params["W_dec"]
            if step < resample_until and w_dec.grad is not None:
                fired |= w_dec.grad.any(1)  # module docstring
            opt.step()
            with torch.no_grad():
                w_dec.div_(w_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))
                if step < resample_until and (step + 1) % int(cfg.resample_every or 1) == 0:
                    _resample(params, opt, ~fired, x, err, cfg, gen)
                    fired.zero_()
                if not bar.disable and (step % SHOW_EVERY == 0 or step == total - 1):
                    bar.set_postfix(_figures(loss, z, err, y), refresh=False)
            bar.update(1)
            if step + 1 == cfg.steps:
                break
    logger.debug("trained %s for %d steps", shape, step + 1)
    return _dictionary(shape, params, scale_x, scale_y)


def _stream(rows: Rows, cfg: TrainConfig, device: torch.device) -> Iterator[tuple[Tensor, Any]]:
    """Batches over `epochs` passes (or passes without end for `steps`), each shuffled anew."""
    for epoch in itertools.count():
        if cfg.steps is None and epoch == (cfg.epochs or 1):
            return
        seed = cfg.seed * 1_000_003 + epoch
        yield from rows.batches(cfg.batch_size, buffer=cfg.buffer, seed=seed, device=device)


def _scale(t: Tensor) -> float:
    """The factor that makes the mean squared norm of the rows equal their width."""
    mean = float(t.float().square().sum(-1).mean())
    if not mean > 0:
        raise InputError("the activations are all zero; there is nothing for a dictionary to learn")
    return math.sqrt(t.shape[-1] / mean)


def _init(
    shape: DictionaryConfig, cfg: TrainConfig, target: Tensor, scale: float, device: torch.device
) -> dict[str, Tensor]:
    """Trainable tensors in the scaled units (module docstring), seeded by cfg.seed."""
    gen = torch.Generator().manual_seed(cfg.seed)
    bound = 1 / math.sqrt(shape.d_in)
    w_enc = torch.rand(shape.d_in, shape.n_latents, generator=gen) * 2 * bound - bound
    if shape.width == shape.d_in:
        w_dec = w_enc.T.contiguous()
    else:
        w_dec = torch.rand(shape.n_latents, shape.width, generator=gen) * 2 * bound - bound
    params = {
        "W_enc": w_enc,
        "b_enc": torch.zeros(shape.n_latents),
        "W_dec": w_dec / w_dec.norm(dim=1, keepdim=True),
        "b_dec": (target.float() * scale).mean(0).cpu(),
    }
    if cfg.activation == "jumprelu":
        params["log_threshold"] = torch.full((shape.n_latents,), math.log(cfg.threshold))
    return {name: t.to(device).requires_grad_(True) for name, t in params.items()}


def _forward(
    p: dict[str, Tensor], x: Tensor, y: Tensor, cfg: TrainConfig
) -> tuple[Tensor, Tensor, Tensor]:
    """The pre-activations, the latents and the error (prediction - target) of a batch."""
    pre = (x - p["b_dec"] if cfg.kind == "sae" else x) @ p["W_enc"] + p["b_enc"]
    if cfg.activation == "relu":
        z = torch.relu(pre)
    elif cfg.activation == "topk":
        top = pre.topk(int(cfg.k or 1), dim=-1)
        z = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    else:
        z = _JumpReLU.apply(pre, p["log_threshold"].exp(), cfg.bandwidth)
    return pre, z, z @ p["W_dec"] + p["b_dec"] - y


def _penalty(p: dict[str, Tensor], pre: Tensor, z: Tensor, cfg: TrainConfig) -> Tensor | float:
    """The sparsity term: weighted L1 (relu), coefficient * L0 (jumprelu), none (topk)."""
    if cfg.activation == "relu":
        return cfg.l1 * (z @ p["W_dec"].norm(dim=1)).mean()
    if cfg.activation == "jumprelu":
        return cfg.l0 * _Step.apply(pre, p["log_threshold"].exp(), cfg.bandwidth).sum(-1).mean()
    return 0.0


def _ramp(done: float, span: float) -> float:
    """min(1, done / span): a linear ramp over `span` steps (none when span is 0)."""
    return 1.0 if span <= 0 else min(1.0, max(0.0, done / span))


@torch.no_grad()
def _resample(
    p: dict[str, Tensor],
    opt: torch.optim.Optimizer,
    dead: Tensor,
    x: Tensor,
    err: Tensor,
    cfg: TrainConfig,
    gen: torch.Generator,
) -> None:
    """Give each dead latent a direction the dictionary reconstructs badly (module docstring)."""
    idx = dead.nonzero().squeeze(1)
    weights = err.square().sum(-1).float().cpu()
    if len(idx) == 0 or not weights.sum() > 0:
        return
    rows = torch.multinomial(weights, len(idx), replacement=True, generator=gen).to(x.device)
    out_dir = _unit(-err[rows])
    in_dir = out_dir if cfg.kind == "sae" else _unit(x[rows] - x.mean(0))
    live = p["W_enc"][:, ~dead]
    norm = live.norm(dim=0).mean() if live.shape[1] else torch.tensor(1.0)
    p["W_enc"][:, idx] = in_dir.T * RESAMPLE_SCALE * norm
    p["b_enc"][idx] = 0
    p["W_dec"][idx] = out_dir
    if "log_threshold" in p:
        p["log_threshold"][idx] = math.log(cfg.threshold)
    for name, axis in (("W_enc", 1), ("b_enc", 0), ("W_dec", 0), ("log_threshold", 0)):
        state = opt.state.get(p[name], {}) if name in p else {}
        for moment in ("exp_avg", "exp_avg_sq"):
            if moment in state:
                state[moment].index_fill_(axis, idx, 0.0)
    logger.debug("resampled %d dead latents", len(idx))


def _unit(t: Tensor) -> Tensor:
    return t / t.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _figures(loss: Tensor, z: Tensor, err: Tensor, y: Tensor) -> dict[str, str]:
    """The progress bar's loss, L0 and fraction of variance explained on this batch."""
    fve = 1 - err.square().sum() / (y - y.mean(0)).square().sum().clamp_min(1e-12)
    l0 = (z > 0).sum(-1).float().mean()
    return {"loss": f"{float(loss):.4g}", "l0": f"{float(l0):.1f}", "fve": f"{float(fve):.3f}"}


def _dictionary(
    shape: DictionaryConfig, p: dict[str, Tensor], scale_x: float, scale_y: float
) -> Dictionary:
    """The trained tensors back in the activation's units (module docstring): with inputs
    scaled by s_x and targets by s_y, z = z' / s_y."""
    w = {name: t.detach() for name, t in p.items()}
    threshold = w["log_threshold"].exp() / scale_y if "log_threshold" in w else None
    return Dictionary(
        shape,
        W_enc=w["W_enc"] * (scale_x / scale_y),
        b_enc=w["b_enc"] / scale_y,
        W_dec=w["W_dec"].clone(),
        b_dec=w["b_dec"] / scale_y,
        threshold=threshold,
    )


class _JumpReLU(torch.autograd.Function):
    """pre * (pre > theta); d/d theta := -(theta / eps) within eps / 2 of theta."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor, theta: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        pre, theta = ctx.saved_tensors
        near = (pre - theta).abs() < ctx.eps / 2
        d_theta = -(theta / ctx.eps) * (grad * near).sum(0)
        return grad * (pre > theta), d_theta, None


class _Step(torch.autograd.Function):
    """(pre > theta) as a float; d/d theta := -1 / eps within eps / 2 of theta, d/d pre := 0."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor, theta: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor, None]:
        pre, theta = ctx.saved_tensors
        near = (pre - theta).abs() < ctx.eps / 2
        return None, -(grad * near).sum(0) / ctx.eps, None
