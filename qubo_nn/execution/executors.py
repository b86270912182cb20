"""Where many independent block solves run: CPU threads of this process, or a Ray cluster.

One seam for every caller that solves many blocks (``solve`` of a manifest, the hybrid's
anneal stage, ``quantize``'s row problems of a head or a network, :mod:`qubo_nn.execution.row_tasks`): :func:`map_unordered` for a stream of tasks whose results may come back in any
order, :func:`open_executor` for callers that schedule tasks themselves (submit, then wait for
a given one). Executors (:data:`EXECUTORS`):

- ``threads``: a :class:`concurrent.futures.ThreadPoolExecutor` of ``workers`` threads (the
  samplers' kernels release the GIL). Tasks are passed by reference; nothing is copied.
- ``ray``: Ray tasks (``ray.remote`` with ``max_retries``: a task whose worker process or node
  dies is run again; an exception raised by the task itself is not retried). With
  ``ray_address`` the driver joins that cluster (``ray start --head`` on one machine, ``ray
  start --address=HEAD:6379`` on the others; every node needs qubo-nn installed); without it,
  it uses the Ray instance this process already started, or starts a new local one with
  ``workers`` CPUs (even when a cluster runs on this machine: joining one takes its address)
  and shuts it down at the end. Ray is optional
  (``pip install 'qubo-nn[ray]'``); without it the ``ray`` executor fails at once.

Backpressure: at most ``max_in_flight`` tasks are submitted and not yet collected (default 2 ×
the parallelism: ``workers`` threads, or the CPUs of the Ray cluster), and :func:`map_unordered`
pulls the next item from its (lazy) iterable only when a slot frees, so the driver's memory
stays bounded however many tasks there are (Ray's "limit pending tasks" pattern, ``ray.wait``).

A :class:`~qubo_nn.errors.QuboNNError` raised by a task reaches the caller unchanged (the same
type and message with either executor). The task function must be a module-level function
(Ray sends it by reference) of one picklable argument.
"""
from __future__ import annotations

import concurrent.futures as cf
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from qubo_nn.errors import QuboNNError

EXECUTORS = ("threads", "ray")
RAY_INSTALL = "pip install 'qubo-nn[ray]'  (or: pip install 'ray>=2.9')"


@dataclass
class ExecutorConfig:
    """Where tasks run (see the module docstring).

    ``workers``: threads, or the CPUs of the local Ray instance started here (a running Ray
    instance or cluster brings its own CPUs). ``ray_address``: join this Ray cluster ("auto" or
    "HOST:PORT"; ``ray`` only). ``max_in_flight``: tasks submitted and not yet collected
    (None: 2 × the parallelism). ``retries``: Ray reruns of a task whose worker died.
    """

    executor: str = "threads"
    workers: int = 1
    ray_address: str | None = None
    max_in_flight: int | None = None
    retries: int = 3

    def validate(self) -> None:
        if self.executor not in EXECUTORS:
            raise QuboNNError(f"executor must be one of {', '.join(EXECUTORS)}, got {self.executor!r}")
        for name, low in (("workers", 1), ("retries", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise QuboNNError(f"{name} must be an integer >= {low}, got {v!r}")
        m = self.max_in_flight
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise QuboNNError(f"max_in_flight must be None or an integer >= 1, got {m!r}")
        if self.ray_address is not None:
            if self.executor != "ray":
                raise QuboNNError(f"ray_address needs executor 'ray', got executor {self.executor!r}")
            if not isinstance(self.ray_address, str) or not self.ray_address:
                raise QuboNNError(f"ray_address must be 'auto' or HOST:PORT, got {self.ray_address!r}")

    @property
    def ships_tasks(self) -> bool:
        """True when tasks travel to other processes (then send arrays, not library objects)."""
        return self.executor == "ray"


def check_available(cfg: ExecutorConfig) -> None:
    """Validate ``cfg`` and fail at once (before any work) when its executor is not installed."""
    cfg.validate()
    if cfg.executor == "ray":
        _import_ray()


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise QuboNNError(f"executor 'ray' needs Ray, which is not installed: {RAY_INSTALL}") from exc
    return ray


class _Threads:
    """Tasks on a thread pool of this process."""

    def __init__(self, cfg: ExecutorConfig):
        self.parallelism = cfg.workers
        self._pool = cf.ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="qubo-nn")

    def submit(self, fn: Callable[[Any], Any], item: Any) -> cf.Future:
        return self._pool.submit(fn, item)

    def wait(self, handles: list) -> list:
        done, _ = cf.wait(handles, return_when=cf.FIRST_COMPLETED)
        return [h for h in handles if h in done]  # submission order among the finished

    def result(self, handle: cf.Future) -> tuple[str, Any]:
        return "local", handle.result()

    def cancel(self, handles: list) -> None:
        for h in handles:
            h.cancel()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _ray_call(fn: Callable[[Any], Any], item: Any) -> tuple[str, Any]:
    """What a Ray worker runs: ``fn(item)``, with the id of the node it ran on."""
    import ray

    return ray.get_runtime_context().get_node_id(), fn(item)


class _Ray:
    """Tasks on Ray: a cluster at ``ray_address``, the instance already running here, or a local
    instance started (and shut down) by this object."""

    def __init__(self, cfg: ExecutorConfig):
        ray = self._ray = _import_ray()
        self._started = False
        quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
        if cfg.ray_address is not None:
            if not ray.is_initialized():
                try:
                    ray.init(address=cfg.ray_address, **quiet)
                except (ConnectionError, RuntimeError, ValueError) as exc:
                    raise QuboNNError(f"could not join the Ray cluster at {cfg.ray_address!r} ({exc}); "
                                      f"start one with `ray start --head` or check the address") from exc
                self._started = True
        elif not ray.is_initialized():
            # "local": a new instance even when a cluster runs on this machine (plain ray.init() would join it)
            ray.init(address="local", num_cpus=cfg.workers, include_dashboard=False, **quiet)
            self._started = True
        try:
            self.parallelism = max(1, int(ray.cluster_resources().get("CPU", cfg.workers)))
            self._remote = ray.remote(_ray_call).options(num_cpus=1, max_retries=cfg.retries,
                                                         retry_exceptions=False)
        except BaseException:
            self.close()
            raise

    def submit(self, fn: Callable[[Any], Any], item: Any):
        return self._remote.remote(fn, item)

    def wait(self, handles: list) -> list:
        done, _ = self._ray.wait(handles, num_returns=1)
        return done

    def result(self, handle) -> tuple[str, Any]:
        try:
            return self._ray.get(handle)
        except self._ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, QuboNNError):  # the task's own error, as threads would raise it
                raise exc.cause from None
            raise

    def cancel(self, handles: list) -> None:
        for h in handles:
            try:
                self._ray.cancel(h, force=True)
            except Exception:  # already finished or its worker gone: nothing to cancel
                pass

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False


