"""Batches of recordings: one task per recording, here in turn or on a Dask cluster.

``live-stack reprocess`` with several inputs hands its jobs (one per recording) to
:func:`run_here` (one after another in this process) or :func:`run_on_dask` (a local
cluster of worker processes that it starts, or an existing cluster's scheduler). Both
call the same task function on each job and yield each job's :class:`Finished` record as
it completes; :class:`BatchProgress` follows the batch (files done of total, rate, ETA).

This module knows nothing of the pipeline: the task function is given. Dask
(``dask.distributed``, the ``cluster`` extra) is imported only inside the functions that
use it, so importing :mod:`live_stack` never imports it.

On a cluster:

* each worker process runs one task at a time (one Dask thread), and each task runs the
  pipeline with ``cores // workers`` threads of its own, so that the cores are used and
  not oversubscribed (:func:`threads_per_task`);
* a task whose worker process dies (killed, out of memory) is run again once on another
  worker (``distributed.scheduler.allowed-failures`` = :attr:`ClusterParams.retries`,
  set on the scheduler this module starts); if that worker dies too, the job is
  reported lost and the others go on;
* each worker process is set up for the pipeline as the ``live-stack`` entry point sets
  up its own process (:func:`live_stack.allocator.tune_allocator`,
  :func:`live_stack.blas.limit_blas_threads`), at the start of every task (both are
  idempotent and take microseconds).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

__all__ = [
    "ClusterParams",
    "Finished",
    "BatchProgress",
    "dask_available",
    "available_cores",
    "threads_per_task",
    "run_here",
    "run_on_dask",
]

#: Seconds to wait for an existing scheduler to answer before giving up.
CONNECT_TIMEOUT_S = 15
#: Environment variables the worker processes of a local cluster start with: one BLAS
#: and OpenMP thread each (what Dask sets by default), without Dask's default
#: ``MALLOC_TRIM_THRESHOLD_``, which would turn off :mod:`live_stack.allocator`'s tuning
#: (the pipeline's page-fault churn, see that module). A user's own setting in the
#: environment is inherited as usual.
WORKER_ENVIRON = {"OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1, "OPENBLAS_NUM_THREADS": 1}


@dataclass(frozen=True)
class ClusterParams:
    """Where a batch runs on Dask: a local cluster to start, or an existing scheduler."""

    workers: int = 0  # worker processes of a local cluster to start (0: use `scheduler`)
    scheduler: str = ""  # address of an existing scheduler, e.g. tcp://HOST:8786
    threads: int = 0  # pipeline threads per task (0: the cores of a worker's share)
    retries: int = 1  # times a task is run again after its worker died (local cluster)

    def __post_init__(self) -> None:
        if self.workers < 0 or self.workers > 1024:
            raise ValueError(f"workers must be 0..1024, got {self.workers}")
        if bool(self.workers) == bool(self.scheduler):
            raise ValueError("give either workers (a local cluster) or scheduler (an "
                             f"existing one), got workers={self.workers}, "
                             f"scheduler={self.scheduler!r}")
        if self.scheduler and "://" not in self.scheduler:
            raise ValueError(f"scheduler must be an address like tcp://HOST:8786, got "
                             f"{self.scheduler!r}")
        if not 0 <= self.threads <= 64:
            raise ValueError(f"threads must be 0..64, got {self.threads}")
        if not 0 <= self.retries <= 10:
            raise ValueError(f"retries must be 0..10, got {self.retries}")


@dataclass(frozen=True)
class Finished:
    """One job of a batch, done.

    ``result`` is what the task function returned; it is ``None`` only when the task
    did not complete (its worker died more often than allowed, or on a cluster the task
    raised), and ``error`` then says why.
    """

    job: Any  # the job, as given to the runner
    result: Any  # the task function's return value, or None
    error: str = ""  # why there is no result ("" when there is one)
    reruns: int = 0  # times the task was started again because its worker process died


def dask_available() -> bool:
    """Whether ``dask.distributed`` (the ``cluster`` extra) is installed."""
    return importlib.util.find_spec("distributed") is not None


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_per_task(cores: int, tasks: int) -> int:
    """Pipeline threads for each of ``tasks`` tasks running at once on ``cores`` cores."""
    if cores < 1 or tasks < 1:
        raise ValueError(f"cores and tasks must be positive, got {cores} and {tasks}")
    return max(1, cores // tasks)


def run_here(task: Callable[..., Any], jobs: Iterable[Any], *,
             threads: int | None = None) -> Iterator[Finished]:
    """Run ``task(job, threads=threads)`` for each job in turn, in this process."""
    for job in jobs:
        yield Finished(job, task(job, threads=threads))


def _run_task(task: Callable[..., Any], job: Any, threads: int) -> Any:
    """The Dask task of one job: set up the worker process, then run the job."""
    from live_stack.allocator import tune_allocator
    from live_stack.blas import limit_blas_threads

    tune_allocator()
    limit_blas_threads()
    return task(job, threads=threads)


def dask_setup(worker: Any) -> None:
    """Set up a worker process of a local cluster as it starts (Dask's preload hook).

    A terminal's Ctrl-C reaches every process of its group: the workers ignore it, and
    the process that started the cluster stops the batch and closes the cluster (else
    each worker would print a KeyboardInterrupt traceback as it goes).
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


#: The loggers of Dask and of its event loop, quietened when a batch is stopped.
CLUSTER_LOGGERS = ("distributed", "tornado")


def _quiet_cluster_logs() -> None:
    """The batch stops on purpose: the cluster's own loggers would report the interrupted
    waits and the killed workers' closed connections as errors, with tracebacks, after
    the one-line message."""
    for name in CLUSTER_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)


