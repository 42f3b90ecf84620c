"""Hostile inputs to the public API, each with what a user must get: a clear CircuitsError, or
the right result, and the model exactly as it was.

`CASES` is used twice: `test_reliability.py` runs every case as a regression test, and
`python -m tests.hostile` prints the outcome counts (clear error, raw exception, silent wrong
result, changed state) so a release note can compare them before and after a change.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
import torch
from torch import nn

import circuits as cc
from circuits.cli import main as cli

Check = Callable[[Path], Any]


@dataclass(frozen=True)
class Case:
    """name; run(tmp) raises, or returns True when the input was handled correctly; model: the
    model whose parameters, buffers, training flags and hooks must not change (or None)."""

    name: str
    run: Check
    model: Callable[[], nn.Module | None] = lambda: None


class BNNet(nn.Module):
    """A conv net with batch norm, in training mode unless told otherwise."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.bn(self.conv1(x)))).mean(dim=(2, 3))


_MODELS: dict[str, nn.Module] = {}


def model(name: str) -> nn.Module:
    """Shared models, built once: "bn" (training mode), "cnn" (corner_cnn), "tf" (tiny)."""
    if name not in _MODELS:
        _MODELS[name] = {
            "bn": lambda: BNNet().train(),
            "cnn": cc.zoo.corner_cnn,
            "tf": lambda: cc.zoo.tiny_transformer(
                n_layers=2, d_model=16, n_heads=2, d_head=8, d_vocab=12, n_ctx=8
            ),
        }[name]()
    return _MODELS[name]


def images(n: int = 4) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(n))


def tokens(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 12, (n, 8), generator=torch.Generator().manual_seed(seed))


def out0(out: torch.Tensor) -> torch.Tensor:
    return out[..., 0].mean()


def tf_graph() -> nx.DiGraph:
    m = model("tf")
    return cc.build_graph(cc.attribute(m, tokens(), tokens(seed=1), out0, method="eap"))


def _disk(tmp: Path, edit: Callable[[dict], Any] | None = None, n: int = 8) -> Path:
    folder = tmp / "acts"
    cc.capture_to_disk(model("cnn"), images(n), folder, sites=["conv1"], batch_size=4,
                       overwrite=True, progress=False)  # fmt: skip
    if edit is not None:
        index = json.loads((folder / "index.json").read_text())
        new = edit(index)
        (folder / "index.json").write_text(json.dumps(index if new is None else new))
    return folder


def _read(folder: Path) -> Any:
    return cc.load_cache(folder)["conv1"]


def _shard(tmp: Path, edit: Callable[[bytes], bytes]) -> Any:
    folder = _disk(tmp)
    shard = folder / "shard_00000.safetensors"
    shard.write_bytes(edit(shard.read_bytes()))
    return _read(folder)


def _escape(tmp: Path, name: str) -> Any:
    folder = _disk(tmp)
    outside = tmp / "outside.safetensors"
    outside.write_bytes((folder / "shard_00000.safetensors").read_bytes())
    if name == "symlink":
        (folder / "link.safetensors").symlink_to(outside)
        name = "link.safetensors"
    elif name == "absolute":
        name = str(outside)

    def edit(index: dict) -> None:
        index["shards"][0]["file"] = name

    _disk(tmp, edit)
    return _read(folder)


def _fewer_shards(tmp: Path) -> bool:
    folder = _disk(tmp, n=12)
    _disk(tmp, n=4)
    return sorted(p.name for p in folder.glob("*.safetensors")) == ["shard_00000.safetensors"]


def _lying_rows(tmp: Path) -> Any:
    def edit(index: dict) -> None:
        index["shards"][0]["rows"] = 3

    folder = _disk(tmp, edit)
    cache = cc.load_cache(folder)
    return cache.rows, _read(folder)


def _graph_file(tmp: Path, edit: Callable[[dict], Any]) -> Any:
    path = tmp / "g.json"
    g = cc.build_graph(
        __import__("pandas").DataFrame({"source": ["a"], "target": ["b"], "weight": [1.0]})
    )
    cc.save_graph(g, path)
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return cc.load_graph(path)