class Executor:
    """A running executor (from :func:`open_executor`): ``submit(fn, item) -> handle``,
    ``wait(handles) -> finished handles``, ``result(handle) -> (node id, value)``,
    ``cancel(handles)``; ``parallelism`` = tasks that run at once; ``max_in_flight``."""

    def __init__(self, cfg: ExecutorConfig):
        check_available(cfg)
        self.cfg = cfg
        self._impl = _Ray(cfg) if cfg.executor == "ray" else _Threads(cfg)
        self.parallelism = self._impl.parallelism
        self.max_in_flight = cfg.max_in_flight or 2 * self.parallelism

    def submit(self, fn: Callable[[Any], Any], item: Any) -> Any:
        return self._impl.submit(fn, item)

    def wait(self, handles: list) -> list:
        return self._impl.wait(handles)

    def result(self, handle: Any) -> tuple[str, Any]:
        return self._impl.result(handle)

    def cancel(self, handles: list) -> None:
        self._impl.cancel(handles)

    def close(self) -> None:
        self._impl.close()

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_executor(cfg: ExecutorConfig) -> Executor:
    """Start the executor of ``cfg`` (a context manager: leaving it cancels nothing by itself
    but shuts down the thread pool, or the local Ray instance it started)."""
    return Executor(cfg)


def map_unordered(fn: Callable[[Any], Any], items: Iterable[Any], cfg: "ExecutorConfig | Executor", *,
                  progress: bool = False, desc: str = "", total: int | None = None,
                  nodes: dict[int, str] | None = None) -> Iterator[tuple[int, Any]]:
    """Run ``fn(item)`` for every item; yield ``(index, result)`` as tasks complete.

    ``cfg``: an :class:`ExecutorConfig` (an executor is started for this call and shut down at
    its end) or an :class:`Executor` from :func:`open_executor` (reused and left open: callers
    that map many small batches, one per layer group, start Ray once).
    ``items`` may be lazy: the next one is taken only when fewer than ``max_in_flight`` tasks
    are pending. ``nodes``, when given, gets index → the Ray node id that ran the task ("local"
    for threads). A task's :class:`QuboNNError` is raised here unchanged; a task whose Ray
    worker died is retried (``cfg.retries``). Closing the iterator early (``break``, an
    exception in the caller, Ctrl-C) cancels the pending tasks (and shuts down an executor this
    call started): use it as ``with contextlib.closing(map_unordered(...)) as results:``.
    """
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    import contextlib

    from tqdm.auto import tqdm

    opened = contextlib.nullcontext(cfg) if isinstance(cfg, Executor) else open_executor(cfg)
    with opened as ex:
        source = enumerate(items)
        pending: dict[Any, int] = {}
        bar = tqdm(total=total, desc=desc or f"tasks ({ex.cfg.executor})", unit="task", disable=not progress)
        try:
            exhausted = False
            while True:
                while not exhausted and len(pending) < ex.max_in_flight:
                    nxt = next(source, None)
                    if nxt is None:
                        exhausted = True
                    else:
                        pending[ex.submit(fn, nxt[1])] = nxt[0]
                if not pending:
                    return
                for handle in ex.wait(list(pending)):
                    index = pending.pop(handle)
                    node, value = ex.result(handle)
                    if nodes is not None:
                        nodes[index] = node
                    bar.update(1)
                    yield index, value
        finally:
            ex.cancel(list(pending))
            bar.close()
