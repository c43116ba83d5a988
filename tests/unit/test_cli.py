"""Command line: upstream names and defaults, Go durations, one-line errors."""

from __future__ import annotations

import importlib.metadata
import platform
import re
import subprocess
import sys

import pytest
import trio

import metrics_server
from metrics_server.cli import SECOND, FlagError, parse_options


def test_defaults_match_upstream_binary() -> None:
    o = parse_options([])
    assert o.metric_resolution == 60 * SECOND
    assert o.kubelet.request_timeout == 10 * SECOND
    assert o.kubelet.preferred_address_types == (
        "Hostname",
        "InternalDNS",
        "InternalIP",
        "ExternalDNS",
        "ExternalIP",
    )
    assert o.kubelet.port == 10250
    assert not o.kubelet.use_node_status_port
    assert not o.kubelet.insecure_tls
    assert o.serving.secure_port == 443
    assert o.serving.bind_address == "0.0.0.0"
    assert o.serving.cert_dir == "apiserver.local.config/certificates"
    assert o.auth.always_allow_paths == ("/healthz", "/readyz", "/livez")
    assert o.auth.token_webhook_cache_ttl == 10 * SECOND
    assert o.logging_format == "text"
    assert o.verbosity == 0
    # k8s.io/apiserver's ShutdownTimeout (its --request-timeout, 1m0s); see README "Shutdown".
    assert o.serving.shutdown_grace == 60 * SECOND
    assert o.serving.shutdown_delay == 0


def test_manifest_args_parse() -> None:
    o = parse_options(
        [
            "--cert-dir=/tmp",
            "--secure-port=10250",
            "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname",
            "--kubelet-use-node-status-port",
            "--metric-resolution=15s",
            "-v=2",
            "-l",
            "role in (worker)",
        ]
    )
    assert o.serving.cert_dir == "/tmp"
    assert o.serving.secure_port == 10250
    assert o.kubelet.preferred_address_types == ("InternalIP", "ExternalIP", "Hostname")
    assert o.kubelet.use_node_status_port
    assert o.metric_resolution == 15 * SECOND
    assert o.verbosity == 2
    assert o.node_selector == "role in (worker)"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--kubelet-insecure-tls=false"], False),
        (["--kubelet-insecure-tls=true"], True),
        (["--kubelet-insecure-tls"], True),
    ],
)
def test_boolean_spellings(argv: list[str], expected: bool) -> None:
    assert parse_options(argv).kubelet.insecure_tls is expected


def test_go_durations() -> None:
    o = parse_options(["--metric-resolution=1m30s", "--kubelet-request-timeout=1500ms"])
    assert o.metric_resolution == 90 * SECOND
    assert o.kubelet.request_timeout == 1_500_000_000


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--metric-resolution=5s"], "--metric-resolution must be at least 10s"),
        (
            ["--metric-resolution=15s", "--kubelet-request-timeout=14s"],
            "at most 90% of --metric-resolution",
        ),
        (["--kubelet-request-timeout=0s"], "--kubelet-request-timeout must be positive"),
        (
            ["--kubelet-insecure-tls", "--kubelet-certificate-authority=/ca.pem"],
            "cannot be used together",
        ),
        (["--kubelet-client-certificate=/c.pem"], "must be given together"),
        (["--tls-cert-file=/c.pem"], "must be given together"),
        (["--kubelet-preferred-address-types=InternalIP,Bogus"], 'unknown address type "Bogus"'),
        (["--tls-min-version=VersionTLS99"], "--tls-min-version"),
        (["--logging-format=xml"], "--logging-format"),
        (["-l", "a in (b"], "--node-selector"),
        (["--kubelet-tls-server-name-from-node", "--kubelet-insecure-tls"], "cannot be combined"),
    ],
)
def test_validation_errors_name_the_flag(argv: list[str], needle: str) -> None:
    with pytest.raises(FlagError) as info:
        parse_options(argv)
    assert needle in str(info.value)


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metrics_server", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--metric-resolution=fast"], '"fast"'),
        (["--metric-resolution=5s"], "--metric-resolution"),
        (["--no-such-flag"], "--no-such-flag"),
        (["--kubelet-port=70000"], "--kubelet-port"),
    ],
)
def test_bad_flag_is_one_line_without_traceback(argv: list[str], needle: str) -> None:
    result = _run(*argv)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert needle in lines[0]
    assert "Traceback" not in result.stderr


VERSION_LINE = re.compile(
    r"metrics-server (?P<ours>\d+\.\d+\.\d+\S*) "
    r"\(python (?P<python>\d+\.\d+\.\d+\S*), "
    r"trio (?P<trio>\d+\.\d+\S*), "
    r"hypercorn (?P<hypercorn>\d+\.\d+\S*)\)"
)


def test_version_names_runtimes() -> None:
    result = _run("--version")
    assert result.returncode == 0
    assert result.stderr == ""
    match = VERSION_LINE.fullmatch(result.stdout.rstrip("\n"))
    assert match is not None, result.stdout
    # Each version is the one actually running, not just something version-shaped.
    assert match["ours"] == metrics_server.__version__
    assert match["python"] == platform.python_version()
    assert match["trio"] == trio.__version__
    assert match["hypercorn"] == importlib.metadata.version("hypercorn")


def test_help_lists_upstream_flags() -> None:
    result = _run("--help")
    assert result.returncode == 0
    for flag in (
        "--metric-resolution",
        "--kubelet-preferred-address-types",
        "--kubelet-use-node-status-port",
        "--kubelet-insecure-tls",
        "--kubelet-certificate-authority",
        "--node-selector",
        "--secure-port",
        "--requestheader-client-ca-file",
    ):
        assert flag in result.stdout
