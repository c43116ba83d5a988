"""Developer tasks: `nox -s demo`, `nox -s tests`, `nox -s lint`, `nox -s bench`, `nox -s soak`,
`nox -s load`, `nox -s bench-api`."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = None  # a virtualenv on the interpreter nox runs on (any Python >= 3.11)
PINNED = ("-c", "constraints.txt")  # the versions the suite last passed with


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """Simulated cluster + this metrics server + the real kubectl top."""
    session.install("-e", ".", *PINNED)
    session.run("metrics-server-sim", "--demo", *session.posargs)


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Every test: unit, integration, end-to-end with the real kubectl, deployment."""
    session.install("-e", ".[test]", *PINNED)
    session.run("pytest", *(session.posargs or ["-q"]))


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff and mypy --strict on the package."""
    session.install("-e", ".[lint]", *PINNED)
    session.run("ruff", "check", "metrics_server", "tests", "noxfile.py")
    session.run("mypy", "--strict", "metrics_server")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Decoder, encoder and kubelet-client micro-benchmarks, then the whole-process benchmark
    (tests/bench/harness.py).

    Arguments after `--` go to the harness, e.g. `nox -s bench -- --sizes 0x0,5000x30
    --json docs/bench-results.json`. Default: 0x0 (baseline), 100x70, 1000x30.
    """
    session.install("-e", ".[test]", *PINNED)
    session.run("python", "tests/bench/bench_decode.py")
    session.run("python", "tests/bench/bench_encode.py")
    session.run("python", "-m", "tests.bench.bench_client", "--nodes", "100", "--rounds", "20")
    session.run("python", "-m", "tests.bench.harness", *session.posargs)


@nox.session(name="bench-smoke", python=PYTHON)
def bench_smoke(session: nox.Session) -> None:
    """CI guard (~2 minutes): 200 nodes x 30 pods; fails only when a per-node figure is 3x
    the one recorded in docs/bench-results.json, or nodes are not scraped every period."""
    session.install("-e", ".[test]", *PINNED)
    session.run(
        "python", "-m", "tests.bench.harness",
        "--sizes", "0x0,200x30", "--warmup", "10", "--window", "20", "--qps", "50",
        "--check", "docs/bench-results.json", *session.posargs,
    )


@nox.session(name="bench-api", python=PYTHON)
def bench_api(session: nox.Session) -> None:
    """API latency with wrk (needs the `wrk` binary): ~200 HPA-style queries/s with bearer
    tokens at 100 x 70, upstream's 10 s review caches against 1 h ones, fresh server each."""
    session.install("-e", ".[test]", *PINNED)
    session.run("python", "-m", "tests.bench.api_wrk", *session.posargs)


@nox.session(python=PYTHON)
def soak(session: nox.Session) -> None:
    """~10 minutes of churn (nodes and pods come and go, kubelets flap, watches drop)
    against the metrics server as its own process: zero API errors, stable RSS, scrape
    tasks tracking nodes. Figures in build/soak.json; `-- --duration 1800` for longer."""
    session.install("-e", ".[test]", *PINNED)
    session.run(
        "python", "-m", "tests.soak.soak", "--duration", "600", "--out", "build/soak.json",
        *session.posargs,
    )


@nox.session(python=PYTHON)
def load(session: nox.Session) -> None:
    """500 mixed queries/s (node list, pod list by namespace and selector, pod get, /readyz)
    for 60 s from a separate process while scraping: zero errors, latency percentiles.
    Figures in build/load.json; e.g. `-- --rate 800 --duration 120` to push harder."""
    session.install("-e", ".[test]", *PINNED)
    session.run(
        "python", "-m", "tests.soak.loadrun", "--rate", "500", "--duration", "60",
        "--out", "build/load.json", *session.posargs,
    )
