"""The activation store: a row index in Parquet that other engines read, row selection and
streaming in `cc.load_cache`, format-1 folders still read, and broken stores refused.

References: pyarrow (and `datasets`, if installed) reading the index without this library, and
an in-memory `cc.capture` of the same inputs.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import circuits as cc

N = 10


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(N, 1, 6, 6, generator=torch.Generator().manual_seed(4))


@pytest.fixture
def labels() -> list[str]:
    return ["cat" if i % 3 == 0 else "dog" for i in range(N)]


@pytest.fixture
def store(convnet, x, labels, tmp_path):
    columns = {"label": labels, "id": torch.arange(N) * 7}
    cc.capture_to_disk(convnet, x, tmp_path / "acts", sites=["conv1", "relu2"], batch_size=4,
                       columns=columns, progress=False)  # fmt: skip
    return tmp_path / "acts"


def test_other_engines_read_the_index_and_find_the_tensors(store, convnet, x, labels) -> None:
    table = ds.dataset(store / "index.parquet").to_table()
    assert table.num_rows == N and table["label"].to_pylist() == labels
    assert table["id"].to_pylist() == [7 * i for i in range(N)]
    cats = ds.dataset(store / "index.parquet").to_table(filter=pc.field("label") == "cat")
    assert cats["example"].to_pylist() == [0, 3, 6, 9]
    whole = cc.capture(convnet, x, sites=["conv1"])["conv1"]
    for row in cats.to_pylist():  # (shard, offset) is where the example's tensors are
        with safe_open(str(store / row["shard"]), "pt") as f:
            assert torch.allclose(f.get_tensor("conv1")[row["offset"]], whole[row["example"]])


def test_datasets_reads_the_index(store, tmp_path, monkeypatch) -> None:
    datasets = pytest.importorskip("datasets", reason="datasets is not installed")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rows = datasets.load_dataset("parquet", data_files=str(store / "index.parquet"),
                                 split="train", cache_dir=str(tmp_path / "hf"))  # fmt: skip
    assert len(rows) == N and rows.filter(lambda r: r["label"] == "cat")["example"] == [0, 3, 6, 9]


def test_row_selection_equals_the_rows_of_an_in_memory_capture(store, convnet, x) -> None:
    whole = cc.capture(convnet, x, sites=["conv1", "relu2"])
    cats = cc.load_cache(store, where=pc.field("label") == "cat")
    assert cats.rows == 4 and cats.index["example"].to_pylist() == [0, 3, 6, 9]
    assert torch.allclose(cats["relu2"], whole["relu2"][[0, 3, 6, 9]], atol=1e-6)
    picked = cc.load_cache(store, rows=[8, 1, 2], where=pc.field("label") == "dog")
    assert torch.allclose(picked["conv1"], whole["conv1"][[1, 2, 8]], atol=1e-6)
    streamed = [b["conv1"] for b in picked.batches()]
    assert [len(b) for b in streamed] == [2, 1]  # shard 0 holds 1 and 2, shard 2 holds 8
    assert torch.allclose(torch.cat(streamed), picked["conv1"])
    assert cc.load_cache(store, rows=torch.tensor([5])).index["label"].to_pylist() == ["dog"]


def test_shuffled_passes_visit_every_shard_in_a_new_order(store) -> None:
    disk = cc.load_cache(store, shuffle=3)
    firsts = [[float(b["conv1"][0, 0, 0, 0]) for b in disk.batches()] for _ in range(4)]
    assert all(sorted(f) == sorted(firsts[0]) for f in firsts)
    assert len({tuple(f) for f in firsts}) > 1
    again = cc.load_cache(store, shuffle=3)
    assert [[float(b["conv1"][0, 0, 0, 0]) for b in again.batches()] for _ in range(4)] == firsts
    sae = cc.train_dictionary(disk, 8, site="relu2", steps=5, batch_size=32, progress=False)
    assert sae.W_dec.shape == (8, 4)


def test_a_format_1_folder_still_loads(tmp_path, convnet, x) -> None:
    whole = cc.capture(convnet, x[:5], sites=["relu2"])["relu2"]
    save_file({"relu2": whole[:3].contiguous()}, tmp_path / "a.safetensors")
    save_file({"relu2": whole[3:].contiguous()}, tmp_path / "b.safetensors")
    index = {"format": "circuits.disk/1", "sites": {"relu2": ["batch", "channel", "h", "w"]},
             "shards": [{"file": "a.safetensors", "rows": 3}, {"file": "b.safetensors", "rows": 2}],
             "grads": False}  # fmt: skip
    (tmp_path / "index.json").write_text(json.dumps(index))
    old = cc.load_cache(tmp_path)
    assert torch.equal(old["relu2"], whole) and old.index["shard"].to_pylist()[2:4] == [
        "a.safetensors",
        "b.safetensors",
    ]
    assert torch.equal(cc.load_cache(tmp_path, rows=[4, 0])["relu2"], whole[[0, 4]])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "b.safetensors",
                                                         "index.json"]  # fmt: skip


def _rewrite_index(store, edit) -> None:
    table = pq.read_table(store / "index.parquet").to_pandas()
    edit(table)
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False), store / "index.parquet")


def test_a_row_index_pointing_outside_its_folder_is_refused(store, tmp_path) -> None:
    (tmp_path / "outside.safetensors").write_bytes((store / "shard_00000.safetensors").read_bytes())

    def edit(t):
        t["shard"] = t["shard"].astype(str)
        t.loc[0, "shard"] = "../outside.safetensors"

    _rewrite_index(store, edit)
    with pytest.raises(cc.SchemaError, match="outside the folder"):
        cc.load_cache(store, rows=[0])


def test_indexes_that_disagree_are_refused(store) -> None:
    _rewrite_index(store, lambda t: t.__setitem__("offset", t["offset"].where(t.index != 5, 0)))
    with pytest.raises(cc.SchemaError, match=r"row 5 puts example 5 .* offset 0.*disagree"):
        assert cc.load_cache(store).index
    (store / "index.parquet").write_bytes(b"not parquet")
    with pytest.raises(cc.SchemaError, match="not a readable row index"):
        cc.load_cache(store, where=pc.field("label") == "cat")
    (store / "index.parquet").unlink()
    with pytest.raises(cc.SchemaError, match="incomplete"):
        cc.load_cache(store)


def test_a_shard_with_the_wrong_row_count_is_refused(store) -> None:
    short = {"conv1": torch.zeros(3, 4, 6, 6), "relu2": torch.zeros(3, 4, 6, 6)}
    save_file(short, store / "shard_00001.safetensors")
    with pytest.raises(cc.SchemaError, match="has 3 rows, its index claims 4"):
        cc.load_cache(store)["conv1"]
    with pytest.raises(cc.SchemaError, match="has 3 rows"):
        list(cc.load_cache(store, rows=[5]).batches())


def test_bad_selections_and_columns_are_refused(store, convnet, x, tmp_path, monkeypatch):
    with pytest.raises(cc.InputError, match=r"0\.\.9"):
        cc.load_cache(store, rows=[10])
    with pytest.raises(cc.InputError, match="where= must be a pyarrow expression"):
        cc.load_cache(store, where=pc.field("colour") == "red")
    with pytest.raises(cc.InputError, match="keeps no row"):
        cc.load_cache(store, where=pc.field("label") == "bird")
    with pytest.raises(cc.ConfigError, match="shuffle"):
        cc.load_cache(store, shuffle=-1)
    with pytest.raises(cc.ConfigError, match="reader"):
        cc.load_cache(store, reader="spark")
    with monkeypatch.context() as patched:
        patched.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
        with pytest.raises(cc.ConfigError, match=r"circuits-mi\[ray\]"):
            cc.load_cache(store, reader="ray")
    fresh = tmp_path / "fresh"
    with pytest.raises(cc.InputError, match="one value per example"):
        cc.capture_to_disk(convnet, x, fresh, sites="conv1", batch_size=4, columns={"y": [1]})
    with pytest.raises(cc.ConfigError, match="taken"):
        cc.capture_to_disk(convnet, x, fresh, sites="conv1", batch_size=4,
                           columns={"offset": np.arange(N)})  # fmt: skip
    assert not fresh.exists()  # refused before anything was written
    batches = [x[:4], x[4:]]
    with pytest.raises(cc.InputError, match="one value per example"):
        cc.capture_to_disk(convnet, batches, fresh, sites="conv1", columns={"y": [1, 2]})
    with pytest.raises(cc.SchemaError, match="interrupted"):
        cc.load_cache(fresh)  # shards written, no index: not a store


def test_a_sweep_writes_the_same_store_as_capture_to_disk(store, convnet, x, labels, tmp_path):
    swept = cc.sweep(cc.capture_to_disk, x, model=convnet, batch_size=4, path=tmp_path / "swept",
                     sites=["conv1", "relu2"], columns={"label": labels, "id": torch.arange(N) * 7},
                     progress=False)  # fmt: skip
    for name in ("index.json", "index.parquet", *(f"shard_0000{i}.safetensors" for i in range(3))):
        assert (tmp_path / "swept" / name).read_bytes() == (store / name).read_bytes(), name
    assert torch.equal(swept["relu2"], cc.load_cache(store)["relu2"])


def test_a_failed_sweep_capture_leaves_no_store(convnet, x, tmp_path) -> None:
    bad = x.clone()
    bad[6] = float("nan")  # capture refuses NaN inputs: batch 1 (items 4..7) fails
    with pytest.raises(cc.SweepError, match=r"items 4\.\.7") as caught:
        cc.sweep(cc.capture_to_disk, bad, model=convnet, batch_size=4, path=tmp_path / "s",
                 sites=["conv1"], progress=False)  # fmt: skip
    assert caught.value.result is None
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == []
