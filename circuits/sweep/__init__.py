"""Sweeps: one function or analysis mapped over many items, in this process or on a Ray cluster.

    res = cc.sweep(cc.patch, pairs, model=model, batch_size=8, backend="ray",
                   metric_for=lambda b: cc.metrics.cross_entropy(b["clean"], mask=b["mask"]),
                   site="blocks.{L}.attn.hook_z", unit="head")
    res.to_frame()              # every batch's frame, with the items it covers
    disk = cc.sweep(cc.capture_to_disk, tokens, model=model, backend="ray", batch_size=64,
                    path="acts/", sites=["blocks.0.hook_resid_post"])   # one store, many workers

The local backend and Ray run the same code on the same batches (`circuits.sweep.backends`), so
their results are equal; Ray adds the cluster: the model shipped once per worker, tasks spread
over its CPUs or GPUs, a task whose worker dies run again. A failing item is named and the
others' results are kept (`SweepError`).
"""

from circuits.sweep.api import Backend, sweep
from circuits.sweep.result import Failure, Part, Reduce, SweepError, SweepResult

__all__ = ["Backend", "Failure", "Part", "Reduce", "SweepError", "SweepResult", "sweep"]
