"""Several server processes that share one loaded model: ``mmfuse serve --processes N``.

One process serves a small model below its speed: its event loop, request decoding and
forward passes take turns on one interpreter lock, so HTTP, JSON and batching cost more than
the model itself (``benchmarks/results/serve_small.md``). With ``--processes N`` the model is
loaded once, then N processes are forked from it, so they share its weights (copy-on-write:
the memory is not paid N times). Each process runs its own event loop and batcher on its own
slice of the CPUs (pinned there, with torch's threads set to the slice), and binds the same
port with ``SO_REUSEPORT``, so the kernel spreads new connections over them.

What differs from one process:

- the port opens once the model is loaded (one process answers ``/health`` 503 while
  loading);
- batches form within a process, so each process batches its own share of the requests;
- ``/metrics`` sums every process's counters (Prometheus' multiprocess mode, in a temporary
  folder unless ``PROMETHEUS_MULTIPROC_DIR`` is set);
- a process that dies is replaced, and stopping the parent (SIGTERM or SIGINT) stops them all
  after their requests in progress are answered.

OpenMP's thread pool does not survive a fork (a forked child's first parallel region hangs), so
the parent loads the model with one torch thread and never runs a wider region.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import MmfuseError
from ..threads import available_cpus, cap_cpus

if TYPE_CHECKING:
    from .service import Service
    from .settings import ServeSettings

log = logging.getLogger("mmfuse.serve")
RESTARTS = 5  # a process that dies this many times within its first seconds stops the server
EARLY_S = 5.0


def cpu_slices(processes: int) -> list[list[int] | None]:
    """The CPUs each process is pinned to: the allowed CPUs split evenly (a process per CPU
    when there are more processes than CPUs); None for all when a cgroup quota, not the
    affinity mask, limits the CPUs (pinning would not share the quota out)."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return [None] * processes
    if len(allowed) != available_cpus():
        return [None] * processes
    if processes >= len(allowed):
        return [[allowed[k % len(allowed)]] for k in range(processes)]
    size, extra = divmod(len(allowed), processes)
    slices, start = [], 0
    for k in range(processes):
        end = start + size + (k < extra)
        slices.append(allowed[start:end])
        start = end
    return slices


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` with ``SO_REUSEPORT``, so each process listens on its
    own and the kernel balances connections between them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise MmfuseError(f"cannot bind {host}:{port}: {exc.strerror}; pick another --port or "
                          "stop what listens there") from None
    return sock


def serve_processes(load: Callable[[], Service], host: str, port: int,
                    settings: ServeSettings, log_level: str = "info") -> None:
    """Load the model, fork ``settings.processes`` servers from it, and keep them running
    until SIGTERM or SIGINT."""
    if not hasattr(socket, "SO_REUSEPORT") or not hasattr(os, "fork"):
        raise MmfuseError("--processes above 1 needs fork and SO_REUSEPORT (Linux); serve with "
                          "--processes 1")
    if settings.device != "cpu":  # CUDA does not survive a fork
        raise MmfuseError(f"--processes {settings.processes} serves on the CPU only; on "
                          f"{settings.device} serve with --processes 1 (one process keeps the "
                          "GPU busy by batching)")
    import torch

    own_metrics = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    if own_metrics:  # read when prometheus_client is first imported, so set it first
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="mmfuse-metrics-")
    reserved = listening_socket(host, port)  # a port of 0 becomes a free one for all
    try:
        torch.set_num_threads(1)  # no OpenMP pool before the fork, and an ONNX export's
        cap_cpus(1)  # onnxruntime session gets no thread pool either (each process runs it
        service = load()  # on one thread); every child sets its own share
        cap_cpus(None)
        # what the load made is never freed: kept out of the collector's sweeps, whose
        # reference-count writes would otherwise copy the shared pages into every process
        gc.collect()
        gc.freeze()
        _Supervisor(service, host, reserved, settings, log_level).run()
    finally:
        reserved.close()
        if own_metrics:
            shutil.rmtree(os.environ.pop("PROMETHEUS_MULTIPROC_DIR"), ignore_errors=True)


class _Supervisor:
    """Forks the server processes, replaces one that dies, and stops them all on a signal."""

    def __init__(self, service: Service, host: str, reserved: socket.socket,
                 settings: ServeSettings, log_level: str) -> None:
        self.service, self.host, self.reserved = service, host, reserved
        self.port = reserved.getsockname()[1]
        self.settings, self.log_level = settings, log_level
        self.slices = cpu_slices(settings.processes)
        self.share = max(1, available_cpus() // settings.processes)
        self.children: dict[int, tuple[int, float]] = {}  # pid -> (process number, start)
        self.early_deaths = 0
        self.stopping = False

    def spawn(self, k: int) -> None:
        pid = os.fork()
        if pid == 0:  # the child never returns
            code = 1
            try:
                self.reserved.close()
                _child(k, self.service, self.host, self.port, self.settings, self.slices[k],
                       self.share, self.log_level)
                code = 0
            except BaseException:
                log.exception("server process %d failed", k)
            finally:
                os._exit(code)
        self.children[pid] = (k, time.monotonic())

    def stop(self, signum: int = signal.SIGTERM, frame: object = None) -> None:
        self.stopping = True
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def run(self) -> None:
        previous = {s: signal.signal(s, self.stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            for k in range(self.settings.processes):
                self.spawn(k)
            print(f"{self.settings.processes} server processes on http://{self.host}:"
                  f"{self.port}/ (pids {', '.join(map(str, self.children))})",
                  file=sys.stderr, flush=True)
            while self.children:
                try:
                    pid, status = os.wait()
                except ChildProcessError:
                    break
                except InterruptedError:
                    continue
                self.ended(pid, status)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def ended(self, pid: int, status: int) -> None:
        """A process ended: replace it, unless the server is stopping or it keeps dying."""
        k, started = self.children.pop(pid)
        if self.stopping:
            return
        early = time.monotonic() - started < EARLY_S
        self.early_deaths = self.early_deaths + 1 if early else 0
        why = f"exit status {os.waitstatus_to_exitcode(status)}"
        if self.early_deaths >= RESTARTS:
            self.stop()
            raise MmfuseError(f"server process {k} died {RESTARTS} times within {EARLY_S:g} s "
                              f"of starting ({why}); see the log above")
        log.error("server process %d (pid %d) died (%s); starting another", k, pid, why)
        self.spawn(k)


def _child(k: int, service: Service, host: str, port: int, settings: ServeSettings,
           cpus: list[int] | None, share: int, log_level: str) -> None:
    """One server process: its own CPUs and threads, socket, event loop and batcher."""
    import torch
    import uvicorn

    from . import uvicorn_options
    from .app import create_app

    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, signal.SIG_DFL)
    os.setpgid(0, 0)  # Ctrl-C reaches the parent only, which stops every process once
    _die_with_parent()
    if cpus is not None:
        os.sched_setaffinity(0, cpus)
    cap_cpus(len(cpus) if cpus is not None else share)
    torch.set_num_threads(available_cpus())
    sock = listening_socket(host, port)
    # more decoding threads or forward passes than CPUs would only take turns on them (and
    # two passes on one CPU make two half batches)
    cpus_here = available_cpus()
    settings = dataclasses.replace(settings, decode_threads=min(settings.decode_threads,
                                                                cpus_here) if cpus_here > 1 else 0,
                                   workers=min(settings.workers, cpus_here))
    app = create_app(service, settings)
    config = uvicorn.Config(app, **uvicorn_options(settings, log_level))
    log.info("server process %d (pid %d) on CPUs %s", k, os.getpid(),
             cpus if cpus is not None else f"any ({share} threads)")
    uvicorn.Server(config).run(sockets=[sock])


def _die_with_parent() -> None:
    """Ask Linux to stop this process when its parent dies (a killed parent leaves no
    server processes behind)."""
    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
