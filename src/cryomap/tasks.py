"""Where per-micrograph and per-chunk tasks run: in this process, on a local Dask cluster, or on an
existing Dask cluster — with results in submission order, retries, and a bounded number in flight.

``TaskRunner(workers=1)`` runs tasks inline (no cluster, no pickling; ``threads=2`` runs two at a
time in this process, for tasks that spend their time in C with the GIL released); ``workers=N`` (N > 1) starts
a local ``dask.distributed`` cluster of N single-threaded worker processes for the duration of the
run; ``scheduler="tcp://host:8786"`` joins a running cluster instead (start one with
``dask scheduler`` and ``dask worker tcp://host:8786 --nthreads 1`` on each node, or with
dask-jobqueue's ``SLURMCluster`` — docs/scaling.md). Every task is a picklable function of a shared
*context* (sent to each worker once: a particle source, extraction parameters) and its own small
arguments; tasks write their own output (positioned writes into one stack) and return only small
results, which :meth:`TaskRunner.map` yields in order, so outputs do not depend on the number of
workers. A task that raises is retried (``retries``, default 2) — on the cluster by Dask, inline by
calling it again — except for a :class:`~cryomap.errors.CryomapError`, which is bad input and
would fail again.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from cryomap.errors import CryomapError

#: Environment every worker process gets: one thread per library (workers are the parallelism).
WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "CRYOMAP_IMAGE_THREADS": "1"}


def _call_with_context(fn: Callable, context: Any, args: tuple) -> Any:
    import torch

    from cryomap.quiet import quiet_libraries

    quiet_libraries()  # the command's warning filters do not travel to worker processes
    if torch.get_num_threads() != 1:  # a worker of an existing cluster may not have WORKER_ENV
        torch.set_num_threads(1)
    return fn(context, *args)


class TaskRunner:
    """Run ``fn(context, *args)`` for many ``args`` and yield results in order (see the module doc)."""

    def __init__(self, workers: int = 1, scheduler: str | None = None, *, retries: int = 2,
                 window: int | None = None, threads: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"workers must be ≥ 1, got {workers}")
        self.workers = int(workers)
        self.threads = max(1, int(threads))  # inline only: tasks run in this many threads, results still in order
        self.scheduler = scheduler
        self.retries = int(retries)
        self.window = window
        self._client = None
        self._cluster = None

    @property
    def distributed(self) -> bool:
        return self.scheduler is not None or self.workers > 1

    def __enter__(self) -> "TaskRunner":
        if not self.distributed:
            return self
        from dask.distributed import Client, LocalCluster

        for name in ("distributed", "tornado", "asyncio"):
            logging.getLogger(name).setLevel(logging.ERROR)
        if self.scheduler is not None:
            try:
                self._client = Client(self.scheduler, timeout="20s")
            except (OSError, TimeoutError) as exc:
                raise CryomapError(f"cannot reach the Dask scheduler at {self.scheduler} ({exc})") from exc
        else:
            self._cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                         dashboard_address=None, silence_logs=logging.ERROR, env=dict(WORKER_ENV))
            self._client = Client(self._cluster)
        return self

    def __exit__(self, *exc) -> None:
        if self._client is not None:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()
        self._client = self._cluster = None

    @property
    def n_workers(self) -> int:
        """Workers that run tasks (1 inline; the cluster's count otherwise)."""
        if self._client is None:
            return 1
        return max(1, len(self._client.scheduler_info().get("workers", {})))

    def map(self, fn: Callable, arg_list: Iterable[tuple], context: Any = None) -> Iterator[Any]:
        """Yield ``fn(context, *args)`` for each ``args``, in order; at most ``window`` tasks in flight."""
        if self._client is None:
            if self.distributed:
                raise RuntimeError("use the TaskRunner as a context manager to start its cluster")
            if self.threads == 1:
                for args in arg_list:
                    yield self._inline(fn, context, args)
                return
            yield from self._threaded(fn, context, arg_list)
            return
        ctx = self._client.scatter(context, broadcast=True, hash=False) if context is not None else None
        window = self.window or 2 * self.n_workers
        pending: deque = deque()
        for args in arg_list:
            pending.append(self._client.submit(_call_with_context, fn, ctx, tuple(args), pure=False,
                                               retries=self.retries))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def _threaded(self, fn: Callable, context: Any, arg_list: Iterable[tuple]) -> Iterator[Any]:
        """Inline tasks in :attr:`threads` threads, at most that many in flight, yielded in submission order."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.threads) as pool:
            pending: deque = deque()
            for args in arg_list:
                pending.append(pool.submit(self._inline, fn, context, args))
                if len(pending) >= self.threads:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

    def _inline(self, fn: Callable, context: Any, args: tuple) -> Any:
        for attempt in range(self.retries + 1):
            try:
                return fn(context, *args)
            except CryomapError:
                raise
            except Exception:
                if attempt == self.retries:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover


def default_workers() -> int:
    """Cores this process may use (the ``--workers`` a user would pick to fill one machine)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)
