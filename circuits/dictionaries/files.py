"""Dictionaries on disk, in SAELens's folder format, both ways.

A folder holds `cfg.json` and `sae_weights.safetensors` (W_enc [d_in, n], b_enc, W_dec
[n, d_out], b_dec and, for JumpReLU, threshold), which is what SAELens 6 writes and what its
`SAE.load_from_disk(folder)` reads. `load_dictionary` reads those folders too, SAELens 5.x
layouts included. Reading runs no code: JSON and safetensors only, every name, shape and dtype
checked, and anything else is a SchemaError naming the file and what to do.

cfg.json for a top-k SAE (kind and activation are the architecture; "k" is SAELens's own key):

    {"architecture": "topk", "d_in": 64, "d_sae": 512, "k": 8,
     "rescale_acts_by_decoder_norm": false, "dtype": "float32", "device": "cpu",
     "apply_b_dec_to_input": false, "normalize_activations": "none", "reshape_activations": "none",
     "metadata": {"sae_lens_version": "6.0.0", "hook_name": "blocks.0.hook_resid_post",
                  "circuits": {"format": "circuits.dictionary/1", "layout": "saelens",
                               "axis": null}}}

Architectures: "standard" (relu), "topk", "jumprelu"; transcoders "transcoder" (relu) and
"jumprelu_transcoder" with "d_out" and metadata "hook_name_out" (the target site), and our own
"topk_transcoder", which SAELens lacks. SAELens keeps unknown metadata, ignores unknown top-level
keys, and reads "sae_lens_version" as the cfg layout (6.x keeps "metadata" as written).

layout="circuit-tracer" writes a transcoder as circuit-tracer's `load_relu_transcoder(path,
layer)` reads one layer: `transcoder.safetensors` with W_enc [n, d_model] (transposed),
W_dec [n, d_model], b_enc, b_dec and "activation_function.threshold"; list that file per layer in
circuit-tracer's config.yaml. cfg.json beside it still describes the dictionary for
`load_dictionary`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Literal, cast

import torch
from safetensors import SafetensorError
from safetensors.torch import save
from torch import Tensor

from circuits.errors import ConfigError, InputError, OutputError, SchemaError
from circuits.files import as_path, atomic_open, open_safetensors, read_json
from circuits.options import check_choice

from .config import Activation, DictionaryConfig, Kind
from .dictionary import Dictionary

__all__ = ["Layout", "load_dictionary", "save_dictionary"]

log = logging.getLogger(__name__)

Layout = Literal["saelens", "circuit-tracer"]
"""How `save_dictionary` lays out the weights: "saelens" (sae_weights.safetensors, read by SAELens
and by `load_dictionary`) or "circuit-tracer" (transcoder.safetensors, one layer of a
circuit-tracer transcoder set; `load_dictionary` reads it too)."""

FORMAT = "circuits.dictionary/1"
SAELENS_LAYOUT = "6.0.0"  # the SAELens cfg layout written (read as "sae_lens_version")
CFG = "cfg.json"
WEIGHTS: dict[str, str] = {
    "saelens": "sae_weights.safetensors",
    "circuit-tracer": "transcoder.safetensors",
}
CT_THRESHOLD = "activation_function.threshold"  # circuit-tracer's name for threshold

ARCHITECTURES: dict[str, tuple[Kind, Activation]] = {
    "standard": ("sae", "relu"),
    "topk": ("sae", "topk"),
    "jumprelu": ("sae", "jumprelu"),
    "transcoder": ("transcoder", "relu"),
    "jumprelu_transcoder": ("transcoder", "jumprelu"),
    "topk_transcoder": ("transcoder", "topk"),  # ours: SAELens has no top-k transcoder
}
DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def save_dictionary(
    d: Dictionary,
    folder: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    layout: Layout = "saelens",
) -> Path:
    """Write `d` into `folder` (created if missing) as cfg.json plus its weights; returns the
    folder. Each file is written atomically and cfg.json last, so an interrupted save leaves a
    folder `load_dictionary` refuses rather than one that mixes two dictionaries.

        save_dictionary(d, "sae/")                    # SAE.load_from_disk("sae/") reads it too
        save_dictionary(t, "tc/", layout="circuit-tracer")

    Raises InputError when `d` is not a Dictionary or `folder` is not a path; ConfigError for a
    layout other than "saelens" or "circuit-tracer", when `folder` already holds one
    (pass overwrite=True) or when circuit-tracer cannot hold `d` (it reads relu and jumprelu
    transcoders from d_model to d_model); OutputError when the folder cannot be written.
    """
    if not isinstance(d, Dictionary):
        raise InputError(f"save_dictionary saves a Dictionary, got {type(d).__name__}")
    check_choice(layout, Layout, "layout")
    path = as_path(folder, "the dictionary folder")
    if (path / CFG).exists() and not overwrite:
        raise ConfigError(f"{path} already holds a dictionary; pass overwrite=True to replace it")
    cfg = _cfg(d, layout)
    tensors = _tensors_to_write(d, layout)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create the folder {str(path)!r}: {err.strerror or err}") from err
    (path / CFG).unlink(missing_ok=True)
    with atomic_open(path / WEIGHTS[layout], "wb") as fh:
        fh.write(save(tensors))
    with atomic_open(path / CFG, "w") as fh:
        fh.write(json.dumps(cfg, indent=2))
    for other, name in WEIGHTS.items():  # an earlier save's weights in the other layout
        if other != layout:
            (path / name).unlink(missing_ok=True)
    return path


def load_dictionary(folder: str | os.PathLike[str]) -> Dictionary:
    """The dictionary in `folder`: one `save_dictionary` wrote (read back exactly) or one SAELens
    wrote (standard, topk, jumprelu, transcoder and jumprelu_transcoder architectures).

        d = load_dictionary("sae/")
        z = d.encode(acts)

    Raises InputError when `folder` is not a path, ConfigError when it is not a folder, and
    SchemaError when what it holds is not a
    dictionary this reads: no cfg.json, invalid JSON, an unsupported architecture, activation,
    input normalization or dtype, a weights file that is missing or not safetensors, a tensor
    missing, extra, not float, or of a shape cfg.json disagrees with.
    """
    path = as_path(folder, "the dictionary folder")
    if not path.is_dir():
        raise ConfigError(
            f"{str(path)!r} is not a folder; pass the folder save_dictionary or SAELens wrote "
            "(it holds cfg.json and sae_weights.safetensors)"
        )
    cfg_file = path / CFG
    if not cfg_file.is_file():
        raise SchemaError(
            f"{path} has no {CFG}: not a dictionary folder, or a save that was interrupted; "
            "save the dictionary again"
        )
    cfg = read_json(cfg_file, "dictionary config")
    if not isinstance(cfg, dict):
        raise SchemaError(f"{cfg_file} must hold a JSON object, got {type(cfg).__name__}")
    config, dtype, ours, layout, rescale = _read_cfg(cfg, cfg_file)
    t = _read_weights(path / WEIGHTS[layout], config, layout)
    t = {name: x.to(dtype) for name, x in t.items()}
    if config.activation == "jumprelu" and not ours:
        # SAELens computes relu(pre) * (pre > threshold), which is ours with threshold >= 0.
        t["threshold"] = t["threshold"].clamp(min=0)
    if rescale:  # SAELens top-k that scales pre-activations by decoder norms: fold them in
        norm = t["W_dec"].norm(dim=-1)
        t["W_enc"], t["b_enc"], t["W_dec"] = (
            t["W_enc"] * norm,
            t["b_enc"] * norm,
            t["W_dec"] / norm[:, None],
        )
    return Dictionary(config, t["W_enc"], t["b_enc"], t["W_dec"], t["b_dec"], t.get("threshold"))


def _cfg(d: Dictionary, layout: Layout) -> dict[str, Any]:
    """cfg.json for `d`: SAELens's keys, ours under metadata["circuits"]."""
    c = d.config
    arch = next(a for a, pair in ARCHITECTURES.items() if pair == (c.kind, c.activation))
    cfg: dict[str, Any] = {"architecture": arch, "d_in": c.d_in, "d_sae": c.n_latents}
    if c.kind == "transcoder":
        cfg["d_out"] = c.width
    if c.activation == "topk":
        cfg.update(k=c.k, rescale_acts_by_decoder_norm=False)
    meta: dict[str, Any] = {"sae_lens_version": SAELENS_LAYOUT, "hook_name": c.site}
    if c.kind == "transcoder":
        meta["hook_name_out"] = c.target_site
    meta["circuits"] = {"format": FORMAT, "layout": layout, "axis": c.axis}
    return cfg | {
        "dtype": str(d.W_enc.dtype).removeprefix("torch."),  # a float dtype: Dictionary checks
        "device": "cpu",
        "apply_b_dec_to_input": c.apply_b_dec_to_input,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": meta,
    }


