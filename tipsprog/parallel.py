"""Ordered parallel map over patients: a local process pool, a Dask cluster, or inline when workers == 1."""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import TypeVar

from tipsprog.errors import InputError

IN_FLIGHT_PER_WORKER = 2
Item = TypeVar("Item")
Result = TypeVar("Result")


def default_workers() -> int:
    """All cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def map_ordered(
    function: Callable[[Item], Result], items: Iterable[Item], workers: int, scheduler: str | None = None
) -> Iterator[Result]:
    """Yield function(item) in input order, streaming results as they are ready; at most a few items per worker are
    in flight, so a lazy `items` iterable is read only as fast as the workers progress (memory stays flat).

    Workers start from a fork server (with the function's module preloaded), not a fork of this process:
    forking after torch has started its thread pool can deadlock the child. With a `scheduler` address the
    same tasks go to a Dask distributed cluster instead (its workers must see the same file paths).
    """
    if scheduler:
        yield from _map_dask(function, items, scheduler)
        return
    if workers <= 1:
        yield from map(function, items)
        return
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([function.__module__])
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        pending: deque[Future] = deque()
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) >= IN_FLIGHT_PER_WORKER * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _map_dask(function: Callable[[Item], Result], items: Iterable[Item], address: str) -> Iterator[Result]:
    """function(item) for every item on the Dask cluster at `address`, yielded in input order. The items are
    gathered before the client starts: a lazy iterable read while an in-process cluster runs gave wrong inputs."""
    items = list(items)
    try:
        from distributed import Client
    except ImportError:
        raise InputError("--scheduler needs Dask: pip install 'tipsprog[dask]'") from None
    try:
        client = Client(address, set_as_default=False)  # waits Dask's distributed.comm.timeouts.connect (30 s)
    except (OSError, TimeoutError) as err:
        raise InputError(f"--scheduler {address}: cannot reach the Dask scheduler ({err})") from None
    with client:
        for future in client.map(function, items, pure=False):
            yield future.result()
