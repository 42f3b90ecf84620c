"""Reproduce the zoo's dictionaries: `python -m circuits.zoo.train_dictionaries [--out DIR]`.

Each is trained with `cc.train_dictionary` on activations of a zoo model captured here (seeded),
saved as an SAELens folder, and scored on held-out inputs with `evaluate_dictionary`: fraction of
variance explained, L0, dead latents, and the metric recovered when it is spliced into the model
(the task's cross-entropy for the lookup transformer, the class logits' cross-entropy for the
curve net). The scores go to `dictionaries.json` beside the folders.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from circuits.capture import capture
from circuits.dictionaries import Dictionary, evaluate_dictionary, save_dictionary, train_dictionary
from circuits.zoo.curve import curve_cnn, curve_images
from circuits.zoo.dictionaries import DICTIONARIES_PATH
from circuits.zoo.lookup import IGNORE, LookupBatch, lookup_batch, lookup_transformer

LOOKUP_LATENTS, LOOKUP_K = 512, 4
CURVE_LATENTS, CURVE_K = 64, 4


def lookup_metric(batch: LookupBatch) -> Any:
    """The lookup task's cross-entropy on `batch` (positions t >= 1), as a metric of the logits."""

    def metric(logits: Tensor) -> Tensor:
        return nn.functional.cross_entropy(
            logits.transpose(1, 2), batch.targets, ignore_index=IGNORE
        )

    return metric


def curve_metric(labels: Tensor) -> Any:
    """The curve net's cross-entropy on its stimuli's labels, as a metric of its output."""
    return lambda logits: nn.functional.cross_entropy(logits, labels)


def train_lookup(layer: int, *, progress: bool | None = None) -> tuple[Dictionary, dict]:
    """A top-k transcoder of the lookup transformer's MLP `layer`, and its report."""
    model = lookup_transformer()
    site, target = f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.hook_mlp_out"
    train = capture(model, lookup_batch(4096, seed=11).tokens, sites=[site, target])
    d = train_dictionary(train, LOOKUP_LATENTS, kind="transcoder", site=site, target_site=target,
                         activation="topk", k=LOOKUP_K, batch_size=1024, steps=4000, lr=3e-3,
                         seed=0, progress=progress)  # fmt: skip
    held = lookup_batch(512, seed=12)
    cache = capture(model, held.tokens, sites=[site, target])
    report = evaluate_dictionary(d, cache, model=model, inputs=held.tokens,
                                 metric=lookup_metric(held))  # fmt: skip
    return d, report.iloc[0].to_dict()


def train_curve(*, progress: bool | None = None) -> tuple[Dictionary, dict]:
    """A top-k SAE on the curve net's relu2 channels, and its report."""
    model = curve_cnn()
    train = capture(model, curve_images(2048, seed=21).images, sites=["relu2"])
    d = train_dictionary(train, CURVE_LATENTS, site="relu2", activation="topk", k=CURVE_K,
                         batch_size=4096, steps=3000, lr=3e-3, seed=0,
                         progress=progress)  # fmt: skip
    held = curve_images(512, seed=22)
    cache = capture(model, held.images, sites=["relu2"])
    report = evaluate_dictionary(d, cache, model=model, inputs=held.images,
                                 metric=curve_metric(held.label))  # fmt: skip
    return d, report.iloc[0].to_dict()


def main(out: Path = DICTIONARIES_PATH, *, progress: bool | None = None) -> dict[str, dict]:
    """Train every zoo dictionary, save each folder under `out`, write out/dictionaries.json."""
    torch.manual_seed(0)
    reports: dict[str, dict] = {}
    jobs = {
        "lookup_transcoder_0": lambda: train_lookup(0, progress=progress),
        "lookup_transcoder_1": lambda: train_lookup(1, progress=progress),
        "curve_sae": lambda: train_curve(progress=progress),
    }
    for name, job in jobs.items():
        d, report = job()
        save_dictionary(d, out / name, overwrite=True)
        reports[name] = {k: v if not isinstance(v, float) else round(v, 6) for k, v in
                         report.items()}  # fmt: skip
    (out / "dictionaries.json").write_text(json.dumps(reports, indent=1, default=str) + "\n")
    return reports


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DICTIONARIES_PATH)
    args = parser.parse_args()
    for name, report in main(args.out, progress=True).items():
        print(name, {k: report[k] for k in ("fve", "l0", "dead", "recovered") if k in report})
