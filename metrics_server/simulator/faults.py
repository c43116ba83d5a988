"""Faults a fake kubelet can be told to exhibit (`Cluster.set_fault(node, fault)`).

Each fault is a small frozen dataclass; `None` means healthy. Faults that are about the
connection (refuse, certificates) restart the kubelet's listener so existing keep-alive
connections see them at once; the others apply to the next request on any connection.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Fault",
    "Garbage",
    "Hang",
    "HttpStatus",
    "Huge",
    "NoIPSAN",
    "Refuse",
    "Slow",
    "Trickle",
    "Truncated",
    "WrongCA",
]


@dataclass(frozen=True, slots=True)
class Hang:
    """Accept the connection and never answer.

    With `before_handshake` the TLS handshake never completes; otherwise the request is read
    and no response ever comes (a stuck kubelet)."""

    before_handshake: bool = False


@dataclass(frozen=True, slots=True)
class Slow:
    """Answer correctly after `seconds`."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Trickle:
    """Send the (correct) response `chunk` bytes at a time, `interval` seconds apart."""

    chunk: int = 64
    interval: float = 0.5


@dataclass(frozen=True, slots=True)
class HttpStatus:
    """Answer with this HTTP status (e.g. 500, 401, 403) and a short text body."""

    code: int = 500


@dataclass(frozen=True, slots=True)
class Garbage:
    """Answer 200 with a body that is not Prometheus text."""


@dataclass(frozen=True, slots=True)
class Truncated:
    """Announce the full Content-Length, send half of the body, close the connection."""


@dataclass(frozen=True, slots=True)
class Huge:
    """Answer 200 with a `size`-byte body streamed in 64 KiB chunks (100 MB by default)."""

    size: int = 100 * 1000 * 1000


@dataclass(frozen=True, slots=True)
class Refuse:
    """Close the listener (connections are refused) and drop open connections."""


@dataclass(frozen=True, slots=True)
class WrongCA:
    """Serve a certificate signed by a CA nobody trusts."""


@dataclass(frozen=True, slots=True)
class NoIPSAN:
    """Serve a certificate with only the node name as DNS SAN (no IP SAN)."""


Fault = Hang | Slow | Trickle | HttpStatus | Garbage | Truncated | Huge | Refuse | WrongCA | NoIPSAN
