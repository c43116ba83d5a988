"""Start-up errors an operator can fix are one log line and a non-zero exit, no traceback."""

from __future__ import annotations

import sys
from pathlib import Path

import trio

from metrics_server.simulator import ClusterConfig, open_cluster
from tests.harness import daemon_argv


async def run_server(*argv: str) -> tuple[int, str]:
    with trio.fail_after(60):
        result = await trio.run_process(
            [sys.executable, "-m", "metrics_server", *argv],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return result.returncode, result.stderr.decode()


def assert_one_clear_line(stderr: str, *needles: str) -> None:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("E")]
    assert len(errors) == 1, stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


async def test_missing_kubeconfig(tmp_path: Path) -> None:
    code, stderr = await run_server("--kubeconfig", str(tmp_path / "nope.yaml"))
    assert code == 1
    assert_one_clear_line(stderr, "nope.yaml")


async def test_unwritable_cert_dir_and_busy_port(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    async with open_cluster(ClusterConfig(nodes=1, pods_per_node=1)) as cluster:
        argv = daemon_argv(cluster, tmp_path)
        # Drop the serving cert flags so the server must generate one into --cert-dir.
        i = argv.index("--tls-cert-file")
        del argv[i : i + 4]
        argv[argv.index("--cert-dir") + 1] = str(blocker / "certs")
        code, stderr = await run_server(*argv)
        assert code == 1
        assert_one_clear_line(stderr, str(blocker / "certs"))

        listener = trio.socket.socket()
        await listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        argv = daemon_argv(cluster, tmp_path)
        argv[argv.index("--secure-port") + 1] = str(port)
        code, stderr = await run_server(*argv)
        listener.close()
        assert code == 1
        assert_one_clear_line(stderr, str(port))