def _show_onto_itself(tmp: Path) -> bool:
    path = tmp / "g.json"
    cc.save_graph(tf_graph(), path)
    before = path.read_bytes()
    code = cli(["show", str(path), "--out", str(path)])
    return code == 2 and path.read_bytes() == before


def _cli_deep(tmp: Path) -> bool:
    path = tmp / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    return cli(["show", str(path)]) == 2


def _demo_onto_file(tmp: Path) -> bool:
    target = tmp / "file"
    target.write_text("x")
    return cli(["demo", "--out", str(target)]) == 2 and target.read_text() == "x"


def _read_only(tmp: Path) -> Any:
    """/proc refuses new files even to root, unlike a chmod-ed folder."""
    return cc.save_graph(tf_graph(), Path("/proc/circuits-hostile.json"))


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


def _nan_metric(out: torch.Tensor) -> torch.Tensor:
    return out.sum() * math.nan


def _index_listing(tmp: Path, text: str) -> Any:
    (tmp / "graph-metadata.json").write_text(text)
    return cc.export_neuronpedia(tf_graph(), tmp / "g.json", index=True)


def _meta_model() -> nn.Module:
    with torch.device("meta"):
        return nn.Sequential(nn.Linear(3, 2))


def _resample_one() -> Any:
    return cc.patch(model("cnn"), images(1), None, out0, site="conv1", unit="channel",
                    ablation="resample")  # fmt: skip


CASES: list[Case] = [
    # security and data loss
    Case("disk: shard path ../outside", lambda t: _escape(t, "../outside.safetensors")),
    Case("disk: absolute shard path", lambda t: _escape(t, "absolute")),
    Case("disk: symlink shard leaving the folder", lambda t: _escape(t, "symlink")),
    Case("disk: overwrite with fewer shards", _fewer_shards),
    Case("disk: index row counts lie", _lying_rows),
    Case("cli: show --out onto its own input", _show_onto_itself),
    # changed state and wrong results
    Case(
        "bn train: attribution patching",
        lambda t: cc.attribute(model("bn"), images(), images().flip(-1), out0, site="conv1"),
        lambda: model("bn"),
    ),
    Case(
        "bn train: integrated gradients",
        lambda t: cc.attribute(
            model("bn"), images(), None, out0, method="integrated_gradients", steps=4
        ),
        lambda: model("bn"),
    ),
    Case(
        "bn train: capture",
        lambda t: cc.capture(model("bn"), images(), sites=["conv1"]),
        lambda: model("bn"),
    ),
    Case(
        "bn train: patch",
        lambda t: cc.patch(
            model("bn"), images(), images().flip(-1), out0, site="conv1", unit="channel"
        ),
        lambda: model("bn"),
    ),
    Case(
        "graph file: a node listed twice",
        lambda t: _graph_file(t, lambda d: d["nodes"].append(dict(d["nodes"][0], kind="output"))),
    ),
    Case(
        "graph file: an edge listed twice",
        lambda t: _graph_file(t, lambda d: d["edges"].append(dict(d["edges"][0], weight=5.0))),
    ),
    Case(
        "faithfulness: a backward edge",
        lambda t: cc.faithfulness(model("tf"), _backward(), tokens(), tokens(seed=1), out0),
        lambda: model("tf"),
    ),
    # silent
    Case(
        "nan input: capture",
        lambda t: cc.capture(model("cnn"), images() * math.nan, sites=["conv1"]),
        lambda: model("cnn"),
    ),
    Case(
        "nan input: patch",
        lambda t: cc.patch(
            model("cnn"), images() * math.nan, images(), out0, site="conv1", unit="channel"
        ),
    ),
    Case(
        "inf input: eap",
        lambda t: cc.attribute(model("cnn"), images() / 0, images(), out0, method="eap"),
    ),
    Case(
        "nan metric: attribution patching",
        lambda t: cc.attribute(
            model("cnn"), images(), images().flip(-1), _nan_metric, site="conv1", unit="channel"
        ),
    ),
    Case(
        "nan metric: patch",
        lambda t: cc.patch(
            model("cnn"), images(), images().flip(-1), _nan_metric, site="conv1", unit="channel"
        ),
    ),
    Case(
        "nan metric: discover",
        lambda t: cc.discover(model("tf"), tokens(), tokens(seed=1), _nan_metric),
    ),
    Case("fit_probe on 2 samples", lambda t: cc.fit_probe(torch.randn(2, 3), [0, 1])),
    Case(
        "capture: positions out of range",
        lambda t: cc.capture(
            model("tf"), tokens(), sites=["blocks.0.hook_resid_pre"], positions=[40]
        ),
    ),
    Case(
        "capture: spatial out of range",
        lambda t: cc.capture(model("cnn"), images(), sites=["conv1"], spatial=(30, 0)),
    ),
    Case("patch: resample with a batch of 1", lambda t: _resample_one()),
    Case("tiny_transformer(n_layers=True)", lambda t: cc.zoo.tiny_transformer(n_layers=True)),
    Case(
        "tiny_transformer(normalization_type='bogus')",
        lambda t: cc.zoo.tiny_transformer(normalization_type="bogus"),
    ),
    # raw exceptions
    Case(
        "detached metric: capture with grads",
        lambda t: cc.capture(
            model("cnn"), images(), sites=["conv1"], grads=True, metric=lambda o: o.detach().sum()
        ),
    ),
    Case(
        "int metric: eap",
        lambda t: cc.attribute(
            model("cnn"), images(), images().flip(-1), lambda o: torch.tensor(3), method="eap"
        ),
    ),
    Case(
        "bool metric: attribution patching",
        lambda t: cc.attribute(
            model("cnn"), images(), images().flip(-1), lambda o: o.sum() > 0, site="conv1"
        ),
    ),
    Case(
        "detached metric: eap-ig",
        lambda t: cc.attribute(
            model("tf"),
            tokens(),
            tokens(seed=1),
            lambda o: o.detach().sum(),
            method="eap-ig",
            steps=2,
        ),
    ),
    Case(
        "detached metric: discover",
        lambda t: cc.discover(model("tf"), tokens(), tokens(seed=1), lambda o: o.detach().sum()),
    ),
    Case(
        "meta-device model: capture",
        lambda t: cc.capture(_meta_model(), torch.randn(2, 3), sites=["0"]),
    ),
    Case("disk: corrupted shard", lambda t: _shard(t, lambda b: b"\x07" * 64)),
    Case("disk: truncated shard", lambda t: _shard(t, lambda b: b[: len(b) // 2])),
    Case("disk: pickled shard", lambda t: _pickled(t)),
    Case("disk: huge header", lambda t: _shard(t, lambda b: (2**62).to_bytes(8, "little") + b)),
    Case(
        "disk: index without shards", lambda t: _read(_disk(t, lambda i: i.pop("shards") and None))
    ),
    Case("disk: index is a list", lambda t: _read(_disk(t, lambda i: [i]))),
    Case("hook replacement of the wrong dtype", lambda t: _under_hooks(lambda a, s: a.double())),
    Case(
        "hook replacement on the wrong device",
        lambda t: _under_hooks(lambda a, s: torch.zeros(a.shape, device="meta")),
    ),
    Case(
        "prob: token id outside the vocabulary",
        lambda t: cc.metrics.prob(99)(torch.randn(2, 8, 12)),
    ),
    Case(
        "logit_diff: token id outside the vocabulary",
        lambda t: cc.metrics.logit_diff(1, 99)(torch.randn(2, 8, 12)),
    ),
    Case(
        "patch: empty batch",
        lambda t: cc.patch(
            model("cnn"), images()[:0], images()[:0], out0, site="conv1", unit="channel"
        ),
    ),
    Case(
        "conv eap: empty batch",
        lambda t: cc.attribute(model("cnn"), images()[:0], images()[:0], out0, method="eap"),
    ),
    Case("sites on a non-module", lambda t: cc.sites("model", images())),
    Case("capture on a non-module", lambda t: cc.capture(42, images(), sites=["conv1"])),
    Case(
        "probe_sweep(batch_size=2.5)",
        lambda t: cc.probe_sweep(
            model("cnn"), images(8), [0, 1] * 4, sites=["conv1"], batch_size=2.5, progress=False
        ),
    ),
    Case(
        "attribution patching unit=2",
        lambda t: cc.attribute(
            model("cnn"), images(), images().flip(-1), out0, site="conv1", unit=2
        ),
    ),
    Case(
        "discover(target='0.8')",
        lambda t: cc.discover(model("tf"), tokens(), tokens(seed=1), out0, target="0.8"),
    ),
    Case(
        "build_graph meta faithfulness='abc'",
        lambda t: cc.build_graph(tf_graph_frames(), meta={"faithfulness": "abc"}),
    ),
    Case(
        "build_graph_from_matrix('abc')",
        lambda t: cc.build_graph_from_matrix("abc", sources=[{"key": "a"}], targets=[{"key": "b"}]),
    ),
    Case("load_graph(123)", lambda t: cc.load_graph(123)),
    Case("save_graph(g, None)", lambda t: cc.save_graph(tf_graph(), None)),
    Case("graph_frames(dict)", lambda t: cc.graph_frames({"a": 1})),
    Case("tiny_transformer(d_mlp=-5)", lambda t: cc.zoo.tiny_transformer(d_mlp=-5)),
    Case("induction_pair(seed=2.5)", lambda t: cc.zoo.induction_pair(4, seed=2.5)),
    Case("hooked_state_dict(cnn)", lambda t: cc.zoo.hooked_state_dict(model("cnn"))),
    Case("load_graph: deeply nested JSON", lambda t: _deep(t)),
    Case("cli: deeply nested JSON", _cli_deep),
    Case("save_graph into a read-only folder", _read_only),
    Case("save_graph onto a directory", lambda t: cc.save_graph(tf_graph(), _folder(t / "g.json"))),
    Case("cli: demo --out onto a file", _demo_onto_file),
    Case("neuronpedia: corrupt graph-metadata.json", lambda t: _index_listing(t, "{not json")),
    Case("neuronpedia: list-valued graph-metadata.json", lambda t: _index_listing(t, "[1, 2]")),
]


def tf_graph_frames() -> Any:
    return cc.graph_frames(tf_graph())[1]


def _backward() -> nx.DiGraph:
    g = tf_graph().copy()
    g.add_edge("blocks.1.attn.hook_z[0]", "blocks.0.attn.hook_z[1]", weight=1.0, method="eap")
    return g


def _pickled(tmp: Path) -> Any:
    folder = _disk(tmp)
    torch.save({"conv1": torch.zeros(4, 2)}, folder / "shard_00000.safetensors")
    return _read(folder)


def _under_hooks(fn: Callable[[Any, Any], Any]) -> Any:
    m = model("cnn")
    with torch.no_grad(), cc.hooks(m, {"conv1": fn}):
        return m(images())


def _deep(tmp: Path) -> Any:
    path = tmp / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    return cc.load_graph(path)


def _state(m: nn.Module | None) -> Any:
    if m is None:
        return None
    tensors = {k: v.detach().clone() for k, v in [*m.named_parameters(), *m.named_buffers()]}
    flags = [mod.training for mod in m.modules()]
    return tensors, flags, cc.hook_count(m)


def _same(a: Any, b: Any) -> bool:
    if a is None:
        return True
    (ta, fa, ha), (tb, fb, hb) = a, b
    equal = all(torch.equal(ta[k], tb[k]) for k in ta) and ta.keys() == tb.keys()
    return equal and fa == fb and ha == hb


def outcome(case: Case) -> tuple[str, str]:
    """("clear" | "handled" | "raw" | "silent" | "changed state", detail) for one case."""
    m = case.model()
    before = _state(m)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            got = case.run(Path(tmp))
            kind, detail = ("handled", "") if got is True else ("silent", repr(got)[:80])
        except cc.CircuitsError as err:
            kind, detail = "clear", f"{type(err).__name__}: {str(err)[:80]}"
        except (Exception, RecursionError) as err:
            kind, detail = "raw", f"{type(err).__name__}: {str(err)[:80]}"
    if not _same(before, _state(m)):
        kind = "changed state"
    return kind, detail


if __name__ == "__main__":
    counts: Counter[str] = Counter()
    for case in CASES:
        kind, detail = outcome(case)
        counts[kind] += 1
        if "-v" in sys.argv:
            print(f"{kind:14} {case.name}: {detail}")
    print(dict(counts), f"of {len(CASES)} cases")
