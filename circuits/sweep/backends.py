"""Where a sweep's batches run: here, one after another, or as Ray tasks, both through `attempt`.

On Ray the job and the model go into the object store once (`ray.put`); each task gets a
reference to them, and each worker process fetches and unpickles them on its first task of the
sweep and keeps them for the next ones (`_SHARED`, until a later sweep replaces them), so the
model crosses to a worker once, not once per task. A task whose worker dies is run again up to
`retries` times (Ray's `max_retries`); an exception from the job itself is not retried (it
would raise again) but reported by `attempt`, item by item where the job allows.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Mapping
from typing import Any

from circuits.capture.remote import connect
from circuits.errors import ConfigError
from circuits.loops import progress_bar
from circuits.sweep.jobs import Span, cut
from circuits.sweep.result import Failure, Part

logger = logging.getLogger(__name__)

Outcome = list[Part | Failure]

_SHARED: dict[str, Any] = {}
"""In a Ray worker: the running sweep's (job, model), by object id; only the newest is kept."""

TASK_OPTIONS = ("num_cpus", "num_gpus", "memory")


def attempt(job: Any, model: Any, batch: Any, span: Span) -> Outcome:
    """The job's result on one batch; if it raises, the batch's items one at a time (where the
    job allows), so a failure names its item and the other items keep their results."""
    try:
        return [Part(span.start, span.stop, job.run(model, batch, span.number))]
    except Exception as err:
        if span.stop - span.start > 1 and job.split:
            out: Outcome = []
            for i in range(span.stop - span.start):
                one = Span(span.start + i, span.start + i + 1, span.number)
                out += attempt(job, model, cut(batch, i, i + 1), one)
            return out
        error = f"{type(err).__name__}: {err}"
        return [Failure(span.start, span.stop, error, traceback.format_exc())]


def run_local(
    job: Any, model: Any, batches: list[tuple[Span, Any]], progress: bool | None
) -> Outcome:
    """Every batch in this process, in order."""
    out: Outcome = []
    with progress_bar(batches[-1][0].stop, "sweep", progress, unit="item") as bar:
        for span, batch in batches:
            out += attempt(job, model, batch, span)
            bar.update(span.stop - span.start)
    return out


def run_ray(
    job: Any,
    model: Any,
    batches: list[tuple[Span, Any]],
    progress: bool | None,
    *,
    resources: Mapping[str, float],
    retries: int,
) -> Outcome:
    """Every batch as a Ray task on the cluster `ray.init` finds (or a local one it starts)."""
    ray = connect("backend='ray'")
    shared = [ray.put((job, model))]  # in a list, so Ray passes the reference, not the value
    task = ray.remote(_task).options(max_retries=retries, **task_options(resources))
    pending = {task.remote(shared, batch, span): span for span, batch in batches}
    logger.info("sweep: %d tasks on Ray (%s)", len(pending), ray.available_resources())
    out: Outcome = []
    with progress_bar(batches[-1][0].stop, "sweep", progress, unit="item") as bar:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            span = pending.pop(done[0])
            try:
                out += ray.get(done[0])
            except ray.exceptions.RayError as err:  # the worker died, even after the retries
                error = f"{type(err).__name__}: {str(err)[:500]}"
                out.append(Failure(span.start, span.stop, error))
            bar.update(span.stop - span.start)
    return out


def task_options(resources: Mapping[str, float]) -> dict[str, Any]:
    """Ray task options for `resources`: num_cpus, num_gpus and memory (bytes) as Ray names
    them, any other key a custom resource of the cluster."""
    if not isinstance(resources, Mapping) or not all(
        isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool) and v >= 0
        for k, v in resources.items()
    ):
        raise ConfigError(
            f"resources must map resource names to non-negative numbers ({{'num_cpus': 1, "
            f"'num_gpus': 0.5}}), got {resources!r}"
        )
    options: dict[str, Any] = {k: v for k, v in resources.items() if k in TASK_OPTIONS}
    custom = {k: v for k, v in resources.items() if k not in TASK_OPTIONS}
    return options | ({"resources": custom} if custom else {})


def _task(shared: list[Any], batch: Any, span: Span) -> Outcome:
    """A Ray task: the batch's outcome, with the sweep's job and model fetched once per worker."""
    import ray

    key = shared[0].hex()
    if key not in _SHARED:
        _SHARED.clear()  # the previous sweep's model
        _SHARED[key] = ray.get(shared[0])
    job, model = _SHARED[key]
    return attempt(job, model, batch, span)
