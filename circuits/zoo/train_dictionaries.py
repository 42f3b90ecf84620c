"""Reproduce the zoo's dictionaries: `python -m circuits.zoo.train_dictionaries [--out DIR]
[--only NAME ...]`.

Each is trained with `cc.train_dictionary` on activations of a zoo model captured here (seeded),
saved as an SAELens folder, and scored on held-out inputs with `evaluate_dictionary`: fraction of
variance explained, L0, dead latents, and the metric recovered when it is spliced into the model
(the task's cross-entropy for the lookup transformer, the class logits' cross-entropy for the
curve net, the loss on the repeated tokens for the induction model). The scores go to
`dictionaries.json` beside the folders; `--only` trains the named ones and updates their entries,
leaving the others' folders and entries as they are.
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
from circuits.metrics import cross_entropy
from circuits.zoo.curve import curve_cnn, curve_images
from circuits.zoo.dictionaries import DICTIONARIES_PATH
from circuits.zoo.induction import RepeatBatch, induction_transformer, repeated_tokens
from circuits.zoo.lookup import IGNORE, LookupBatch, lookup_batch, lookup_transformer

LOOKUP_LATENTS, LOOKUP_K = 512, 4
CURVE_LATENTS, CURVE_K = 64, 4
# 8 x d_model latents, 16 active: after layer 1 the stream mixes what the heads copied, and on
# held-out data k = 8 (256 latents) explains 0.86 of its variance, k = 12 (512) 0.91, k = 16 0.93;
# after layer 0 every choice explains >= 0.96. Twice the steps changed nothing that mattered.
INDUCTION_LATENTS, INDUCTION_K, INDUCTION_STEPS = 512, 16, 3000


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


def induction_metric(batch: RepeatBatch) -> Any:
    """The induction loss: cross-entropy on the second occurrence's predictable tokens."""
    return cross_entropy(batch.tokens, mask=batch.is_repeat)


def train_induction(layer: int, *, progress: bool | None = None) -> tuple[Dictionary, dict]:
    """A top-k SAE on the induction model's residual stream after `layer`, and its report.

    Trained on `repeated_tokens`, the model's own training distribution at its full length
    (64 tokens), every position a row; scored on other sequences with the induction loss."""
    model = induction_transformer()
    site = f"blocks.{layer}.hook_resid_post"
    train = capture(model, repeated_tokens(2048, seed=31).tokens, sites=[site])
    d = train_dictionary(train, INDUCTION_LATENTS, site=site, activation="topk", k=INDUCTION_K,
                         batch_size=1024, steps=INDUCTION_STEPS, lr=3e-3, seed=0,
                         progress=progress)  # fmt: skip
    held = repeated_tokens(512, seed=32)
    cache = capture(model, held.tokens, sites=[site])
    report = evaluate_dictionary(d, cache, model=model, inputs=held.tokens,
                                 metric=induction_metric(held))  # fmt: skip
    return d, report.iloc[0].to_dict()


def jobs(progress: bool | None = None) -> dict[str, Any]:
    """Every zoo dictionary's folder name and the function that trains it (and its report)."""
    return {
        "lookup_transcoder_0": lambda: train_lookup(0, progress=progress),
        "lookup_transcoder_1": lambda: train_lookup(1, progress=progress),
        "curve_sae": lambda: train_curve(progress=progress),
        "induction_sae_0": lambda: train_induction(0, progress=progress),
        "induction_sae_1": lambda: train_induction(1, progress=progress),
    }


def main(
    out: Path = DICTIONARIES_PATH,
    *,
    only: list[str] | None = None,
    progress: bool | None = None,
) -> dict[str, dict]:
    """Train the zoo dictionaries (every one, or those named in `only`), save each folder under
    `out` and write their reports into out/dictionaries.json, keeping the entries of the others.
    """
    todo = jobs(progress)
    unknown = sorted(set(only or ()) - set(todo))
    if unknown:
        raise SystemExit(f"unknown dictionaries {unknown}; choose from {sorted(todo)}")
    report_file = out / "dictionaries.json"
    reports: dict[str, dict] = {}
    if only and report_file.is_file():
        reports = json.loads(report_file.read_text())
    for name, job in todo.items():
        if only and name not in only:
            continue
        torch.manual_seed(0)
        d, report = job()
        save_dictionary(d, out / name, overwrite=True)
        reports[name] = {k: v if not isinstance(v, float) else round(v, 6) for k, v in
                         report.items()}  # fmt: skip
    report_file.write_text(json.dumps(reports, indent=1, default=str) + "\n")
    return {name: reports[name] for name in (only or todo)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DICTIONARIES_PATH)
    parser.add_argument("--only", action="append", metavar="NAME",
                        help=f"train only this one (repeatable): {', '.join(jobs())}")  # fmt: skip
    args = parser.parse_args()
    for name, report in main(args.out, only=args.only, progress=True).items():
        print(name, {k: report[k] for k in ("fve", "l0", "dead", "recovered") if k in report})
