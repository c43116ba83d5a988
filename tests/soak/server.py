"""This metrics server as a child process (`python -m metrics_server`) against a simulated
cluster, so its memory, file descriptors and CPU are its own and can be read from /proc.

    async with metrics_server_process(cluster, workdir) as server:
        await server.wait_ready()
        server.rss_kib(), server.open_fds(), server.log_problems()

The process gets the flags `tests.harness.daemon_argv` gives the in-process daemon, on a free
port of 127.0.0.1. Its log (stderr) is drained continuously, so the pipe never fills and
blocks the server; the last lines are kept for failure messages.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import sys
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import DEVNULL, PIPE

import httpx
import trio

from metrics_server.simulator import Cluster
from tests.harness import daemon_argv

REPO = Path(__file__).resolve().parents[2]
STOP_TIMEOUT = 15.0
LOG_TAIL = 300


def free_port() -> int:
    """A port of 127.0.0.1 nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def proc_status_kib(pid: int, key: str) -> int:
    """A `kB` field of /proc/<pid>/status (VmRSS, VmHWM, …)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        # The command name may contain spaces; the fields after its ")" do not.
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


@dataclass(slots=True)
class ServerProcess:
    """A running metrics server process and what its log said."""

    process: trio.Process
    url: str
    ca_file: Path
    token: str
    log_tail: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_TAIL))
    tracebacks: int = 0
    internal_errors: int = 0
    error_lines: int = 0

    @property
    def pid(self) -> int:
        return self.process.pid

    def client(self, timeout: float = 10.0) -> httpx.AsyncClient:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        return httpx.AsyncClient(
            base_url=self.url,
            verify=ctx,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=timeout,
        )

    def rss_kib(self) -> int:
        return proc_status_kib(self.pid, "VmRSS")

    def peak_rss_kib(self) -> int:
        return proc_status_kib(self.pid, "VmHWM")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid)

    def log_problems(self) -> str:
        """Empty when the log shows no traceback and no internal error. (Error lines are
        counted but expected: a failing kubelet is logged at error level.)"""
        if not (self.tracebacks or self.internal_errors):
            return ""
        tail = "\n".join(self.log_tail)
        return (
            f"{self.tracebacks} tracebacks, {self.internal_errors} internal errors; "
            f"log tail:\n{tail}"
        )

    def _take(self, line: str) -> None:
        self.log_tail.append(line)
        if line.startswith("Traceback"):
            self.tracebacks += 1
        if "internal error" in line.lower():
            self.internal_errors += 1
        # klog text lines start with the level letter; E and F are errors.
        if line[:1] in ("E", "F") and line[1:5].isdigit():
            self.error_lines += 1

    async def drain_log(self) -> None:
        stream = self.process.stderr
        assert stream is not None
        pending = b""
        async for chunk in stream:
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                self._take(line.decode("utf-8", "replace"))
        if pending:
            self._take(pending.decode("utf-8", "replace"))

    async def wait_ready(self, seconds: float = 30.0) -> None:
        """Until /readyz answers 200 (the process is up and has metrics to serve)."""
        last = "no answer"
        with trio.move_on_after(seconds) as scope:
            async with self.client(timeout=2.0) as client:
                while True:
                    if self.process.returncode is not None:
                        raise RuntimeError(
                            f"metrics server exited with {self.process.returncode}:\n"
                            + "\n".join(self.log_tail)
                        )
                    try:
                        response = await client.get("/readyz", params={"verbose": "1"})
                        if response.status_code == 200:
                            return
                        last = response.text
                    except httpx.HTTPError as exc:
                        last = repr(exc)
                    await trio.sleep(0.2)
        if scope.cancelled_caught:
            raise TimeoutError(f"metrics server not ready after {seconds:g}s: {last}")


@asynccontextmanager
async def metrics_server_process(
    cluster: Cluster, workdir: Path, extra: Sequence[str] = ()
) -> AsyncIterator[ServerProcess]:
    """Start `python -m metrics_server`; SIGTERM it (then SIGKILL) on exit."""
    await trio.Path(workdir).mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "metrics_server",
        *daemon_argv(cluster, workdir, "--secure-port", str(port), *extra),
    ]
    process = await trio.lowlevel.open_process(argv, stdin=DEVNULL, stdout=DEVNULL, stderr=PIPE)
    server = ServerProcess(
        process=process,
        url=f"https://127.0.0.1:{port}",
        ca_file=cluster.ca_file,
        token=cluster.admin_token,
    )
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.drain_log)
            try:
                yield server
            finally:
                with trio.CancelScope(shield=True):
                    await _stop(process)
    finally:
        if process.returncode is None:
            process.kill()
        if process.stderr is not None:
            await trio.aclose_forcefully(process.stderr)


async def _stop(process: trio.Process) -> None:
    if process.returncode is not None:
        return
    process.send_signal(signal.SIGTERM)
    with trio.move_on_after(STOP_TIMEOUT):
        await process.wait()
        return
    process.kill()
    with trio.move_on_after(5):
        await process.wait()
