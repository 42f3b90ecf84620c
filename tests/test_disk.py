"""Disk capture reads back exactly what in-memory capture gives, and refuses broken folders."""

from __future__ import annotations

import pytest
import torch

import circuits as cc


def test_round_trip_equals_memory_capture(convnet, tmp_path):
    x = torch.randn(10, 1, 6, 6, generator=torch.Generator().manual_seed(3))
    sites = ["conv1", "conv2:input"]
    disk = cc.capture_to_disk(
        convnet,
        x,
        tmp_path / "acts",
        sites=sites,
        batch_size=4,
        progress=False,
        grads=True,
        metric=lambda o: o.sum(),
    )
    assert sorted(p.name for p in (tmp_path / "acts").iterdir()) == [
        "index.json",
        "index.parquet",
        "shard_00000.safetensors",
        "shard_00001.safetensors",
        "shard_00002.safetensors",
    ]
    again = cc.load_cache(tmp_path / "acts")
    assert disk.rows == again.rows == 10 and set(again) == set(sites)
    for name in sites:
        whole = cc.capture(convnet, x, sites=sites, grads=True, metric=lambda o: o.sum())
        assert torch.allclose(again[name], whole[name], atol=1e-6)
        assert torch.allclose(again.grad(name), whole.grads[name], atol=1e-6)
    shard = next(again.batches())
    assert shard.sites["conv1"].axes == ("batch", "channel", "h", "w") and len(shard["conv1"]) == 4


def test_iterable_of_batches(convnet, tmp_path):
    batches = [torch.randn(2, 1, 6, 6) for _ in range(3)]
    disk = cc.capture_to_disk(convnet, batches, tmp_path, sites="relu2", progress=False)
    assert torch.allclose(
        disk["relu2"], cc.capture(convnet, torch.cat(batches), sites="relu2")["relu2"]
    )


def test_broken_folders_are_refused(convnet, tmp_path):
    x = torch.randn(4, 1, 6, 6)
    with pytest.raises(cc.SchemaError, match="interrupted"):
        cc.load_cache(tmp_path)
    cc.capture_to_disk(convnet, x, tmp_path, sites="conv1", batch_size=2, progress=False)
    with pytest.raises(cc.ConfigError, match="overwrite"):
        cc.capture_to_disk(convnet, x, tmp_path, sites="conv1", batch_size=2, progress=False)
    with pytest.raises(cc.SiteNotFoundError, match="conv1"):
        cc.load_cache(tmp_path)["conv2"]
    (tmp_path / "shard_00001.safetensors").unlink()
    with pytest.raises(cc.SchemaError, match="incomplete"):
        cc.load_cache(tmp_path)["conv1"]
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(cc.SchemaError, match="JSON"):
        cc.load_cache(tmp_path)


@pytest.mark.parametrize("kwargs", [{}, {"batch_size": 0}])
def test_tensor_needs_batch_size(convnet, tmp_path, kwargs):
    with pytest.raises(cc.ConfigError, match="batch_size"):
        cc.capture_to_disk(convnet, torch.randn(4, 1, 6, 6), tmp_path, sites="conv1", **kwargs)
    assert cc.hook_count(convnet) == 0
