"""Ordered parallel map over patients: a local process pool, a Dask cluster, or inline when workers == 1."""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Protocol, TypeVar

from tipsprog.errors import InputError

IN_FLIGHT_PER_WORKER = 2
Item = TypeVar("Item")
Result = TypeVar("Result")
Value = TypeVar("Value", covariant=True)


class Pending(Protocol[Value]):
    """A submitted task: a local pool's or a Dask cluster's future."""

    def result(self) -> Value: ...


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
        yield from _in_order(lambda item: pool.submit(function, item), items, IN_FLIGHT_PER_WORKER * workers)


def _in_order(submit: Callable[[Item], Pending[Result]], items: Iterable[Item], in_flight: int) -> Iterator[Result]:
    """The results of submit(item) for every item, in input order, with at most `in_flight` submitted and not yet
    yielded (the next item is read only when one is yielded)."""
    pending: deque[Pending[Result]] = deque()
    for item in items:
        pending.append(submit(item))
        if len(pending) >= in_flight:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _map_dask(function: Callable[[Item], Result], items: Iterable[Item], address: str) -> Iterator[Result]:
    """function(item) for every item on the Dask cluster at `address`, yielded in input order; items are read as
    the cluster's threads free up, as for the local pool (an item must pickle without pointing into memory it does
    not keep alive: Dask reads its buffers after submit returns, see images._pickled_image)."""
    try:
        from distributed import Client
    except ImportError:
        raise InputError("--scheduler needs Dask: pip install 'tipsprog[dask]'") from None
    try:
        client = Client(address, set_as_default=False)  # waits Dask's distributed.comm.timeouts.connect (30 s)
    except (OSError, TimeoutError) as err:
        raise InputError(f"--scheduler {address}: cannot reach the Dask scheduler ({err})") from None
    with client:
        in_flight = IN_FLIGHT_PER_WORKER * max(1, sum(client.nthreads().values()))
        yield from _in_order(lambda item: client.submit(function, item, pure=False), items, in_flight)
