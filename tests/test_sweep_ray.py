"""cc.sweep on Ray gives what the local backend gives, and a store written by Ray workers reads
back as an in-memory capture; on a local cluster of 2 CPUs that the module starts and stops.

References: the local backend, one cc.patch over the whole batch, pyarrow (and `datasets`)
reading the store's index, and an in-memory cc.capture.
"""

from __future__ import annotations

import os

import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest
import torch
from torch import nn

import circuits as cc

from .test_sweep import HEADS, induction_loss, weighted_by_tokens

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'circuits-mi[ray]')")


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """A local Ray cluster of 2 CPUs (2 workers) on localhost, without usage reports, stopped
    after the module."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 configure_logging=False, _node_ip_address="127.0.0.1")  # fmt: skip
        yield
        ray.shutdown()


@pytest.fixture(scope="module")
def induction():
    model = cc.zoo.induction_transformer()
    clean, corrupt, info = cc.zoo.induction_pair(64, seed=3)
    return model, {"clean": clean, "corrupt": corrupt, "mask": info.is_repeat}


def test_patching_every_head_on_ray_equals_local_and_one_patch(induction) -> None:
    model, pairs = induction
    options = dict(model=model, batch_size=8, metric_for=induction_loss, progress=False, **HEADS)
    local = cc.sweep(cc.patch, pairs, **options).to_frame()
    remote = cc.sweep(cc.patch, pairs, backend="ray", **options).to_frame()
    assert remote.drop(columns=["value", "effect", "normalised"]).equals(
        local.drop(columns=["value", "effect", "normalised"])
    )
    for column in ("value", "effect", "normalised"):
        assert (remote[column] - local[column]).abs().max() <= 1e-6
    whole = cc.patch(model, pairs["clean"], pairs["corrupt"], induction_loss(pairs),
                     progress=False, **HEADS).to_frame().set_index(["layer", "head"])  # fmt: skip
    combined = weighted_by_tokens(remote, pairs, 8)
    assert (combined - whole.loc[combined.index, "value"]).abs().max() <= 1e-5


def test_a_failing_item_on_ray_is_named_and_the_others_are_kept() -> None:
    def fn(batch):
        if 6 in batch:
            raise KeyError("item six")
        return len(batch)

    with pytest.raises(cc.SweepError, match="item 6: KeyError") as caught:
        cc.sweep(fn, list(range(12)), batch_size=4, backend="ray", progress=False)
    result = caught.value.result
    assert sum(result.values) == 11 and [f.start for f in caught.value.failures] == [6]


class Counter(nn.Module):
    """Counts the calls it serves: one copy per worker counts up, a copy per task stays at 1."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x


def test_the_model_is_shipped_once_per_worker() -> None:
    res = cc.sweep(lambda m, i: (os.getpid(), m(i) and m.calls), list(range(1, 17)),
                   model=Counter(), backend="ray", progress=False)  # fmt: skip
    by_worker: dict[int, list[int]] = {}
    for pid, calls in res.values:
        by_worker.setdefault(pid, []).append(calls)
    assert 1 <= len(by_worker) <= 2
    for calls in by_worker.values():
        assert sorted(calls) == list(range(1, len(calls) + 1))  # one model, counting up


def test_a_store_written_by_ray_workers_reads_everywhere(convnet, tmp_path, monkeypatch) -> None:
    x = torch.randn(24, 1, 6, 6, generator=torch.Generator().manual_seed(8))
    labels = torch.arange(24) % 4
    disk = cc.sweep(cc.capture_to_disk, x, model=convnet, batch_size=5, backend="ray",
                    path=tmp_path / "acts", sites=["conv1", "relu2"], columns={"label": labels},
                    progress=False)  # fmt: skip
    table = ds.dataset(tmp_path / "acts" / "index.parquet").to_table()
    assert table.num_rows == 24 and table["label"].to_pylist() == labels.tolist()
    assert sorted(set(table["shard"].to_pylist())) == [
        f"shard_0000{i}.safetensors" for i in range(5)
    ]
    whole = cc.capture(convnet, x, sites=["conv1", "relu2"])
    for name in ("conv1", "relu2"):
        assert torch.allclose(disk[name], whole[name], atol=1e-6)
    twos = cc.load_cache(tmp_path / "acts", where=pc.field("label") == 2)
    assert torch.allclose(twos["relu2"], whole["relu2"][labels == 2], atol=1e-6)
    datasets = pytest.importorskip("datasets", reason="datasets is not installed")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rows = datasets.load_dataset("parquet", data_files=str(tmp_path / "acts" / "index.parquet"),
                                 split="train", cache_dir=str(tmp_path / "hf"))  # fmt: skip
    assert rows["label"] == labels.tolist()


def test_shards_read_on_ray_workers_train_the_same_dictionary(convnet, tmp_path) -> None:
    x = torch.randn(40, 1, 6, 6, generator=torch.Generator().manual_seed(9))
    cc.capture_to_disk(convnet, x, tmp_path, sites=["relu2"], batch_size=8, progress=False)
    here, there = (
        cc.load_cache(tmp_path, shuffle=1),
        cc.load_cache(tmp_path, shuffle=1, reader="ray"),
    )
    for a, b in zip(here.batches(), there.batches(), strict=True):
        assert torch.equal(a["relu2"], b["relu2"])
    options = {"site": "relu2", "steps": 20, "batch_size": 64, "progress": False}
    saes = [cc.train_dictionary(cache, 8, **options) for cache in (here, there)]
    assert torch.equal(saes[0].W_dec, saes[1].W_dec)
