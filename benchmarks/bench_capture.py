"""Capture overhead against a bare forward pass and TransformerLens's run_with_cache.

Rows: one site and all sites on a GPT-2-small-shaped random transformer (12 layers, d_model 768,
batch 8 x 128) and on a ResNet-18-shaped conv net (batch 8 x 3 x 224 x 224); then the peak memory of
a disk capture by batch size, each in a fresh process, against holding the same capture in memory.
Targets: one site within 2% of a bare forward; all sites no slower than run_with_cache.
Timing: one thread (a second thread on this shared 2-core box comes and goes, and moved these
ratios by 5-8% between runs), the functions interleaved round by round, and the ratio the median
of the rounds' ratios (times: medians).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile

import torch

import circuits as cc
from benchmarks.resnet import resnet18
from benchmarks.timing import medians, paired_ratio, rounds, row, threads

HOW = "1 thread, median of interleaved rounds"


def transformer_rows() -> list[dict[str, object]]:
    model = cc.zoo.tiny_transformer(
        n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=50257, n_ctx=1024
    )
    tokens = torch.randint(0, 50257, (8, 128), generator=torch.Generator().manual_seed(0))
    site = "blocks.6.hook_resid_post"
    with torch.no_grad():
        times = rounds(
            [
                lambda: model(tokens),
                lambda: model.run_with_cache(tokens),
                lambda: cc.capture(model, tokens, sites=[site]),
                lambda: cc.capture(model, tokens),
            ],
            repeat=4,
        )
    bare, rwc, one, every = medians(times)
    kind = type(model).__name__
    n_sites = len(cc.capture(model, tokens[:1, :4]))
    return [
        row(
            "capture 1 site / bare forward, gpt2-small shape", one, bare,
            f"{kind}; {HOW}; ratio = bare/ours, target >= 0.98", paired_ratio(times, 0, 2),
        ),
        row(
            "capture all sites / run_with_cache, gpt2-small shape", every, rwc,
            f"{n_sites} sites; {HOW}; ratio = run_with_cache/ours, target >= 1",
            paired_ratio(times, 1, 3),
        ),
    ]  # fmt: skip


def conv_rows() -> list[dict[str, object]]:
    model = resnet18()
    images = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        times = rounds(
            [
                lambda: model(images),
                lambda: cc.capture(model, images, sites=["5.1.relu2"]),
                lambda: cc.capture(model, images),
            ],
            repeat=9,
        )
    bare, one, every = medians(times)
    n_sites = len(cc.capture(model, images[:1]))
    return [
        row(
            "capture 1 site / bare forward, resnet-18 shape", one, bare,
            f"{HOW}; ratio = bare/ours, target >= 0.98", paired_ratio(times, 0, 1),
        ),
        row(
            "capture all sites / bare forward, resnet-18 shape", every, bare,
            f"{n_sites} sites, each copied (in-place safety); {HOW}; ratio = bare/ours",
            paired_ratio(times, 0, 2),
        ),
    ]  # fmt: skip


def disk_rows() -> list[dict[str, object]]:
    rows = []
    memory = _peak_mib(["memory"])
    for batch in (32, 128, 512):
        peak = _peak_mib(["disk", str(batch)])
        rows.append(
            {
                "benchmark": f"disk capture peak memory, batch {batch}",
                "ours_s": None,
                "reference_s": None,
                "ratio": memory / peak,
                "note": f"peak {peak:.0f} MiB above baseline vs {memory:.0f} MiB for the "
                "whole capture in memory (2048 images); ratio = memory/disk",
            }
        )
    return rows


def _peak_mib(args: list[str]) -> float:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_capture", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"])


def _measure(mode: str, batch: int) -> None:
    """In a fresh process: peak RSS growth of capturing 2048 images in memory or to disk."""
    torch.set_num_threads(1)
    model = resnet18()
    images = torch.randn(2048, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    sites = ["2", "4.0.relu1"]
    with torch.no_grad():
        model(images[:8])  # warm up kernels on a few images, below either mode's peak
    base = _high_water_kib()
    if mode == "memory":
        cc.capture(model, images, sites=sites)
    else:
        with tempfile.TemporaryDirectory() as folder:
            cc.capture_to_disk(model, images, folder, sites=sites, batch_size=batch, progress=False)
    peak = _high_water_kib()
    print(json.dumps({"peak_mib": max(peak - base, 1) / 1024}))


def _high_water_kib() -> int:
    """This process's peak resident memory (VmHWM). Unlike ru_maxrss, which a child inherits
    from its parent across fork and exec, it starts afresh in every process."""
    with open("/proc/self/status") as status:
        line = next(row for row in status if row.startswith("VmHWM:"))
    return int(line.split()[1])


def run() -> list[dict[str, object]]:
    with threads(1):
        timed = transformer_rows() + conv_rows()
    return timed + disk_rows()


if __name__ == "__main__":
    if len(sys.argv) > 1:
        _measure(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 2048)
    else:
        for r in run():
            print(r)