def _tensors_to_write(d: Dictionary, layout: Layout) -> dict[str, Tensor]:
    """The tensors to save, on the CPU in W_enc's dtype, named and laid out for `layout`."""
    t = {"W_enc": d.W_enc, "b_enc": d.b_enc, "W_dec": d.W_dec, "b_dec": d.b_dec}
    if d.threshold is not None:
        t["threshold"] = d.threshold
        if bool((d.threshold < 0).any()):
            log.warning(
                "some JumpReLU thresholds are negative: SAELens computes relu(pre) * (pre > "
                "threshold), so it reads those latents as if their threshold were 0"
            )
    if layout == "circuit-tracer":
        c = d.config
        if c.kind != "transcoder" or c.activation == "topk" or c.d_in != c.width:
            raise ConfigError(
                "circuit-tracer reads relu or jumprelu transcoders from d_model to d_model; this "
                f"is a {c.activation} {c.kind} from {c.d_in} to {c.width}: use layout='saelens'"
            )
        if c.apply_b_dec_to_input:
            raise ConfigError(
                "circuit-tracer never subtracts b_dec from the input; this dictionary does "
                "(apply_b_dec_to_input=True): use layout='saelens'"
            )
        t["W_enc"] = t["W_enc"].T
        if "threshold" in t:
            t[CT_THRESHOLD] = t.pop("threshold")
    return {name: x.detach().to("cpu", d.W_enc.dtype).contiguous() for name, x in t.items()}


