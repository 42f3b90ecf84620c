"""probe_sweep: the same probe at many sites in one call, and a plot of the scores by site.

Reading a property site by site shows where a model computes it: the score rises at the layer
that writes it and the control stays at chance. The sweep captures every site in one forward pass
per batch (pooling each batch at once, so memory holds [n, d] per site, not whole activations) and
fits one probe per site, returning one row per site with the ProbeResult in the `probe` column.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from torch import Tensor, nn

from circuits.adapters.torch_module import generic_axes
from circuits.capture import ActivationCache, Index, capture, select, site_list
from circuits.checks import check_int
from circuits.errors import ConfigError, InputError, ShapeMismatchError
from circuits.loops import progress_bar
from circuits.probes.data import Labels, Layout, as_tensor, to_matrix
from circuits.probes.fit import ProbeConfig, fit_matrix
from circuits.site import Site

if TYPE_CHECKING:
    import plotly.graph_objects as go

COLUMNS = ("site", "train_score", "test_score", "control_score", "selectivity")


def probe_sweep(
    source: nn.Module | ActivationCache,
    inputs: Any = None,
    labels: Labels | None = None,
    config: ProbeConfig | None = None,
    *,
    sites: str | Sequence[str] | None = None,
    feature_axis: int | str | None = None,
    positions: Index | None = None,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    types: Labels | None = None,
    progress: bool | None = None,
    **options: Any,
) -> pd.DataFrame:
    """Fit one probe per site; one row per site (ProbeResult.summary() plus the `probe` itself).

    source: a model (captured with `cc.capture`, in batches of `batch_size` inputs along the
        first axis of a tensor `inputs`) or an ActivationCache you already have (inputs=None).
    sites: site names (None: every site of the model, or every site in the cache).
    positions: keep these positions of a site's "pos" axis (as `cc.capture`); one position
        leaves nothing to pool.
    feature_axis: the feature axis of each site: an index, an axis name ("d_model"), or None for
        "channel" where a site has one, else the last axis.
    device: where activations are kept and probes fit (e.g. "cuda"); default: where captured.
    config, options: the probe's `ProbeConfig`, or its fields as keywords (kind, pool, C, alpha,
        whiten, ridge, standardise, test_fraction, control, seed, tol, max_iter), as for
        `fit_probe`; the feature axis is this function's own `feature_axis`.
    progress: tqdm bars over batches and sites (None: only on a terminal).

    For example:

        frame = cc.probe_sweep(cnn, images, labels, sites=["relu1", "relu2"], pool="max")
        frame[["site", "test_score", "selectivity"]]
        frame.set_index("site").loc["relu2", "probe"].as_basis()
        cc.probe_sweep(cache, None, labels)                 # from activations you already have

    Raises:
        ConfigError: `labels` is missing, `inputs` is given with a cache, `sites` is empty, or an
            option is unknown or out of range (as `fit_probe`).
        ShapeMismatchError: the number of labels differs from the number of inputs, or fewer than 2.
        InputError: `source` is neither a model nor a cache, or a site's activations cannot be
            probed (as `fit_probe`).
        SiteNotFoundError, SiteNotFiredError: a site is not in the model or cache, or never ran.
    """
    if labels is None:
        raise ConfigError("probe_sweep needs labels=..., one per input")
    if "feature_axis" in options:
        raise ConfigError("probe_sweep takes feature_axis as its own option (an index or a name)")
    config = ProbeConfig.of(config, options)
    if isinstance(source, ActivationCache) or (
        isinstance(source, Mapping) and not isinstance(source, nn.Module)
    ):
        if inputs is not None:
            raise ConfigError("with a cache as the source, pass inputs=None (labels=... only)")
        matrices = _from_cache(source, sites, config, feature_axis, positions, device)
    elif isinstance(source, nn.Module):
        if isinstance(inputs, Tensor) and hasattr(labels, "__len__") and len(labels) != len(inputs):
            raise ShapeMismatchError(
                f"got {len(labels)} labels for {len(inputs)} inputs; pass one label per input "
                "(or, with pool='stack', one per input and position)"
            )
        matrices = _from_model(source, inputs, sites, config, feature_axis, positions,
                               batch_size, device, progress)  # fmt: skip
    else:
        raise InputError(
            f"source must be a torch model or an ActivationCache, got {type(source).__name__}"
        )
    rows = []
    with progress_bar(len(matrices), "probes", progress) as bar:
        for name, (x, layout, n) in matrices.items():
            cfg = dataclasses.replace(config, feature_axis=layout.feature_axis)
            result = fit_matrix(x, labels, layout=layout, n_inputs=n, config=cfg, types=types,
                                site=name)  # fmt: skip
            rows.append({**result.summary(), "probe": result})
            bar.update(1)
    return pd.DataFrame(rows)


def plot_probe_sweep(frame: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """Test score and control score by site, in the frame's order (train score dotted).

    For example:

        fig = cc.plot_probe_sweep(cc.probe_sweep(cnn, images, labels, sites=["relu1", "relu2"]))
        fig.show()

    Raises:
        InputError: `frame` lacks the columns `probe_sweep` writes.
    """
    import plotly.graph_objects as go

    missing = [c for c in COLUMNS if c not in getattr(frame, "columns", ())]
    if missing:
        raise InputError(f"the frame lacks column(s) {missing}; pass probe_sweep's result")
    metric = str(frame["metric"].iloc[0]) if "metric" in frame and len(frame) else "score"
    fig = go.Figure()
    sites = frame["site"].astype(str)
    lines = [("test_score", "test", "solid"), ("control_score", "control", "dash"),
             ("train_score", "train", "dot")]  # fmt: skip
    for column, name, dash in lines:
        fig.add_trace(go.Scatter(x=sites, y=frame[column], name=name, mode="lines+markers",
                                 line={"dash": dash}))  # fmt: skip
    fig.update_layout(
        title=title or f"probe {metric} by site", xaxis_title="site", yaxis_title=metric,
        template="plotly_white", hovermode="x unified",
    )  # fmt: skip
    return fig


def _feature_axis(site: Site, choice: int | str | None) -> int:
    if choice is None:
        return site.axes.index("channel") if "channel" in site.axes else len(site.axes) - 1
    if isinstance(choice, str):
        return site.axis(choice)
    return choice


def _from_cache(
    cache: Any,
    sites: str | Sequence[str] | None,
    config: ProbeConfig,
    feature_axis: int | str | None,
    positions: Index | None,
    device: Any,
) -> dict[str, tuple[Tensor, Layout, int]]:
    names = list(cache) if sites is None else ([sites] if isinstance(sites, str) else list(sites))
    if not names:
        raise ConfigError("sites is empty; name at least one site of the cache")
    out = {}
    for name in names:
        acts = cache[name]  # an unknown name raises SiteNotFoundError with the closest names
        info = cache.sites[name] if hasattr(cache, "sites") else _generic_site(name, acts)
        acts = as_tensor(select(acts, info, positions, None))
        if device is not None:
            acts = acts.to(device)
        axis = _feature_axis(info, feature_axis)
        x, layout = to_matrix(acts, pool=config.pool, feature_axis=axis)
        out[name] = (x, layout, acts.shape[0])
    return out


def _from_model(
    model: nn.Module,
    inputs: Any,
    sites: str | Sequence[str] | None,
    config: ProbeConfig,
    feature_axis: int | str | None,
    positions: Index | None,
    batch_size: int | None,
    device: Any,
    progress: bool | None,
) -> dict[str, tuple[Tensor, Layout, int]]:
    names = site_list(model, sites)
    check_int(batch_size, "batch_size", allow_none=True)
    if batch_size is not None and isinstance(inputs, Tensor):
        batches = list(inputs.split(batch_size))
    elif batch_size is not None:
        raise ConfigError("batch_size needs inputs as one tensor (split along its first axis)")
    else:
        batches = [inputs]
    parts: dict[str, list[Tensor]] = {name: [] for name in names}
    layouts: dict[str, Layout] = {}
    total = 0
    shown = False if len(batches) == 1 else progress
    with progress_bar(len(batches), "capture", shown) as bar:
        for batch in batches:
            cache = capture(model, batch, sites=names, positions=positions, device=device)
            for name in names:
                acts = as_tensor(cache[name], min_samples=1)
                axis = _feature_axis(cache.sites[name], feature_axis)
                x, layouts[name] = to_matrix(acts, pool=config.pool, feature_axis=axis)
                parts[name].append(x)
            total += cache[names[0]].shape[0]
            bar.update(1)
    if total < 2:
        raise ShapeMismatchError(f"need at least 2 inputs to fit probes, got {total}")
    return {name: (torch.cat(parts[name]), layouts[name], total) for name in names}


def _generic_site(name: str, acts: Tensor) -> Site:
    return Site(name, generic_axes(acts.ndim), tuple(acts.shape))
