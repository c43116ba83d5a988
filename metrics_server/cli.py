"""Command line: argv → frozen `Options`, with upstream's flag names, defaults and checks.

No I/O happens here beyond printing help or the version. Parsing follows Go's pflag
conventions that operators type by habit: `--flag=value` or `--flag value`, booleans as
`--flag` or `--flag=false`, durations in Go syntax (`15s`, `1m30s`), lists comma-separated.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NoReturn, TypeVar

from metrics_server import __version__
from metrics_server.quantity import parse_go_duration

SECOND = 1_000_000_000

ADDRESS_TYPES = ("Hostname", "InternalDNS", "InternalIP", "ExternalDNS", "ExternalIP")
TLS_VERSIONS = ("VersionTLS10", "VersionTLS11", "VersionTLS12", "VersionTLS13")


class FlagError(Exception):
    """A flag value that cannot be used; the message names the flag."""


@dataclass(frozen=True, slots=True)
class KubeletOptions:
    """How to reach and trust kubelets (`--kubelet-*`)."""

    preferred_address_types: tuple[str, ...] = (
        "Hostname",
        "InternalDNS",
        "InternalIP",
        "ExternalDNS",
        "ExternalIP",
    )
    port: int = 10250
    use_node_status_port: bool = False
    insecure_tls: bool = False
    certificate_authority: str = ""
    client_certificate: str = ""
    client_key: str = ""
    request_timeout: int = 10 * SECOND
    tls_server_name_from_node: bool = False
    """Dial the node's address but verify the kubelet certificate against the node name."""


@dataclass(frozen=True, slots=True)
class ServingOptions:
    """Where and how the HTTPS API listens."""

    secure_port: int = 443
    bind_address: str = "0.0.0.0"
    cert_dir: str = "apiserver.local.config/certificates"
    tls_cert_file: str = ""
    tls_private_key_file: str = ""
    tls_min_version: str = ""
    tls_cipher_suites: tuple[str, ...] = ()
    shutdown_grace: int = 60 * SECOND
    """--shutdown-grace-period: in-flight requests get this long to finish on shutdown
    (k8s.io/apiserver's ShutdownTimeout, which is its --request-timeout, 60s)."""
    shutdown_delay: int = 0
    """--shutdown-delay-duration: after a signal, keep serving with readyz failing this long
    before the listener stops accepting (k8s.io/apiserver's flag and default)."""


@dataclass(frozen=True, slots=True)
class AuthOptions:
    """Delegated authentication and authorization, as in k8s.io/apiserver."""

    client_ca_file: str = ""
    requestheader_client_ca_file: str = ""
    requestheader_allowed_names: tuple[str, ...] = ()
    requestheader_username_headers: tuple[str, ...] = ("x-remote-user",)
    requestheader_group_headers: tuple[str, ...] = ("x-remote-group",)
    requestheader_extra_headers_prefix: tuple[str, ...] = ("x-remote-extra-",)
    authentication_kubeconfig: str = ""
    authorization_kubeconfig: str = ""
    authentication_skip_lookup: bool = False
    authentication_tolerate_lookup_failure: bool = False
    token_webhook_cache_ttl: int = 10 * SECOND
    authorization_cache_authorized_ttl: int = 10 * SECOND
    authorization_cache_unauthorized_ttl: int = 10 * SECOND
    always_allow_paths: tuple[str, ...] = ("/healthz", "/readyz", "/livez")


@dataclass(frozen=True, slots=True)
class Options:
    """Everything the daemon needs, validated."""

    kubeconfig: str = ""
    metric_resolution: int = 60 * SECOND
    node_selector: str = ""
    kubelet: KubeletOptions = field(default_factory=KubeletOptions)
    serving: ServingOptions = field(default_factory=ServingOptions)
    auth: AuthOptions = field(default_factory=AuthOptions)
    verbosity: int = 0
    logging_format: str = "text"


T = TypeVar("T")


def _bool(text: str) -> bool:
    # strconv.ParseBool's accepted spellings.
    if text in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if text in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise ValueError(f'invalid boolean "{text}" (use true or false)')


