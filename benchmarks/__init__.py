"""Benchmarks: `python -m benchmarks [NAME ...]` runs every bench_*.py and prints one table.

Each module has `run() -> list[dict]` whose rows hold `benchmark`, `ours_s`, `reference_s`,
`ratio` (reference time / our time, or the figure the note names) and `note`. Absolute times on a
shared machine are noise; the ratios, measured against a reference in the same run, are the result.
"""