@contextlib.contextmanager
def _quiet_interrupt() -> Iterator[None]:
    """While a batch runs on Dask, a Ctrl-C quietens the cluster's loggers before the
    KeyboardInterrupt is raised: Dask's interrupted wait reports itself from its event
    loop's thread (through tornado's logger) as the exception unwinds, which a level set
    in an ``except`` clause can come too late for. Leaves a SIGINT handler other than
    Python's default alone."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return

    def interrupted(signum: int, frame: Any) -> None:
        _quiet_cluster_logs()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _stop_workers(client: Any, cluster: Any) -> None:
    """Kill the worker processes of a local cluster now, tasks and all (closing the
    cluster would wait for the running tasks), and keep their nannies from starting them
    again. A task killed while writing leaves its temporary file, never its output."""
    _quiet_cluster_logs()
    for nanny in cluster.workers.values():
        nanny.auto_restart = False
    for pid in client.run(os.getpid).values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _reruns(key: str, dask_scheduler: Any = None) -> int:
    """On the scheduler: how often the task ``key`` was on a worker that died."""
    task = dask_scheduler.tasks.get(key)
    return 0 if task is None else int(task.suspicious)


def _remote_threads(client: Any) -> int:
    """Threads per task on an existing cluster: the fewest cores per Dask thread of any
    machine (the workers on one host share its cores)."""
    info = client.scheduler_info(n_workers=-1)["workers"]
    if not info:
        raise OSError(f"the scheduler at {client.scheduler.address} has no workers")
    cores = client.run(available_cores)
    slots: dict[str, int] = {}
    host_cores: dict[str, int] = {}
    for address, worker in info.items():
        host = worker.get("host", address)
        slots[host] = slots.get(host, 0) + int(worker["nthreads"])
        host_cores[host] = int(cores.get(address, 1))
    return min(threads_per_task(host_cores[h], slots[h]) for h in slots)


@contextlib.contextmanager
def _client(params: ClusterParams) -> Iterator[tuple[Any, int, str, Any]]:
    """A Dask client on the cluster ``params`` names: ``(client, threads, description,
    cluster)``; ``cluster`` is the local cluster started here, or None."""
    import dask
    from distributed import Client, LocalCluster

    if params.scheduler:
        with Client(params.scheduler, timeout=f"{CONNECT_TIMEOUT_S}s") as client:
            threads = params.threads or _remote_threads(client)
            workers = len(client.scheduler_info(n_workers=-1)["workers"])
            yield client, threads, (f"cluster at {params.scheduler}: {workers} worker"
                                    f"{'' if workers == 1 else 's'}, {_threads(threads)} "
                                    "per recording"), None
        return
    threads = params.threads or threads_per_task(available_cores(), params.workers)
    config = {"distributed.scheduler.allowed-failures": params.retries,
              # one recording per worker at a time, none waiting on it: a worker that
              # dies takes one task with it, and a free worker takes the next at once
              "distributed.scheduler.worker-saturation": 1.0,
              "distributed.nanny.pre-spawn-environ": WORKER_ENVIRON}
    with contextlib.ExitStack() as stack:
        with dask.config.set(config):
            cluster = stack.enter_context(LocalCluster(
                n_workers=params.workers, threads_per_worker=1, processes=True,
                host="127.0.0.1", dashboard_address="127.0.0.1:0",
                preload=[__name__],  # each worker process runs dask_setup as it starts
                # no Dask memory limit: the pipeline's memory is bounded per recording
                # (about 160 MiB for 640x480), and Dask's share (memory / workers)
                # would pause and restart workers on large frames for no gain; a worker
                # the system kills for memory is retried once, then reported
                memory_limit=0, silence_logs=logging.ERROR))
            client = stack.enter_context(Client(cluster))
        yield client, threads, (f"local cluster: {params.workers} worker processes, "
                                f"{_threads(threads)} per recording"), cluster



def run_on_dask(task: Callable[..., Any], jobs: Sequence[Any], params: ClusterParams, *,
                announce: Callable[[str], None] = print,
                name: Callable[[Any], str] = str) -> Iterator[Finished]:
    """Run ``task(job, threads=...)`` for each job as one Dask task; yield as they finish.

    Parameters
    ----------
    task : callable
        The task function; it and the jobs must be picklable (a module-level function
        of an installed package: the workers import it by name).
    jobs : sequence
        The jobs, submitted in this order.
    params : ClusterParams
        The cluster to start or to use.
    announce : callable
        Called once, when the cluster is ready, with a line naming it, its workers, the
        threads per task and the dashboard's address.
    name : callable
        A job's name for its task key (shown on the dashboard).

    Yields
    ------
    Finished
        One per job, in the order they finish, with the times its task was started
        again because its worker died. A job whose worker died more than
        ``params.retries`` times, or whose task raised, has no result and says why in
        ``error``.

    Raises
    ------
    OSError
        If the scheduler cannot be reached. Leaving the generator early (an exception in
        the caller, Ctrl-C) cancels the jobs not finished; the worker processes of a
        local cluster are killed at once (a task killed while writing leaves a temporary
        file for the caller to remove), those of an existing cluster finish the tasks
        they are running.
    """
    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    with _quiet_interrupt(), _client(params) as (client, threads, description, cluster):
        link = client.dashboard_link
        announce(f"{description}; dashboard {link}")
        futures = {}
        for i, job in enumerate(jobs):
            key = f"stack-{i}-{name(job)}"
            futures[client.submit(_run_task, task, job, threads, key=key, pure=False)] = job
        try:
            for future in as_completed(futures):
                job = futures[future]
                try:
                    result = future.result()
                except KilledWorker:
                    result = Finished(job, None, error=(
                        "its worker process died while stacking it, each time it was "
                        "tried (killed, or out of memory?)"))
                except Exception as exc:  # the task's own failure: the others go on
                    result = Finished(job, None, error=f"{type(exc).__name__}: {exc}")
                else:
                    result = Finished(job, result,
                                      reruns=client.run_on_scheduler(_reruns, future.key))
                # the result is here: the worker may forget it (else the scheduler would
                # compute it again if that worker died)
                future.release()
                yield result
        except BaseException:  # Ctrl-C, or the caller stopped early
            client.cancel(list(futures))
            if cluster is not None:
                _stop_workers(client, cluster)
            raise


class BatchProgress:
    """Progress of a batch: files done of total, the rate and the time left.

    On a terminal a progress bar on ``stream`` (tqdm); elsewhere :meth:`line` gives a
    line to print after each file.
    """

    def __init__(self, total: int, *, stream: TextIO = sys.stderr, bar: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if total < 0:
            raise ValueError(f"total must be non-negative, got {total}")
        self.total = total
        self.done = 0
        self.failed = 0
        self._clock = clock
        self._start = clock()
        use_bar = stream.isatty() if bar is None else bar
        self._bar: Any = None
        if use_bar and total:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc="recordings", unit="file", file=stream,
                             dynamic_ncols=True)

    @property
    def bar(self) -> bool:
        """Whether a progress bar shows the progress (else :meth:`line` tells it)."""
        return self._bar is not None

    def update(self, *, failed: bool = False) -> None:
        """Count one more file done (``failed`` if it failed)."""
        self.done += 1
        self.failed += int(failed)
        if self._bar is not None:
            self._bar.update(1)

    def rate(self) -> float:
        """Files done per second so far."""
        elapsed = self._clock() - self._start
        return self.done / elapsed if elapsed > 0 else 0.0

    def eta(self) -> float | None:
        """Seconds until the batch is done at the rate so far (None before any file)."""
        rate = self.rate()
        return (self.total - self.done) / rate if rate > 0 else None

    def line(self) -> str:
        """``batch: 3 of 20 done (1 failed), 0.52 files/s, 33 s left``."""
        eta = self.eta()
        left = "" if eta is None else f", {_duration(eta)} left"
        failed = f" ({self.failed} failed)" if self.failed else ""
        return f"batch: {self.done} of {self.total} done{failed}, {self.rate():.2f} files/s{left}"

    def close(self) -> None:
        """Remove the progress bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _threads(n: int) -> str:
    return "1 thread" if n == 1 else f"{n} threads"


def _duration(seconds: float) -> str:
    """``42 s``, ``7 min 5 s``, ``2 h 3 min``."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"