def _duration(text: str) -> int:
    return parse_go_duration(text)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f'"{text}" is not a port number') from None
    if not 0 <= value <= 65535:
        raise ValueError(f"{value} is outside 0-65535")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f'"{text}" is not an integer') from None


def _list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors in pflag's spirit and no usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"metrics-server: error: {message}\n")


def _typed(flag: str, convert: Callable[[str], T]) -> Callable[[str], T]:
    def parse(text: str) -> T:
        try:
            return convert(text)
        except ValueError as exc:
            # argparse would hide our message behind "invalid value"; keep it.
            raise argparse.ArgumentTypeError(f"{exc}") from None

    parse.__name__ = flag
    return parse


def _build_parser() -> _Parser:
    p = _Parser(
        prog="metrics-server",
        description="Serves metrics.k8s.io/v1beta1 from kubelets' /metrics/resource.",
        allow_abbrev=False,
        add_help=True,
    )

    def flag(name: str, convert: Callable[[str], object], default: object, help_: str) -> None:
        p.add_argument(name, type=_typed(name, convert), default=default, help=help_)

    def boolean(name: str, help_: str) -> None:
        p.add_argument(
            name,
            type=_typed(name, _bool),
            nargs="?",
            const=True,
            default=False,
            metavar="BOOL",
            help=help_,
        )

    flag("--kubeconfig", str, "", "Kubeconfig file; empty means in-cluster configuration.")
    flag("--metric-resolution", _duration, 60 * SECOND, "Interval between scrapes (Go duration).")
    p.add_argument(
        "-l",
        "--node-selector",
        type=str,
        default="",
        help="Label selector choosing the nodes to scrape.",
    )
    flag(
        "--kubelet-preferred-address-types",
        _list,
        KubeletOptions().preferred_address_types,
        "Node address types to try, in order.",
    )
    flag("--kubelet-port", _port, 10250, "Kubelet port when not using the node status port.")
    boolean("--kubelet-use-node-status-port", "Use the port in the node's status.")
    boolean("--kubelet-insecure-tls", "Do not verify kubelet serving certificates.")
    flag(
        "--kubelet-certificate-authority",
        str,
        "",
        "CA bundle for kubelet serving certificates; default is the cluster CA.",
    )
    flag("--kubelet-client-certificate", str, "", "Client certificate for kubelets.")
    flag("--kubelet-client-key", str, "", "Client key for kubelets.")
    flag("--kubelet-request-timeout", _duration, 10 * SECOND, "Deadline for one kubelet scrape.")
    boolean(
        "--kubelet-tls-server-name-from-node",
        "Dial the node's address but verify the kubelet certificate against the node's name "
        "(for kubelet certificates without IP SANs).",
    )
    flag("--secure-port", _port, 443, "HTTPS port.")
    flag("--bind-address", str, "0.0.0.0", "Address to listen on.")
    flag("--cert-dir", str, "apiserver.local.config/certificates", "Generated certs go here.")
    flag("--tls-cert-file", str, "", "Serving certificate (PEM).")
    flag("--tls-private-key-file", str, "", "Serving key (PEM).")
    flag("--tls-min-version", str, "", "Minimum TLS version: " + ", ".join(TLS_VERSIONS) + ".")
    flag("--tls-cipher-suites", _list, (), "Comma-separated cipher suites (Go/IANA names).")
    flag(
        "--shutdown-grace-period",
        _duration,
        60 * SECOND,
        "On SIGTERM/SIGINT, time in-flight requests get to finish after the listener closes.",
    )
    flag(
        "--shutdown-delay-duration",
        _duration,
        0,
        "On SIGTERM/SIGINT, keep serving this long with /readyz failing before the listener "
        "closes, so load balancers can stop sending traffic first.",
    )

    a = AuthOptions()
    flag("--client-ca-file", str, "", "CA bundle for client certificates.")
    flag("--requestheader-client-ca-file", str, "", "CA bundle for front-proxy certificates.")
    flag("--requestheader-allowed-names", _list, (), "Allowed front-proxy CNs.")
    flag(
        "--requestheader-username-headers",
        _list,
        a.requestheader_username_headers,
        "Headers carrying the user name.",
    )
    flag(
        "--requestheader-group-headers",
        _list,
        a.requestheader_group_headers,
        "Headers carrying groups.",
    )
    flag(
        "--requestheader-extra-headers-prefix",
        _list,
        a.requestheader_extra_headers_prefix,
        "Header prefixes carrying extra user info.",
    )
    flag("--authentication-kubeconfig", str, "", "Kubeconfig for TokenReview.")
    flag("--authorization-kubeconfig", str, "", "Kubeconfig for SubjectAccessReview.")
    boolean("--authentication-skip-lookup", "Do not read extension-apiserver-authentication.")
    boolean(
        "--authentication-tolerate-lookup-failure",
        "Start even if extension-apiserver-authentication cannot be read.",
    )
    flag("--authentication-token-webhook-cache-ttl", _duration, 10 * SECOND, "TokenReview cache.")
    flag(
        "--authorization-webhook-cache-authorized-ttl",
        _duration,
        10 * SECOND,
        "Cache of allowed SubjectAccessReviews.",
    )
    flag(
        "--authorization-webhook-cache-unauthorized-ttl",
        _duration,
        10 * SECOND,
        "Cache of denied SubjectAccessReviews.",
    )
    flag(
        "--authorization-always-allow-paths",
        _list,
        a.always_allow_paths,
        "Paths served without authorization.",
    )
    flag(
        "--logging-format",
        str,
        "text",
        "Log format: text (klog's) or json (klog's JSON lines).",
    )
    p.add_argument(
        "-v",
        "--v",
        type=_typed("-v", _int),
        default=0,
        dest="v",
        help="Log verbosity: 2 failed health checks, 3 served requests, 6 outgoing requests, "
        "8 connection traces.",
    )
    p.add_argument("--version", action="store_true", help="Print the version and exit.")
    return p


