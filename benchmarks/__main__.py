"""Run the benchmarks named on the command line (default: all) and print a table of ratios."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import pandas as pd

import benchmarks


def main(names: list[str]) -> None:
    found = sorted(
        m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name.startswith("bench_")
    )
    chosen = [n for n in found if not names or n.removeprefix("bench_") in names]
    rows = []
    for name in chosen:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        rows += importlib.import_module(f"benchmarks.{name}").run()
    with pd.option_context("display.max_colwidth", 90, "display.width", 200):
        print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4g}"))


if __name__ == "__main__":
    main(sys.argv[1:])
