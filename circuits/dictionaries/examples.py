"""Top-activating examples: what makes each dictionary latent fire, read off a dataset.

    ex = top_examples(model, tokens, transcoder, latents=[3, 17], k=8)
    ex.text(3)                # one line per example: activation, where, the tokens around it
    ex.to_frame()             # latent, rank, activation, example, pos (or h, w), context
    ex.patches(images, 5)     # a conv site: the input crops the latent saw (its receptive field)
    ex.annotate(graph)        # every feature node of these latents gets an "examples" string

The model runs over the inputs a batch at a time (stopping after the dictionary's site), or the
activations stream from a disk cache a shard at a time; each batch is encoded and merged into a
running top-k per latent. Memory stays at k x latents entries (and their token windows) plus one
batch: the activations are never held whole. A transcoder is read at its input site
(`config.site`), the site its encoder reads.

Every axis of the site's activation but the batch axis and the feature axis places an example:
"pos" for a transformer site, ("h", "w") for a conv map. Only latents that fire (activation > 0)
are kept, so a latent active on fewer than k rows has empty slots (example -1, activation 0).
Equal activations rank in input order (earlier example, then earlier place), so the result does
not depend on the batch size.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from circuits.capture import DiskCache, capture_to_disk, load_cache
from circuits.checks import check_int
from circuits.errors import ConfigError, InputError, ShapeMismatchError, SiteNotFoundError, closest
from circuits.files import as_path
from circuits.hooks import run
from circuits.loops import progress_bar
from circuits.site import INPUT_SUFFIX, Site, resolve

from .data import feature_dim
from .dictionary import Dictionary

if TYPE_CHECKING:
    import networkx as nx
    import pandas as pd
    import plotly.graph_objects as go

__all__ = ["TopExamples", "top_examples"]

logger = logging.getLogger(__name__)

Field = tuple[tuple[int, int, int], ...]
"""Per spatial axis (h, w) of a conv site: (size, stride, start) of its receptive field in input
pixels; index i of the axis sees input pixels start + i * stride up to size of them."""

POOLS = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)  # the modules that move a receptive field


@dataclass(frozen=True, eq=False)
class TopExamples:
    """The k strongest activations of chosen dictionary latents over a dataset, and where.

    latents: the latent ids [L], in the order asked for. activation [L, k]: each latent's largest
    activations, descending (0 in empty slots). example [L, k]: the input index of each (-1 in
    empty slots). where [L, k, len(axes)]: its place along `axes` ("pos", or "h" and "w"; -1 in
    empty slots). context [L, k, 2c + 1]: for token inputs, the token ids from c before to c
    after the place (-1 off the sequence), else None. frequency [L]: the share of rows on which
    each latent fired. site, target_site: where the dictionary reads (and, a transcoder, writes).
    field: a conv site's receptive field (`Field`), None elsewhere. rows: rows scanned.
    decode: token id -> text, for contexts (None: the id itself).
    """

    latents: Int[Tensor, " L"]
    activation: Float[Tensor, "L k"]
    example: Int[Tensor, "L k"]
    where: Int[Tensor, "L k n_axes"]
    axes: tuple[str, ...]
    site: str
    frequency: Float[Tensor, " L"]
    rows: int
    context: Int[Tensor, "L k window"] | None = None
    target_site: str | None = None
    field: Field | None = None
    decode: Callable[[int], str] | None = None

    @property
    def k(self) -> int:
        """The number of examples kept per latent (some slots may be empty)."""
        return int(self.activation.shape[1])

    def to_frame(self, *, decode: Callable[[int], str] | None = None) -> pd.DataFrame:
        """One row per kept example: latent, rank (0 = strongest), activation, example (the
        input's index), the place (pos, or h and w) and, for token inputs, context: the tokens
        around the place with the max token marked like «tok». Empty slots are left out."""
        import pandas as pd

        rows = []
        for r, latent in enumerate(self.latents.tolist()):
            for j in range(self.k):
                if int(self.example[r, j]) < 0:
                    continue
                row = {"latent": latent, "rank": j, "activation": float(self.activation[r, j]),
                       "example": int(self.example[r, j])}  # fmt: skip
                row |= {
                    a: int(v) for a, v in zip(self.axes, self.where[r, j].tolist(), strict=True)
                }
                if self.context is not None:
                    row["context"] = self._context(r, j, decode)
                rows.append(row)
        columns = ["latent", "rank", "activation", "example", *self.axes]
        return pd.DataFrame(
            rows, columns=columns + (["context"] if self.context is not None else [])
        )

    def top(self, k: int = 10) -> pd.DataFrame:
        """The k strongest examples over every latent (`to_frame` rows by activation)."""
        k = check_int(k, "k")
        return self.to_frame().sort_values("activation", ascending=False).head(k)

    def text(self, latent: int, *, decode: Callable[[int], str] | None = None) -> str:
        """A short description of `latent` for a node's hover: one line per example, strongest
        first: activation, input index and place, and for tokens the context (max token «»)."""
        r = self._row(latent)
        lines = []
        for j in range(self.k):
            ex = int(self.example[r, j])
            if ex < 0:
                break
            place = ", ".join(
                f"{a}={v}" for a, v in zip(self.axes, self.where[r, j].tolist(), strict=True)
            )
            line = f"{float(self.activation[r, j]):.3g}  #{ex}" + (f" {place}" if place else "")
            if self.context is not None:
                line += f": {self._context(r, j, decode)}"
            lines.append(line)
        return "\n".join(lines) if lines else f"latent {latent} never fired on these inputs"

    def patches(
        self, images: Float[Tensor, "n c h w"], latent: int, *, fill: float = 0.0
    ) -> Float[Tensor, "m c fh fw"]:
        """The input crops `latent`'s top examples saw: each example's receptive field around
        its (h, w), from `images` (the inputs the examples were read from), padded with `fill`
        where the field runs off the image; one crop per kept example, strongest first."""
        if self.field is None or len(self.field) != 2:
            raise ConfigError(
                f"patches are for a conv site (axes h, w) whose receptive field is known; "
                f"{self.site!r} has axes {self.axes}"
            )
        if not isinstance(images, Tensor) or images.ndim != 4:
            got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise InputError(f"images must be a [n, c, h, w] tensor (the inputs), got {got}")
        r = self._row(latent)
        kept = self.example[r] >= 0
        if bool(kept.any()) and int(self.example[r][kept].max()) >= len(images):
            raise InputError(
                f"an example of latent {latent} is input {int(self.example[r].max())}, but "
                f"images holds {len(images)}; pass the inputs top_examples read"
            )
        (sh, th, oh), (sw, tw, ow) = self.field
        pad = max(sh, sw)  # enough for any field that starts up to its size off the image
        padded = nn.functional.pad(images, (pad, pad, pad, pad), value=fill)
        crops = []
        for j in range(int(kept.sum())):
            ex, (h, w) = int(self.example[r, j]), self.where[r, j].tolist()
            top, left = oh + h * th + pad, ow + w * tw + pad
            crops.append(padded[ex, :, max(top, 0) : top + sh, max(left, 0) : left + sw])
        if not crops:
            return images.new_zeros((0, images.shape[1], sh, sw))
        return torch.stack([_fit(c, sh, sw, fill) for c in crops])

    def plot(self, latent: int, images: Tensor | None = None) -> go.Figure:
        """A plotly figure of `latent`'s examples: for a conv site with `images`, the crops
        (`patches`, channels averaged) titled by activation; otherwise a bar per example,
        labelled with its context (tokens) or place."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        r = self._row(latent)
        n = int((self.example[r] >= 0).sum())
        acts = self.activation[r, :n].tolist()
        if images is not None:
            crops = self.patches(images, latent).mean(1)
            fig = make_subplots(rows=1, cols=max(n, 1), subplot_titles=[f"{a:.3g}" for a in acts])
            for j in range(n):
                fig.add_trace(go.Heatmap(z=crops[j].flip(0).tolist(), colorscale="gray",
                                         showscale=False), row=1, col=j + 1)  # fmt: skip
                fig.update_xaxes(visible=False, row=1, col=j + 1)
                fig.update_yaxes(visible=False, scaleanchor=f"x{j + 1}", row=1, col=j + 1)
        else:
            labels = self.text(latent).splitlines()[:n]
            fig = go.Figure(go.Bar(x=acts[::-1], y=[f"{i}" for i in range(n)][::-1],
                                   orientation="h", hovertext=labels[::-1]))  # fmt: skip
            fig.update_yaxes(ticktext=[s.split("  ", 1)[1] for s in labels][::-1],
                             tickvals=[f"{i}" for i in range(n)][::-1])  # fmt: skip
            fig.update_xaxes(title="activation")
        return fig.update_layout(title=f"{self.site} latent {latent}: top examples")

    def annotate(self, graph: nx.DiGraph, *, attr: str = "examples") -> nx.DiGraph:
        """Give each feature node of these latents (kind "feature", its site this dictionary's,
        its unit a latent here) a string attribute `attr`: `text(unit)`, for hovers and exports.
        Returns the graph, changed in place."""
        sites = {self.site, self.target_site} - {None}
        known = set(self.latents.tolist())
        for _, a in graph.nodes(data=True):
            if a.get("kind") == "feature" and a.get("site") in sites and a.get("unit") in known:
                a[attr] = self.text(int(a["unit"]))
        return graph

    def _row(self, latent: int) -> int:
        ok = isinstance(latent, int) and not isinstance(latent, bool)
        hits = (self.latents == latent).nonzero() if ok else self.latents[:0]
        if len(hits) == 0:
            shown = self.latents.tolist()
            raise InputError(
                f"latent {latent!r} was not among those searched ({shown[:10]}"
                f"{' ...' if len(shown) > 10 else ''}); pass it in top_examples(latents=...)"
            )
        return int(hits[0, 0])

    def _context(self, r: int, j: int, decode: Callable[[int], str] | None) -> str:
        assert self.context is not None
        show = decode or self.decode or str
        window = self.context[r, j].tolist()
        middle = len(window) // 2
        words = [f"«{show(t)}»" if i == middle else show(t) for i, t in enumerate(window) if t >= 0]
        return " ".join(words)


def top_examples(
    model: nn.Module | None,
    inputs: Any,
    dictionary: Dictionary,
    *,
    latents: int | Iterable[int] | Tensor | None = None,
    k: int = 8,
    batch_size: int = 64,
    context: int = 4,
    site: str | None = None,
    axis: str | None = None,
    cache: DiskCache | str | os.PathLike[str] | None = None,
    decode: Callable[[int], str] | None = None,
    progress: bool | None = None,
) -> TopExamples:
    """The `k` top-activating examples of each of `latents` (None: all) over `inputs`.

    inputs: a tensor (split into batches of `batch_size`; token ids [n, pos] give contexts) or
        an iterable of batches. Each batch runs through `model` up to the dictionary's site
        (`site=` overrides it; a transcoder's is its input site) and is encoded on the feature
        axis (`axis=`, else the dictionary's, else "channel" or the last).
    cache: a DiskCache, or a folder: one holding a capture is read shard by shard (model may
        then be None, and inputs, if a tensor, only gives contexts); an empty one is filled by
        `capture_to_disk` first, then read. context: tokens kept either side of a token
        example. decode: token id -> text (default: the model's tokenizer, if it has one).

    Memory: k x latents entries and one batch (module docstring). Shapes: see `TopExamples`.

    For example:

        t = cc.zoo.lookup_transcoder(0)
        ex = top_examples(cc.zoo.lookup_transformer(), cc.zoo.lookup_batch(512).tokens, t,
                          latents=range(16), k=5)
        print(ex.text(3))                                # 5 lines, strongest first
        ex = top_examples(cc.zoo.curve_cnn(), images, cc.zoo.curve_sae(), cache="acts/")
        ex.patches(images, 0)                            # [5, 1, 14, 14] crops

    Raises:
        ConfigError: `dictionary` is not a Dictionary; k, batch_size or context not an int in
            range; no site to read (a dictionary without one and no site=); no model to run.
        InputError: a latent out of range, or given twice; inputs that yield no batch; cache
            neither a DiskCache nor a path; inputs the model fails on.
        SiteNotFoundError: the site is not on the model, or not in the disk cache.
        ShapeMismatchError: the site's feature axis is not the dictionary's d_in wide.
        SchemaError: a cache folder that holds an unfinished or damaged capture.
    """
    if not isinstance(dictionary, Dictionary):
        raise ConfigError(f"dictionary must be a Dictionary, got {type(dictionary).__name__}")
    check_int(k, "k (examples kept per latent)")
    check_int(batch_size, "batch_size")
    check_int(context, "context (tokens either side)", low=0)
    cfg = dictionary.config
    site = site or cfg.site
    if site is None:
        raise ConfigError(
            "the dictionary names no site; pass site= (the hook site whose activations it encodes)"
        )
    idx = _latents(latents, dictionary.n_latents)
    if model is not None:
        resolve(model, [site])  # an unknown site fails here, before any work
    chunks = _chunks(model, inputs, site, batch_size, cache, progress)
    state = _TopK(dictionary, idx, k, context, axis or cfg.axis)
    with progress_bar(chunks.total, "top examples", progress, unit="batch") as bar:
        for act, info, tokens in chunks:
            state.add(act, info, tokens)
            bar.update(1)
    if state.rows == 0:
        raise InputError("inputs yielded no batch; there is nothing to rank")
    field = None
    if state.axes == ("h", "w") and model is not None:
        field = _receptive_field(model, site, state.shape, chunks.input_hw)
    if decode is None:
        tokenizer = getattr(model, "tokenizer", None)
        decode = None if tokenizer is None else (lambda t: tokenizer.decode([t]))
    return state.result(site, cfg.target_site if cfg.kind == "transcoder" else None, field, decode)


def _latents(latents: Any, n: int) -> Tensor:
    """The chosen latent ids as a long tensor (None: all), each in range and once."""
    if latents is None:
        return torch.arange(n)
    if isinstance(latents, bool):
        raise InputError(f"latents must be latent ids (ints), got {latents!r}")
    if isinstance(latents, int):
        latents = [latents]
    try:
        ids = torch.as_tensor(latents if isinstance(latents, Tensor) else list(latents))
    except (TypeError, ValueError, RuntimeError):
        raise InputError(f"latents must be ints or a list of them, got {latents!r}") from None
    if ids.is_floating_point() or ids.dtype == torch.bool or ids.ndim > 1 or ids.numel() == 0:
        raise InputError(f"latents must be a non-empty list of latent ids, got {latents!r}")
    ids = ids.reshape(-1).long().cpu()
    bad = ids[(ids < 0) | (ids >= n)]
    if len(bad):
        raise InputError(
            f"latent {int(bad[0])} is out of range: the dictionary has {n} latents (0..{n - 1})"
        )
    if len(ids.unique()) != len(ids):
        raise InputError(f"latents lists an id twice: {ids.tolist()}")
    return ids


class _Chunks:
    """(activation, site, token ids or None) per batch, from the model or from a disk cache."""

    def __init__(
        self, source: Callable[[], Iterator[tuple[Tensor, Site, Tensor | None]]], total: Any
    ) -> None:
        self.source, self.total = source, total
        self.input_hw: tuple[int, int] | None = None  # an image input's (h, w), once seen

    def __iter__(self) -> Iterator[tuple[Tensor, Site, Tensor | None]]:
        return self.source()


def _chunks(
    model: nn.Module | None, inputs: Any, site: str, batch_size: int, cache: Any, progress: Any
) -> _Chunks:
    """Where the activations come from: a disk cache (read or first written) or the model."""
    tensor = isinstance(inputs, Tensor)
    if cache is not None:
        disk = cache if isinstance(cache, DiskCache) else None
        if disk is None:
            folder = as_path(cache, "cache (a DiskCache or a folder)")
            if not (folder / "index.json").exists():
                if model is None or inputs is None:
                    raise ConfigError(
                        f"{folder} holds no capture yet; pass the model and inputs to fill it"
                    )
                disk = capture_to_disk(model, inputs, folder, sites=[site], progress=progress,
                                       batch_size=batch_size if tensor else None)  # fmt: skip
            else:
                disk = load_cache(folder)
        if site not in disk:
            raise SiteNotFoundError(
                f"site {site!r} is not in the disk cache {disk.folder}; {closest(site, disk)}. "
                "Capture it there, or pass another folder"
            )
        found = disk

        def from_disk() -> Iterator[tuple[Tensor, Site, Tensor | None]]:
            lo = 0
            for shard in found.batches():
                act, info = shard[site], shard.sites[site]
                tokens = inputs[lo : lo + len(act)] if tensor else None
                lo += len(act)
                yield act, info, tokens

        return _Chunks(from_disk, None)
    if model is None:
        raise ConfigError("top_examples needs a model to run, or cache= holding the activations")
    batches = inputs.split(batch_size) if tensor else inputs
    if batches is None:
        raise InputError("inputs is None; pass a tensor or an iterable of batches")
    out = _Chunks(lambda: iter(()), len(batches) if isinstance(batches, Sized) else None)

    @torch.no_grad()
    def from_model() -> Iterator[tuple[Tensor, Site, Tensor | None]]:
        for batch in batches:
            ran = run(model, batch, record=[site], stop_after=site)
            if isinstance(batch, Tensor) and batch.ndim == 4 and out.input_hw is None:
                out.input_hw = (int(batch.shape[2]), int(batch.shape[3]))
            yield ran.recorded[site], ran.sites[site], batch if isinstance(batch, Tensor) else None

    out.source = from_model
    if tensor and inputs.ndim == 4:
        out.input_hw = (int(inputs.shape[2]), int(inputs.shape[3]))
    return out


class _TopK:
    """The running top-k merge: per latent, k values and where they were, updated per batch."""

    def __init__(self, d: Dictionary, idx: Tensor, k: int, context: int, axis: str | None) -> None:
        self.d, self.idx, self.k, self.c, self.axis = d, idx, k, context, axis
        self.rows, self.offset = 0, 0
        self.axes: tuple[str, ...] = ()
        self.shape: tuple[int, ...] = ()  # the site's shape without batch and feature axes
        self.kept: dict[str, Tensor] = {}
        self.fired = torch.zeros(len(idx), dtype=torch.long)

    def add(self, act: Tensor, info: Site, tokens: Tensor | None) -> None:
        f = feature_dim(info, self.axis)
        if act.shape[f] != self.d.config.d_in:
            raise ShapeMismatchError(
                f"site {info.name!r} has {act.shape[f]} features on axis {info.axes[f]!r}, the "
                f"dictionary reads {self.d.config.d_in}; check the site and its feature axis"
            )
        x = act.movedim(f, -1).float()
        if not self.kept:
            self._start(info, f, x)
        n, places = x.shape[0], x.shape[1:-1]
        z = self.d.encode(x)[..., self.idx.to(x.device)].reshape(-1, len(self.idx))
        positive = z > 0
        self.fired += positive.sum(0).cpu()
        take = min(self.k, len(z))
        # a stable sort, so ties go to the first row (earlier example, then position)
        values, flat = z.masked_fill(~positive, -math.inf).sort(dim=0, descending=True, stable=True)
        values, flat = values[:take].T.cpu(), flat[:take].T.cpu()  # [L, take]
        coords = torch.unravel_index(flat, (n, *places))
        where = torch.stack(coords[1:], -1) if places else flat.new_zeros((*flat.shape, 0))
        new = {"value": values, "example": coords[0] + self.offset, "where": where}
        if "context" in self.kept:
            new["context"] = self._windows(tokens, coords, n)
        self._merge(new)
        self.offset += n
        self.rows += len(z)

    def _start(self, info: Site, f: int, x: Tensor) -> None:
        self.axes = tuple(a for i, a in enumerate(info.axes) if i not in (0, f % len(info.axes)))
        self.shape = tuple(x.shape[1:-1])
        L, k = len(self.idx), self.k
        self.kept = {"value": torch.full((L, k), -math.inf), "example": torch.full((L, k), -1),
                     "where": torch.full((L, k, len(self.axes)), -1)}  # fmt: skip
        if "pos" in self.axes:
            self.kept["context"] = torch.full((L, k, 2 * self.c + 1), -1)

    def _windows(self, tokens: Tensor | None, coords: tuple[Tensor, ...], n: int) -> Tensor:
        """The token ids around each candidate's position (-1 off the sequence or unknown)."""
        at = self.axes.index("pos")
        b, pos = coords[0], coords[1 + at]
        width = 2 * self.c + 1
        ok = (
            isinstance(tokens, Tensor) and tokens.ndim == 2 and not tokens.is_floating_point()
            and tuple(tokens.shape) == (n, self.shape[at])
        )  # fmt: skip
        if not ok:
            return torch.full((*b.shape, width), -1)
        assert tokens is not None
        padded = nn.functional.pad(tokens.cpu().long(), (self.c, self.c), value=-1)
        return padded[b[..., None], pos[..., None] + torch.arange(width)]

    def _merge(self, new: dict[str, Tensor]) -> None:
        both = {key: torch.cat([self.kept[key], new[key]], 1) for key in self.kept}
        # stable: on ties the example seen first (already kept) stays ahead
        order = both["value"].sort(dim=1, descending=True, stable=True).indices[:, : self.k]
        for key, t in both.items():
            at = order if t.ndim == 2 else order[..., None].expand(-1, -1, t.shape[-1])
            self.kept[key] = t.gather(1, at)

    def result(
        self, site: str, target_site: str | None, field: Field | None, decode: Any
    ) -> TopExamples:
        value = self.kept["value"]
        empty = value == -math.inf
        return TopExamples(
            latents=self.idx.clone(), activation=value.masked_fill(empty, 0.0),
            example=self.kept["example"], where=self.kept["where"], axes=self.axes, site=site,
            frequency=self.fired.double() / self.rows, rows=self.rows,
            context=self.kept.get("context"), target_site=target_site, field=field, decode=decode,
        )  # fmt: skip


def _receptive_field(
    model: nn.Module, site: str, shape: tuple[int, ...], input_hw: tuple[int, int] | None
) -> Field | None:
    """The receptive field of one (h, w) cell of `site`, from the convs and pools before it in
    module order (a chain; a branching net such as a ResNet breaks that, which the map's size
    then shows: if the chain does not give the site's shape from the input's, the field is
    taken as the input / map size ratio, with a warning)."""
    base, before = site.removesuffix(INPUT_SUFFIX), site.endswith(INPUT_SUFFIX)
    size, stride, start = [1, 1], [1, 1], [0, 0]
    cells = list(input_hw) if input_hw else None
    found = False
    for path, module in model.named_modules():
        inside = path == base or path.startswith(base + ".")
        if found and not inside:
            break
        if inside and before:
            break
        found = found or inside
        if isinstance(module, POOLS):
            for i, (ke, s, p) in enumerate(_geometry(module)):
                start[i] -= p * stride[i]
                size[i] += (ke - 1) * stride[i]
                stride[i] *= s
                if cells is not None:
                    cells[i] = (cells[i] + 2 * p - ke) // s + 1
    if not found and not before:
        return None  # a hook name, not a module path: no chain to follow
    if cells is not None and tuple(cells) != tuple(shape):
        assert input_hw is not None
        ratio = [max(1, hw // m) for hw, m in zip(input_hw, shape, strict=True)]
        logger.warning(
            "the convs and pools before %s give a %s map, not its %s: the net is not a chain, "
            "so each cell's field is taken as a %s block of the input", site, tuple(cells),
            tuple(shape), tuple(ratio),
        )  # fmt: skip
        return tuple((r, r, 0) for r in ratio)
    return tuple(zip(size, stride, start, strict=True))


def _geometry(module: nn.Module) -> list[tuple[int, int, int]]:
    """(effective kernel, stride, padding) per spatial axis of a conv or pool."""

    def pair(v: Any) -> tuple[int, int]:
        return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))

    kernel, stride = pair(module.kernel_size), pair(module.stride or module.kernel_size)
    dilation = pair(getattr(module, "dilation", 1))
    eff = [d * (k - 1) + 1 for k, d in zip(kernel, dilation, strict=True)]
    padding = module.padding
    if padding == "same":
        pads = [(e - 1) // 2 for e in eff]
    else:
        pads = [0, 0] if padding == "valid" else list(pair(padding))
    return [(e, s, p) for e, s, p in zip(eff, stride, pads, strict=True)]


def _fit(crop: Tensor, h: int, w: int, fill: float) -> Tensor:
    """`crop` padded with `fill` at its bottom and right to h x w (a field off the far edge)."""
    return nn.functional.pad(crop, (0, w - crop.shape[-1], 0, h - crop.shape[-2]), value=fill)
