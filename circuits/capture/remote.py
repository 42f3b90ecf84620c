"""Ray, an optional extra: imported with an error that names the fix, connected to, and used to
read shards ahead on its workers.

`connect` joins the cluster that `ray.init` finds (a running one, or `RAY_ADDRESS`) or starts a
local one, and leaves it running for the next call. `read_ahead` runs a function as Ray tasks a
few calls ahead of the consumer and hands back the results in order, so at most `depth` results
wait in the object store.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from types import ModuleType
from typing import Any

from circuits.errors import CircuitsError, ConfigError

logger = logging.getLogger(__name__)

EXTRA = "pip install 'circuits-mi[ray]'"


def require_ray(what: str) -> ModuleType:
    """The `ray` module, or a ConfigError naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            f"{what} needs Ray, which is not installed here; install the extra with {EXTRA} "
            "(or pip install 'ray>=2.9'), or use the local backend"
        ) from None
    return ray


def connect(what: str) -> ModuleType:
    """`ray`, connected: to the cluster `ray.init()` finds, else a local one it starts."""
    ray = require_ray(what)
    if not ray.is_initialized():
        ray.init()
        logger.info("connected to Ray: %s", ray.cluster_resources())
    return ray


def read_ahead(
    fn: Callable[..., Any], calls: Iterable[tuple[Any, ...]], depth: int
) -> Iterator[Any]:
    """`fn(*args)` for each `args` of `calls`, run as Ray tasks at most `depth` ahead of the
    consumer; results in order. A CircuitsError raised in a task is raised here as it was."""
    ray = connect("reader='ray'")
    task = ray.remote(_guarded)
    pending: deque[Any] = deque()
    for args in calls:
        pending.append(task.remote(fn, *args))
        if len(pending) > depth:
            yield _result(ray.get(pending.popleft()))
    while pending:
        yield _result(ray.get(pending.popleft()))


def _guarded(fn: Callable[..., Any], *args: Any) -> tuple[Any, CircuitsError | None]:
    """In the worker: fn's result, or the CircuitsError it raised (returned, so it arrives as
    itself rather than wrapped in Ray's task error)."""
    try:
        return fn(*args), None
    except CircuitsError as err:
        return None, err


def _result(out: tuple[Any, CircuitsError | None]) -> Any:
    value, err = out
    if err is not None:
        raise err
    return value