def parse_options(argv: Sequence[str]) -> Options:
    """Parse and validate argv (without the program name); raise FlagError on bad values."""
    parser = _build_parser()
    args = parser.parse_args(list(argv))
    return _validate(args)


def _validate(ns: argparse.Namespace) -> Options:
    resolution: int = ns.metric_resolution
    timeout: int = ns.kubelet_request_timeout
    if resolution < 10 * SECOND:
        raise FlagError(f"--metric-resolution must be at least 10s, got {_fmt(resolution)}")
    if timeout <= 0:
        raise FlagError(f"--kubelet-request-timeout must be positive, got {_fmt(timeout)}")
    if timeout > resolution * 9 // 10:
        raise FlagError(
            f"--kubelet-request-timeout ({_fmt(timeout)}) must be at most 90% of "
            f"--metric-resolution ({_fmt(resolution)})"
        )
    types: tuple[str, ...] = ns.kubelet_preferred_address_types
    if not types:
        raise FlagError("--kubelet-preferred-address-types must name at least one type")
    for t in types:
        if t not in ADDRESS_TYPES:
            raise FlagError(
                f'--kubelet-preferred-address-types: unknown address type "{t}" '
                f"(known: {', '.join(ADDRESS_TYPES)})"
            )
    if ns.kubelet_insecure_tls and ns.kubelet_certificate_authority:
        raise FlagError(
            "--kubelet-insecure-tls and --kubelet-certificate-authority cannot be used together"
        )
    if ns.kubelet_insecure_tls and ns.kubelet_tls_server_name_from_node:
        raise FlagError(
            "--kubelet-tls-server-name-from-node verifies certificates; "
            "it cannot be combined with --kubelet-insecure-tls"
        )
    if bool(ns.kubelet_client_certificate) != bool(ns.kubelet_client_key):
        raise FlagError(
            "--kubelet-client-certificate and --kubelet-client-key must be given together"
        )
    if bool(ns.tls_cert_file) != bool(ns.tls_private_key_file):
        raise FlagError("--tls-cert-file and --tls-private-key-file must be given together")
    if ns.tls_min_version and ns.tls_min_version not in TLS_VERSIONS:
        raise FlagError(
            f'--tls-min-version: unknown version "{ns.tls_min_version}" '
            f"(known: {', '.join(TLS_VERSIONS)})"
        )
    if ns.logging_format not in ("text", "json"):
        raise FlagError(f'--logging-format: unknown format "{ns.logging_format}" (text or json)')
    if ns.v < 0:
        raise FlagError(f"-v must not be negative, got {ns.v}")
    if ns.shutdown_grace_period < 0:
        raise FlagError("--shutdown-grace-period must not be negative")
    if ns.shutdown_delay_duration < 0:
        raise FlagError("--shutdown-delay-duration must not be negative")
    for ttl_flag in (
        "authentication_token_webhook_cache_ttl",
        "authorization_webhook_cache_authorized_ttl",
        "authorization_webhook_cache_unauthorized_ttl",
    ):
        if getattr(ns, ttl_flag) < 0:
            raise FlagError(f"--{ttl_flag.replace('_', '-')} must not be negative")
    _check_selector(ns.node_selector)

    return Options(
        kubeconfig=ns.kubeconfig,
        metric_resolution=resolution,
        node_selector=ns.node_selector.strip(),
        kubelet=KubeletOptions(
            preferred_address_types=types,
            port=ns.kubelet_port,
            use_node_status_port=ns.kubelet_use_node_status_port,
            insecure_tls=ns.kubelet_insecure_tls,
            certificate_authority=ns.kubelet_certificate_authority,
            client_certificate=ns.kubelet_client_certificate,
            client_key=ns.kubelet_client_key,
            request_timeout=timeout,
            tls_server_name_from_node=ns.kubelet_tls_server_name_from_node,
        ),
        serving=ServingOptions(
            secure_port=ns.secure_port,
            bind_address=ns.bind_address,
            cert_dir=ns.cert_dir,
            tls_cert_file=ns.tls_cert_file,
            tls_private_key_file=ns.tls_private_key_file,
            tls_min_version=ns.tls_min_version,
            tls_cipher_suites=ns.tls_cipher_suites,
            shutdown_grace=ns.shutdown_grace_period,
            shutdown_delay=ns.shutdown_delay_duration,
        ),
        auth=AuthOptions(
            client_ca_file=ns.client_ca_file,
            requestheader_client_ca_file=ns.requestheader_client_ca_file,
            requestheader_allowed_names=ns.requestheader_allowed_names,
            requestheader_username_headers=ns.requestheader_username_headers,
            requestheader_group_headers=ns.requestheader_group_headers,
            requestheader_extra_headers_prefix=ns.requestheader_extra_headers_prefix,
            authentication_kubeconfig=ns.authentication_kubeconfig,
            authorization_kubeconfig=ns.authorization_kubeconfig,
            authentication_skip_lookup=ns.authentication_skip_lookup,
            authentication_tolerate_lookup_failure=ns.authentication_tolerate_lookup_failure,
            token_webhook_cache_ttl=ns.authentication_token_webhook_cache_ttl,
            authorization_cache_authorized_ttl=ns.authorization_webhook_cache_authorized_ttl,
            authorization_cache_unauthorized_ttl=ns.authorization_webhook_cache_unauthorized_ttl,
            always_allow_paths=ns.authorization_always_allow_paths,
        ),
        verbosity=ns.v,
        logging_format=ns.logging_format,
    )


def _check_selector(text: str) -> None:
    from metrics_server.api.selectors import SelectorError, parse_label_selector

    try:
        parse_label_selector(text)
    except SelectorError as exc:
        raise FlagError(f'--node-selector: invalid selector "{text}": {exc}') from None


def _fmt(ns: int) -> str:
    from metrics_server.quantity import format_go_duration

    return format_go_duration(ns)


def version_text() -> str:
    """`--version` output: ours, then the runtimes an operator needs in a bug report."""
    from importlib.metadata import version as dist_version

    import trio

    py = sys.version.split()[0]
    return (
        f"metrics-server {__version__} (python {py}, trio {trio.__version__}, "
        f"hypercorn {dist_version('hypercorn')})"
    )


def parse_or_exit(argv: Sequence[str]) -> Options:
    """Parse argv for `main`: prints --version / errors as one line and exits."""
    if "--version" in argv:
        print(version_text())
        raise SystemExit(0)
    try:
        return parse_options(argv)
    except FlagError as exc:
        print(f"metrics-server: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
