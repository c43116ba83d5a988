"""Developer tasks: `nox -s demo`, `nox -s tests`, `nox -s lint`, `nox -s bench`."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = None  # a virtualenv on the interpreter nox runs on (any Python >= 3.11)


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """Simulated cluster + this metrics server + the real kubectl top."""
    session.install("-e", ".")
    session.run("metrics-server-sim", "--demo", *session.posargs)


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Every test: unit, integration, end-to-end with the real kubectl, deployment."""
    session.install("-e", ".[test]")
    session.run("pytest", *(session.posargs or ["-q"]))


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff and mypy --strict on the package."""
    session.install("-e", ".[lint]")
    session.run("ruff", "check", "metrics_server", "tests", "noxfile.py")
    session.run("mypy", "--strict", "metrics_server")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Micro-benchmarks (decode) and whole-process benchmarks; prints figures."""
    session.install("-e", ".[test]")
    session.run("python", "tests/bench/bench_decode.py", *session.posargs)
