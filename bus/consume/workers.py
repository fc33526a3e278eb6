"""A pool of worker processes for `executor="process"` handlers, one task per worker at a time.

Not `concurrent.futures.ProcessPoolExecutor`, because a handler over its timeout must be
stopped: here that worker alone is killed and replaced, and the others' handlers run on. Each
worker owns a pipe; the event loop reads its answer when the pipe is readable (no thread per
call). A task is the handler by reference (module and name: the worker imports it once), the
parsed event and a `ProcessContext`, pickled; the answer is the follow-ups the handler
recorded, or its exception (pickled when it can be, else its type, message and trace).

Workers are spawned (not forked: the parent runs an event loop and threads), on demand up to
`size`, ignore SIGINT/SIGTERM (the parent drains and closes them) and exit when the parent's
end of the pipe closes. Starting, killing and joining a worker and writing a large event down
its pipe happen in threads: none of them blocks the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import multiprocessing
import pickle
import signal
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.reduction import ForkingPickler
from typing import Any

from bus.consume.context import ProcessContext
from bus.errors import HandlerTimeout, WorkerLost

log = logging.getLogger(__name__)

FollowUps = list[tuple[str, Any, str, Any]]  # type, data, id, delay
SPAWN_DEADLINE = 60.0  # seconds a new worker may take to start and import its handlers


class RemoteError(Exception):
    """A handler's exception that could not be pickled back: its type, message and trace."""


class _RemoteTraceback(Exception):
    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class _Worker:
    __slots__ = ("conn", "future", "process", "ready")

    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.future: asyncio.Future[tuple[str, Any, str]] | None = None
        # set once it imported the handler modules: a timeout never counts the spawn
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class ProcessPool:
    """`await run(func, event, ctx, timeout)` -> the follow-ups; `await close(grace)`."""

    def __init__(self, size: int, *, name: str = "bus", preload: tuple[str, ...] = ()) -> None:
        """*preload*: modules each worker imports before it takes a task."""
        self.size = size
        self.name = name
        self.preload = preload
        self._mp = multiprocessing.get_context("spawn")
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._wake = asyncio.Condition()
        self._closed = False
        self._starting = 0  # workers being started: they count against `size` already
        self._reaping: set[asyncio.Future[None]] = set()  # kills and joins, in threads

    async def run(
        self, func: Callable[..., Any], event: Any, ctx: ProcessContext, timeout: float | None
    ) -> FollowUps:
        """Run ``func(event, ctx)`` in a worker; raises what it raised, or `HandlerTimeout`."""
        worker = await self._acquire()
        loop = asyncio.get_running_loop()
        worker.future = loop.create_future()
        try:
            await self._started(worker)
            await _send(worker.conn, (func.__module__, func.__qualname__, event, ctx))
            if timeout is None:
                kind, value, tb = await worker.future
            else:
                async with asyncio.timeout(timeout):
                    kind, value, tb = await worker.future
        except BaseException as exc:  # timeout, cancellation, a dead pipe: the worker goes
            self._discard(worker)
            if isinstance(exc, TimeoutError) and not isinstance(exc, WorkerLost):
                raise HandlerTimeout(
                    f"{func.__qualname__} ran over its timeout of {timeout:g}s; its process "
                    "was replaced"
                ) from None
            raise
        worker.future = None
        self._release(worker)
        if kind == "ok":
            return list(value)
        raise _exception(value, tb)

    async def _started(self, worker: _Worker) -> None:
        """Until *worker* imported its modules; `WorkerLost` when it misses `SPAWN_DEADLINE`."""
        if worker.ready.done():
            worker.ready.result()
            return
        deadline = SPAWN_DEADLINE
        try:
            async with asyncio.timeout(deadline):
                await asyncio.shield(worker.ready)
        except TimeoutError:
            raise WorkerLost(
                f"its worker process did not start within {deadline:g}s (importing "
                f"{', '.join(self.preload) or 'its handler modules'})"
            ) from None

    async def close(self, grace: float = 5.0) -> None:
        """Ask every worker to exit, kill those still there after *grace* seconds."""
        self._closed = True
        workers = list(self._all)
        for w in workers:
            with contextlib.suppress(OSError):
                w.conn.send(None)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        for w in workers:
            await asyncio.to_thread(w.process.join, max(0.0, deadline - loop.time()))
            self._discard(w)
        if self._reaping:
            await asyncio.gather(*self._reaping, return_exceptions=True)

    async def warm(self) -> None:
        """Start every worker now, so the first events do not wait for a spawn."""
        while len(self._all) + self._starting < self.size and not self._closed:
            self._release(await self._spawn())

    @property
    def workers(self) -> int:
        return len(self._all)

    # -- workers ------------------------------------------------------------------------------

    async def _acquire(self) -> _Worker:
        async with self._wake:
            while not self._idle:
                if self._closed:
                    raise RuntimeError(f"process pool of {self.name} is closed")
                if len(self._all) + self._starting < self.size:
                    return await self._spawn()
                await self._wake.wait()
            return self._idle.pop()

    def _release(self, worker: _Worker) -> None:
        self._idle.append(worker)
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._wake:
            self._wake.notify()

    async def _spawn(self) -> _Worker:
        parent, child = self._mp.Pipe()
        process = self._mp.Process(
            target=_worker_main, args=(child, self.preload), name=f"{self.name}-worker", daemon=True
        )
        self._starting += 1
        try:  # a spawn forks, execs and writes the preparation data: not on the loop
            await asyncio.to_thread(process.start)
        finally:
            self._starting -= 1
            child.close()
        worker = _Worker(process, parent)
        self._all.add(worker)
        asyncio.get_running_loop().add_reader(parent.fileno(), self._on_readable, worker)
        return worker

    def _on_readable(self, worker: _Worker) -> None:
        try:
            answer = worker.conn.recv()
        except (EOFError, OSError):
            answer = None
        future = worker.future
        if answer is None:  # the process died (killed, crashed, os._exit)
            reaped = self._discard(worker)
            if reaped is not None:
                reaped.add_done_callback(lambda _: _lost(worker, future))
            return
        if answer == "ready":
            if not worker.ready.done():
                worker.ready.set_result(None)
            return
        if future is not None and not future.done():
            future.set_result(answer)

    def _discard(self, worker: _Worker) -> asyncio.Future[None] | None:
        """Out of the pool at once; killed and joined in a thread (the returned future)."""
        if worker not in self._all:
            return None
        self._all.discard(worker)
        if worker in self._idle:
            self._idle.remove(worker)
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(worker.conn.fileno())
        with contextlib.suppress(Exception):
            worker.conn.close()
        loop = asyncio.get_running_loop()
        reaped = loop.run_in_executor(None, _reap, worker.process)
        self._reaping.add(reaped)
        reaped.add_done_callback(self._reaping.discard)
        if not self._closed:  # a slot freed: a waiting task may spawn a replacement
            asyncio.get_running_loop().create_task(self._notify())
        return reaped


