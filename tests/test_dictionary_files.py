"""Dictionaries on disk: our folders read back exactly, broken folders are refused with a
SchemaError that says why, and (with SAELens installed) each side reads the other's folders."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

import circuits.dictionaries.files as files
from circuits.dictionaries import Dictionary, DictionaryConfig, load_dictionary, save_dictionary
from circuits.errors import ConfigError, InputError, OutputError, SchemaError

SITE = "blocks.0.hook_resid_post"


def make(
    kind: str = "sae",
    activation: str = "relu",
    *,
    d_in: int = 6,
    n: int = 10,
    d_out: int | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    **options: Any,
) -> Dictionary:
    """A dictionary with random weights (positive JumpReLU thresholds, as training gives)."""
    g = torch.Generator().manual_seed(seed)
    out = d_out or d_in
    config = DictionaryConfig(
        d_in=d_in,
        n_latents=n,
        d_out=out,
        kind=kind,
        activation=activation,
        **options,  # type: ignore[arg-type]
    )
    threshold = torch.rand(n, generator=g) if activation == "jumprelu" else None
    tensors = [torch.randn(*s, generator=g) for s in ((d_in, n), (n,), (n, out), (out,))]
    d = Dictionary(config, *tensors, threshold)
    return d.to(dtype=dtype)


CASES = {
    "relu": make(site=SITE, axis="d_model", apply_b_dec_to_input=True),
    "relu_plain": make(seed=1),
    "topk": make(activation="topk", k=3, site=SITE),
    "jumprelu": make(activation="jumprelu", dtype=torch.float64),
    "transcoder": make(
        "transcoder",
        d_out=4,
        site="blocks.0.ln2.hook_normalized",
        target_site="blocks.0.hook_mlp_out",
    ),
    "jumprelu_transcoder": make("transcoder", "jumprelu", dtype=torch.bfloat16),
    "topk_transcoder": make("transcoder", "topk", k=2, d_out=3),
}


def same(a: Dictionary, b: Dictionary) -> bool:
    names = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")
    pairs = [(getattr(a, n), getattr(b, n)) for n in names]
    return a.config == b.config and all(
        (x is None and y is None) or (x.dtype == y.dtype and torch.equal(x, y)) for x, y in pairs
    )


@pytest.mark.parametrize("name", CASES)
def test_round_trip_is_exact(name, tmp_path):
    d = CASES[name]
    assert save_dictionary(d, tmp_path / "d") == tmp_path / "d"
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [
        "cfg.json",
        "sae_weights.safetensors",
    ]
    assert same(load_dictionary(tmp_path / "d"), d)


def test_cfg_json_speaks_saelens(tmp_path):
    save_dictionary(CASES["topk"], tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and (cfg["d_in"], cfg["d_sae"], cfg["k"]) == (6, 10, 3)
    assert cfg["metadata"]["hook_name"] == SITE and cfg["dtype"] == "float32"
    assert cfg["metadata"]["circuits"]["format"] == files.FORMAT
    save_dictionary(CASES["transcoder"], tmp_path, overwrite=True)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["architecture"] == "transcoder" and cfg["d_out"] == 4
    assert cfg["metadata"]["hook_name_out"] == "blocks.0.hook_mlp_out"
    assert set(load_file(tmp_path / "sae_weights.safetensors")) == {
        "W_enc",
        "b_enc",
        "W_dec",
        "b_dec",
    }


@pytest.mark.parametrize("activation", ["relu", "jumprelu"])
def test_circuit_tracer_layout(activation, tmp_path):
    d = make("transcoder", activation, site="blocks.0.ln2.hook_normalized")
    save_dictionary(d, tmp_path, layout="circuit-tracer")
    weights = load_file(tmp_path / "transcoder.safetensors")
    assert weights["W_enc"].shape == weights["W_dec"].shape == (10, 6)  # [n, d_model] both
    assert ("activation_function.threshold" in weights) == (activation == "jumprelu")
    assert same(load_dictionary(tmp_path), d)
    save_dictionary(d, tmp_path, overwrite=True)  # back to SAELens's layout: one weights file
    assert not (tmp_path / "transcoder.safetensors").exists() and same(load_dictionary(tmp_path), d)


@pytest.mark.parametrize(
    "d",
    [
        CASES["relu"],
        CASES["topk_transcoder"],
        CASES["transcoder"],
        make("transcoder", apply_b_dec_to_input=True),
    ],
    ids=["sae", "topk", "d_out", "b_dec_in"],
)
def test_circuit_tracer_layout_refuses_what_it_cannot_read(d, tmp_path):
    with pytest.raises(ConfigError, match="layout='saelens'"):
        save_dictionary(d, tmp_path, layout="circuit-tracer")
    assert list(tmp_path.iterdir()) == []


def test_save_refuses_bad_arguments(tmp_path):
    d = CASES["relu"]
    with pytest.raises(InputError, match="Dictionary"):
        save_dictionary("not a dictionary", tmp_path)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="layout"):
        save_dictionary(d, tmp_path, layout="npz")  # type: ignore[arg-type]
    save_dictionary(d, tmp_path)
    with pytest.raises(ConfigError, match="overwrite=True"):
        save_dictionary(d, tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match="cannot create"):
        save_dictionary(d, tmp_path / "file" / "sub")


def test_failed_save_leaves_no_temporary_file(tmp_path, monkeypatch):
    def broken(tensors: Any) -> bytes:
        raise RuntimeError("disk on fire")

    save_dictionary(CASES["relu"], tmp_path)
    monkeypatch.setattr(files, "save", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        save_dictionary(CASES["topk"], tmp_path, overwrite=True)
    # the old weights stay, without their cfg.json: a folder load_dictionary refuses, not a mix
    assert [p.name for p in tmp_path.iterdir()] == ["sae_weights.safetensors"]
    with pytest.raises(SchemaError, match=r"no cfg\.json"):
        load_dictionary(tmp_path)


def test_negative_thresholds_warn_that_saelens_reads_them_as_zero(tmp_path, caplog):
    d = make(activation="jumprelu")
    d = Dictionary(d.config, d.W_enc, d.b_enc, d.W_dec, d.b_dec, d.threshold - 0.5)
    with caplog.at_level(logging.WARNING):
        save_dictionary(d, tmp_path)
    assert "negative" in caplog.text and same(load_dictionary(tmp_path), d)


def edit_cfg(folder: Path, **changes: Any) -> None:
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg.update(changes)
    (folder / "cfg.json").write_text(json.dumps(cfg))


def edit_weights(folder: Path, **changes: Any) -> None:
    weights = load_file(folder / "sae_weights.safetensors")
    weights.update(changes)
    save_file(
        {k: v for k, v in weights.items() if v is not None}, folder / "sae_weights.safetensors"
    )


BROKEN = {
    "cfg not an object": (lambda f: (f / "cfg.json").write_text("[1, 2]"), "JSON object"),
    "cfg not JSON": (lambda f: (f / "cfg.json").write_text("{not json"), "not valid JSON"),
    "weights missing": (lambda f: (f / "sae_weights.safetensors").unlink(), "is missing"),
    "weights not safetensors": (
        lambda f: (f / "sae_weights.safetensors").write_bytes(b"PK\x03\x04 a zip, say"),
        "not a readable safetensors",
    ),
    "tensor missing": (lambda f: edit_weights(f, b_enc=None), r"lacks \['b_enc'\]"),
    "tensor extra": (lambda f: edit_weights(f, W_skip=torch.zeros(6, 6)), "no place for"),
    "tensor wrong shape": (
        lambda f: edit_weights(f, W_enc=torch.zeros(60)),
        r"W_enc has shape \(60,\)",
    ),
    "tensor not float": (
        lambda f: edit_weights(f, b_dec=torch.zeros(6, dtype=torch.int64)),
        "not floats",
    ),
    "cfg disagrees": (lambda f: edit_cfg(f, d_sae=12), r"needs \(6, 12\).*disagree"),
    "cfg bad width": (lambda f: edit_cfg(f, d_in="6"), "d_in must be a positive int"),
    "architecture": (lambda f: edit_cfg(f, architecture="gated"), "'gated' is not supported"),
    "activation": (lambda f: edit_cfg(f, activation_fn="tanh-relu"), "'tanh-relu' is not"),
    "dtype": (lambda f: edit_cfg(f, dtype="int8"), "dtype must be a float type"),
    "normalization": (
        lambda f: edit_cfg(f, normalize_activations="layer_norm"),
        "normalized or reshaped",
    ),
    "transcoder without d_out": (lambda f: edit_cfg(f, architecture="transcoder"), "'d_out'"),
    "metadata not an object": (lambda f: edit_cfg(f, metadata=[]), "'metadata' must be"),
    "unknown layout": (
        lambda f: edit_cfg(f, metadata={"circuits": {"format": files.FORMAT, "layout": "npz"}}),
        "layout must be one of",
    ),
    "other format": (
        lambda f: edit_cfg(f, metadata={"circuits": {"format": "circuits.dictionary/9"}}),
        "this version reads",
    ),
    "scaling factor": (
        lambda f: edit_weights(f, scaling_factor=torch.full((10,), 2.0)),
        "scaling_factor other than 1",
    ),
}


@pytest.mark.parametrize("case", BROKEN)
def test_broken_folders_are_refused(case, tmp_path):
    save_dictionary(CASES["relu"], tmp_path)
    breaks, message = BROKEN[case]
    breaks(tmp_path)
    with pytest.raises(SchemaError, match=message):
        load_dictionary(tmp_path)


def test_missing_folder_and_cfg(tmp_path):
    with pytest.raises(ConfigError, match="is not a folder"):
        load_dictionary(tmp_path / "nowhere")
    with pytest.raises(SchemaError, match=r"no cfg\.json"):
        load_dictionary(tmp_path)
    with pytest.raises(InputError, match="file path"):
        load_dictionary(3)  # type: ignore[arg-type]


def saelens_5_folder(folder: Path) -> Dictionary:
    """A folder as SAELens 5.x wrote a top-k SAE (activation in activation_fn_str, hook_name at
    the top level, a unit scaling_factor), and the Dictionary it means."""
    d = make(activation="topk", k=3, site=SITE, apply_b_dec_to_input=True, seed=5)
    folder.mkdir()
    weights = {n: getattr(d, n) for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
    save_file(weights | {"scaling_factor": torch.ones(10)}, folder / "sae_weights.safetensors")
    cfg = {
        "architecture": "standard", "d_in": 6, "d_sae": 10, "dtype": "torch.float32",
        "device": "cpu", "model_name": "gpt2", "hook_name": SITE, "hook_layer": 0,
        "hook_head_index": None, "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 3},
        "apply_b_dec_to_input": True, "finetuning_scaling_factor": False,
        "sae_lens_training_version": "5.11.0", "prepend_bos": True, "dataset_path": "x",
        "dataset_trust_remote_code": True, "context_size": 128, "normalize_activations": False,
        "neuronpedia_id": None, "model_from_pretrained_kwargs": {}, "seqpos_slice": [None],
    }  # fmt: skip
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return d


def test_reads_saelens_5_layout(tmp_path):
    d = saelens_5_folder(tmp_path / "old")
    assert same(load_dictionary(tmp_path / "old"), d)


def test_foreign_jumprelu_thresholds_follow_saelens(tmp_path):
    """SAELens computes relu(pre) * (pre > threshold): a negative threshold acts as 0."""
    d = make(activation="jumprelu", seed=3)
    folder = tmp_path / "sl"
    save_dictionary(d, folder)
    threshold = torch.linspace(-1, 1, 10)
    edit_weights(folder, threshold=threshold)
    edit_cfg(folder, metadata={"sae_lens_version": "6.54.12"})  # as SAELens writes it
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(4))
    pre = x @ d.W_enc + d.b_enc
    z = load_dictionary(folder).encode(x)
    assert torch.equal(z, torch.relu(pre) * (pre > threshold))


# Interop with the real SAELens, run by `make tl3` (SAELens needs transformer-lens < 4).


def randomized(sae: Any, seed: int) -> Any:
    """`sae` with every parameter random (thresholds of both signs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return sae.eval()


def saelens_models() -> dict[str, Any]:
    sl = pytest.importorskip("sae_lens")
    standard = sl.StandardSAEConfig(d_in=6, d_sae=10)
    standard.metadata.hook_name = SITE
    return {
        "standard": sl.StandardSAE(standard),
        "jumprelu": sl.JumpReLUSAE(sl.JumpReLUSAEConfig(d_in=6, d_sae=10)),
        "topk": sl.TopKSAE(sl.TopKSAEConfig(d_in=6, d_sae=10, k=3)),
        "topk_rescaled": sl.TopKSAE(
            sl.TopKSAEConfig(d_in=6, d_sae=10, k=3, rescale_acts_by_decoder_norm=True)
        ),
        "transcoder": sl.Transcoder(
            sl.TranscoderConfig(d_in=6, d_sae=10, d_out=4, apply_b_dec_to_input=False)
        ),
        "jumprelu_transcoder": sl.JumpReLUTranscoder(
            sl.JumpReLUTranscoderConfig(d_in=6, d_sae=10, d_out=4, apply_b_dec_to_input=False)
        ),
    }


def assert_same_outputs(ours: Dictionary, theirs: Any, *, rtol: float = 0.0) -> None:
    """encode and decode agree within 1e-6 (plus `rtol` relative, where weights were folded)."""
    x = torch.randn(2, 5, ours.config.d_in, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        z = theirs.encode(x)
        torch.testing.assert_close(ours.encode(x), z, atol=1e-6, rtol=rtol)
        torch.testing.assert_close(ours.decode(z), theirs.decode(z), atol=1e-6, rtol=rtol)
        assert z.count_nonzero() > 0


@pytest.mark.transformer
@pytest.mark.parametrize(
    "name", ["standard", "jumprelu", "topk", "topk_rescaled", "transcoder", "jumprelu_transcoder"]
)
def test_reads_folders_saelens_wrote(name, tmp_path):
    sae = randomized(saelens_models()[name], seed=len(name))
    sae.save_model(tmp_path)
    d = load_dictionary(tmp_path)
    assert d.config.n_latents == 10 and d.config.site == (SITE if name == "standard" else None)
    assert_same_outputs(d, sae, rtol=1e-6 if name == "topk_rescaled" else 0.0)  # folded norms


@pytest.mark.transformer
@pytest.mark.parametrize(
    "name", ["relu", "relu_plain", "topk", "jumprelu", "transcoder", "jumprelu_transcoder"]
)
def test_saelens_reads_our_folders(name, tmp_path):
    sl = pytest.importorskip("sae_lens")
    d = CASES[name].to(dtype=torch.float32)
    save_dictionary(d, tmp_path)
    sae = sl.SAE.load_from_disk(tmp_path)
    assert sae.cfg.architecture() == json.loads((tmp_path / "cfg.json").read_text())["architecture"]
    assert sae.cfg.metadata.hook_name == d.config.site
    if d.config.kind == "transcoder":
        assert sae.cfg.metadata.hook_name_out == d.config.target_site
    assert_same_outputs(d, sae)


@pytest.mark.transformer
def test_saelens_reads_the_5_layout_as_we_do(tmp_path):
    sl = pytest.importorskip("sae_lens")
    d = saelens_5_folder(tmp_path / "old")
    assert_same_outputs(d, sl.SAE.load_from_disk(tmp_path / "old"))