def _read_cfg(
    cfg: dict[str, Any], file: Path
) -> tuple[DictionaryConfig, torch.dtype, bool, Layout, bool]:
    """(config, dtype, whether circuits wrote it, weights layout, whether to fold decoder norms)
    from a cfg.json of ours or of SAELens (6.x, or 5.x with hook_name and activation_fn_str at
    the top level)."""
    meta = cfg.get("metadata", {})
    if not isinstance(meta, dict):
        raise SchemaError(f"{file}: 'metadata' must be a JSON object")
    ours: dict[str, Any] = meta["circuits"] if isinstance(meta.get("circuits"), dict) else {}
    if ours and ours.get("format") != FORMAT:
        raise SchemaError(
            f"{file} was written as {ours.get('format')!r}; this version reads {FORMAT!r}"
        )
    layout = ours.get("layout", "saelens")
    if not isinstance(layout, str) or layout not in WEIGHTS:
        raise SchemaError(f"{file}: layout must be one of {list(WEIGHTS)}, got {layout!r}")
    arch = cfg.get("architecture", "standard")
    fn = cfg.get("activation_fn", cfg.get("activation_fn_str", "relu"))
    if fn not in ("relu", "topk"):
        raise SchemaError(f"{file}: activation {fn!r} is not supported (relu or topk)")
    if fn == "topk":  # SAELens 5.x: a "standard" SAE with a top-k activation
        arch = "topk"
    if not isinstance(arch, str) or arch not in ARCHITECTURES:
        raise SchemaError(
            f"{file}: architecture {arch!r} is not supported; a Dictionary reads "
            f"{', '.join(map(repr, ARCHITECTURES))} (convert it with SAELens first)"
        )
    kind, activation = ARCHITECTURES[arch]
    for key in ("normalize_activations", "reshape_activations"):
        if cfg.get(key) not in (None, False, "none"):
            raise SchemaError(
                f"{file}: {key}={cfg[key]!r}: the SAE expects its inputs normalized or reshaped "
                "first, which a Dictionary does not do; fold that into the weights with SAELens "
                "(fold_activation_norm_scaling_factor, say) and save again"
            )
    name = cfg.get("dtype", "float32")
    if not isinstance(name, str) or name.removeprefix("torch.") not in DTYPES:
        raise SchemaError(f"{file}: dtype must be a float type ({', '.join(DTYPES)}), got {name!r}")
    kwargs = cfg.get("activation_fn_kwargs") or {}
    k = cfg.get("k", kwargs.get("k") if isinstance(kwargs, dict) else None)
    rescale = activation == "topk" and cfg.get("rescale_acts_by_decoder_norm") is True
    if kind == "transcoder" and "d_out" not in cfg:
        raise SchemaError(f"{file}: a transcoder's cfg needs 'd_out', its output width")
    try:
        config = DictionaryConfig(
            d_in=cfg.get("d_in"),  # type: ignore[arg-type]  # DictionaryConfig checks each
            n_latents=cfg.get("d_sae"),  # type: ignore[arg-type]
            d_out=cfg.get("d_out") if kind == "transcoder" else None,
            kind=kind,
            activation=activation,
            k=k if activation == "topk" else None,
            site=meta.get("hook_name", cfg.get("hook_name", cfg.get("hook_point"))),
            target_site=meta.get("hook_name_out") if kind == "transcoder" else None,
            axis=ours.get("axis"),
            apply_b_dec_to_input=cfg.get("apply_b_dec_to_input", kind == "sae"),
        )
    except ConfigError as err:
        raise SchemaError(f"{file}: {err}") from None
    return config, DTYPES[name.removeprefix("torch.")], bool(ours), cast(Layout, layout), rescale