def _reap(process: BaseProcess) -> None:
    if process.is_alive():
        process.kill()
    process.join(1.0)


def _lost(worker: _Worker, future: asyncio.Future[Any] | None) -> None:
    """*worker* died: whoever waits on it (its task, or its start) fails with WorkerLost."""
    lost = WorkerLost(f"its worker process died (exit code {worker.process.exitcode})")
    if future is not None and not future.done():
        future.set_exception(lost)
    if not worker.ready.done():  # died while starting: who waits for it fails too
        worker.ready.set_exception(lost)
        worker.ready.exception()  # retrieved here: no "never retrieved" warning


LARGE = 32 * 1024  # a pipe holds 64 KiB: anything near it may block the writer until read


async def _send(conn: Connection, task: Any) -> None:
    """*task* down the worker's pipe; a large one is written from a thread."""
    data = ForkingPickler.dumps(task)
    if len(data) < LARGE:
        conn.send_bytes(data)
    else:
        await asyncio.to_thread(conn.send_bytes, data)


def _exception(value: Any, tb: str) -> BaseException:
    exc: BaseException
    if isinstance(value, bytes):
        try:
            exc = pickle.loads(value)
        except Exception:
            exc = RemoteError(tb.strip().splitlines()[-1] if tb else "handler failed")
    else:
        exc = RemoteError(str(value))
    exc.__cause__ = _RemoteTraceback(tb)
    return exc


def _worker_main(conn: Connection, preload: tuple[str, ...]) -> None:  # pragma: no cover
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for module in preload:
        importlib.import_module(module)
    conn.send("ready")
    funcs: dict[tuple[str, str], Callable[..., Any]] = {}
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        module, qualname, event, ctx = task
        try:
            func = funcs.get((module, qualname))
            if func is None:
                func = funcs[(module, qualname)] = _resolve(module, qualname)
            func(event, ctx)
            answer: tuple[str, Any, str] = ("ok", ctx.published, "")
        except BaseException as exc:
            answer = ("err", _pickled(exc), "".join(traceback.format_exception(exc)))
        try:
            conn.send(answer)
        except Exception as exc:  # follow-up data that does not pickle
            conn.send(("err", _pickled(exc), "".join(traceback.format_exception(exc))))


def _resolve(module: str, qualname: str) -> Callable[..., Any]:
    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    assert callable(target)
    return target  # type: ignore[no-any-return]


def _pickled(exc: BaseException) -> bytes | str:
    try:
        data = pickle.dumps(exc)
        pickle.loads(data)  # some exceptions pickle but cannot be rebuilt
        return data
    except Exception:
        return f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}"
