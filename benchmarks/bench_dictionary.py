"""Dictionary training against a plain PyTorch loop: time per step and peak memory.

A ReLU SAE with 16x expansion (d = 256, 4096 latents, batch 4096) trains on 1M rows read from a
disk cache (16 shards, written once with `capture_to_disk`). The reference is the loop a user
would write by hand: the whole cache loaded into memory, random batches, the same architecture,
loss, optimiser and decoder normalisation. Each side runs in a fresh process, so its peak
resident memory (VmHWM) above what imports take is its own. Time per step is the difference
between a run of LONG steps and one of SHORT steps, so one-off setup (ours: opening the cache,
init; the reference: loading the rows) is left out and the data each step reads is counted. The
sides run back to back, ROUNDS times, in alternating order, on one thread each, and the ratio is
the median of the rounds' ratios: on this shared machine the load from other processes moved a
two-thread side's time by 10-50% from one minute to the next (a thread waiting for a busy core),
so only runs close in time compare, and the process's CPU time on one thread is the steadiest
clock (reported beside wall-clock time; on a GPU only wall-clock time counts). Targets: per step
no slower (ratio >= 1 within noise); memory about one shard plus the shuffle buffer and one
step's tensors, not the cache.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import torch
from torch import nn

import circuits as cc
from circuits.dictionaries import train_dictionary

D, LATENTS, BATCH, ROWS, SHARD = 256, 4096, 4096, 1 << 20, 1 << 16
SHORT, LONG, ROUNDS = 5, 20, 4


def _shards() -> Iterator[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    for _ in range(ROWS // SHARD):
        yield torch.randn(SHARD, D, generator=gen)


def _clock() -> tuple[float, float]:
    """Wall-clock and CPU seconds so far (CPU time is what load from other processes on a
    shared machine disturbs least; on a GPU only wall-clock time means anything)."""
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> tuple[float, float]:
    now = _clock()
    return now[0] - start[0], now[1] - start[1]


def _plain(folder: str, steps: int) -> tuple[float, float]:
    """The hand-written loop on rows held in memory; (wall, CPU) seconds its steps take."""
    rows = cc.load_cache(folder)["0"]
    gen = torch.Generator().manual_seed(0)
    bound = 1 / math.sqrt(D)
    w_enc = (torch.rand(D, LATENTS, generator=gen) * 2 - 1) * bound
    w_dec = w_enc.T / w_enc.T.norm(dim=1, keepdim=True)
    params = [w_enc, torch.zeros(LATENTS), w_dec.contiguous(), rows[:BATCH].mean(0)]
    w_enc, b_enc, w_dec, b_dec = (p.requires_grad_(True) for p in params)
    opt = torch.optim.Adam([w_enc, b_enc, w_dec, b_dec], lr=1e-3)
    order = torch.randperm(len(rows), generator=gen)
    start = _clock()
    for step in range(steps):
        x = rows[order[step * BATCH : (step + 1) * BATCH]]
        z = torch.relu((x - b_dec) @ w_enc + b_enc)
        mse = (z @ w_dec + b_dec - x).square().sum(-1).mean()
        loss = mse + 5.0 * (z @ w_dec.norm(dim=1)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            w_dec.div_(w_dec.norm(dim=1, keepdim=True))
    return _since(start)


def _ours(folder: str, steps: int) -> tuple[float, float]:
    """train_dictionary streaming the disk cache; (wall, CPU) seconds the call takes."""
    cache = cc.load_cache(folder)
    start = _clock()
    train_dictionary(cache, LATENTS, site="0", steps=steps, batch_size=BATCH, progress=False)
    return _since(start)


def _measure(mode: str, folder: str) -> None:
    """In a fresh process: seconds per step and peak RSS growth of one side."""
    torch.set_num_threads(1)
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # imports the optimiser's modules
    base = _high_water_kib()
    side = _ours if mode == "ours" else _plain
    short, long = side(folder, SHORT), side(folder, LONG)
    peak = (_high_water_kib() - base) / 1024
    wall, cpu = ((b - a) / (LONG - SHORT) for a, b in zip(short, long, strict=True))
    print(json.dumps({"wall": wall, "cpu": cpu, "peak_mib": peak}))


def _high_water_kib() -> int:
    """This process's peak resident memory (VmHWM), which starts afresh in every process."""
    with open("/proc/self/status") as status:
        line = next(row for row in status if row.startswith("VmHWM:"))
    return int(line.split()[1])


def _side(mode: str, folder: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_dictionary", mode, folder],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def run() -> list[dict[str, object]]:
    with tempfile.TemporaryDirectory() as folder:
        model = nn.Sequential(nn.Identity()).eval()
        cc.capture_to_disk(model, _shards(), folder, sites=["0"], progress=False)
        runs = []
        for i in range(ROUNDS):  # alternate which side goes first
            first, second = ("ours", "plain") if i % 2 == 0 else ("plain", "ours")
            pair = {first: _side(first, folder), second: _side(second, folder)}
            runs.append((pair["ours"], pair["plain"]))
    ours, plain = (
        {k: statistics.median(r[i][k] for r in runs) for k in runs[0][i]} for i in (0, 1)
    )
    shape = f"relu SAE {D} -> {LATENTS}, batch {BATCH}"
    how = f"({LONG} - {SHORT} steps) / {LONG - SHORT}, {ROUNDS} paired rounds"
    rows = []
    for clock in ("wall", "cpu"):
        ratios = sorted(p[clock] / o[clock] for o, p in runs)
        rows.append(
            {
                "benchmark": f"dictionary step / plain PyTorch step ({clock}), {shape}",
                "ours_s": ours[clock],
                "reference_s": plain[clock],
                "ratio": statistics.median(ratios),
                "note": f"ours streams 1M rows from disk; {how}; ratio = median of the rounds' "
                f"plain/ours ({', '.join(f'{r:.2f}' for r in ratios)}), target >= 1",
            }
        )
    rows.append(
        {
            "benchmark": "dictionary training peak memory",
            "ours_s": None,
            "reference_s": None,
            "ratio": plain["peak_mib"] / ours["peak_mib"],
            "note": f"peak {ours['peak_mib']:.0f} MiB above baseline streaming vs "
            f"{plain['peak_mib']:.0f} MiB with the 1 GiB cache in memory; ratio = plain/ours",
        }
    )
    return rows


if __name__ == "__main__":
    if len(sys.argv) > 2:
        _measure(sys.argv[1], sys.argv[2])
    else:
        for r in run():
            print(r)