def _read_weights(file: Path, c: DictionaryConfig, layout: Layout) -> dict[str, Tensor]:
    """The tensors `c` needs from `file`, under our names and shapes; SchemaError for a file that
    is not safetensors, lacks a tensor, holds one we have no place for, or disagrees in shape."""
    n, d_in, d_out = c.n_latents, c.d_in, c.width
    shapes = {"W_enc": (d_in, n), "b_enc": (n,), "W_dec": (n, d_out), "b_dec": (d_out,)}
    if c.activation == "jumprelu":
        shapes["threshold"] = (n,)
    stored = {name: name for name in shapes}  # our name -> the file's name
    if layout == "circuit-tracer":
        shapes["W_enc"] = (n, d_in)
        if "threshold" in stored:
            stored["threshold"] = CT_THRESHOLD
    if not file.is_file():
        raise SchemaError(f"{file} is missing; the dictionary folder is incomplete, save it again")
    out = {}
    with _open(file) as f:
        keys = set(f.keys())
        missing = sorted(set(stored.values()) - keys)
        if missing:
            raise SchemaError(
                f"{file} lacks {missing}; a {c.activation} {c.kind} needs {sorted(stored.values())}"
            )
        extra = sorted(keys - set(stored.values()) - {"scaling_factor"})
        if extra:
            raise SchemaError(
                f"{file} holds {extra}, which a {c.activation} {c.kind} has no place for "
                "(a different architecture than cfg.json says?)"
            )
        for name, key in stored.items():
            t = _tensor(f, key, file)
            if tuple(t.shape) != shapes[name]:
                raise SchemaError(
                    f"{file}: {key} has shape {tuple(t.shape)}, but cfg.json (d_in={d_in}, "
                    f"d_sae={n}, d_out={d_out}) needs {shapes[name]}; the weights and cfg.json "
                    "disagree: save the dictionary again"
                )
            out[name] = t.T.contiguous() if layout == "circuit-tracer" and name == "W_enc" else t
        if "scaling_factor" in keys and not bool((_tensor(f, "scaling_factor", file) == 1).all()):
            raise SchemaError(
                f"{file} holds a finetuning scaling_factor other than 1, which a Dictionary "
                "does not apply; load it with SAELens, fold it into W_dec and save again"
            )
    return out


def _open(file: Path) -> Any:
    """`file` opened as safetensors; any failure to parse it is a SchemaError naming it."""
    return open_safetensors(file, "file", "save it again")


def _tensor(f: Any, key: str, file: Path) -> Tensor:
    """One float tensor of an open safetensors file."""
    try:
        t: Tensor = f.get_tensor(key)
    except (SafetensorError, ValueError, TypeError) as err:
        raise SchemaError(f"{file}: cannot read {key!r} ({str(err)[:120]})") from None
    if not t.is_floating_point():
        raise SchemaError(f"{file}: {key} holds {t.dtype}, not floats; save the dictionary again")
    return t
