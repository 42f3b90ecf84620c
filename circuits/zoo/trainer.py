"""The command line every zoo trainer shares: train, then ship the weights and their record.

    python -m circuits.zoo.train_<name> --out PATH [--seed S] [--steps N] [--threads T]

writes PATH (safetensors, in HookedTransformer's key layout) and PATH with .json beside it: the
config, how it was trained (command, seed, steps, the trainer's own settings, seconds, threads,
torch version) and the evaluation figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from circuits.zoo.transformers import hooked_state_dict

log = logging.getLogger(__name__)

Train = Callable[[int, int], tuple[nn.Module, dict[str, Any], str]]
"""(seed, steps) -> the model, the trainer's settings and curves, a one-line summary."""


def train_command(
    argv: list[str] | None,
    *,
    name: str,
    steps: int,
    config: Mapping[str, Any],
    train: Train,
    evaluate: Callable[[nn.Module], dict[str, Any]],
    extra: Mapping[str, Any] | None = None,
    steps_help: str = "training steps",
) -> None:
    """Parse the arguments, train (timed), evaluate, write the weights and the JSON record.

    name: the trainer's module suffix (train_<name>) and what it trains. extra: more record
    entries, after the config.

    For example:

        train_command(None, name="lookup", steps=STEPS, config=CONFIG, train=_train,
                      evaluate=_evaluate)

    Raises:
        SystemExit: the arguments do not parse (argparse prints why).
    """
    parser = argparse.ArgumentParser(description=f"Train the circuits.zoo {name} model.")
    parser.add_argument("--out", type=Path, required=True, help="the .safetensors file to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=steps, help=steps_help)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)

    from safetensors.torch import save_file

    start = time.perf_counter()
    model, settings, summary = train(args.seed, args.steps)
    seconds = time.perf_counter() - start
    figures = evaluate(model)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(hooked_state_dict(model), str(args.out))
    record = {
        "config": dict(config),
        **(extra or {}),
        "training": {
            "command": f"python -m circuits.zoo.train_{name} --out PATH --seed {args.seed}",
            "seed": args.seed, "steps": args.steps, **settings,
            "seconds": round(seconds, 1), "threads": args.threads,
            "model_class": type(model).__name__, "torch": torch.__version__,
        },
        "eval": figures,
    }  # fmt: skip
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    log.info("trained in %.0f s; %s", seconds, summary)
    log.info("%s", json.dumps(figures))
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")
