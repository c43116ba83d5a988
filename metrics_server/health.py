"""Health endpoints in Kubernetes' format: /healthz, /livez, /readyz and per-check paths.

The bodies are k8s.io/apiserver's healthz handler's, byte for byte: `ok`; with `?verbose`
one `[+]name ok` line per check and `<endpoint> check passed`; on failure (always listed)
`[-]name failed: reason withheld` and `<endpoint> check failed`; `?exclude=NAME`
(repeatable) turns a check into `[+]name excluded: ok` and names unknown exclusions in a
`warn:` line. One deliberate difference: with `?verbose`, a failing check shows its reason
instead of "reason withheld", so a person reading `/readyz?verbose` learns what to fix. The
reasons carry node names and error texts, never credentials. `/<endpoint>/<check>` answers
`ok` or `internal server error: <reason>`, as upstream.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from metrics_server.logs import V, go_quote, log_kv

Check = Callable[[], str | None]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HealthCheck:
    name: str
    check: Check


class HealthEndpoint:
    """One of livez/readyz/healthz: an ordered list of checks."""

    def __init__(self, name: str, checks: Sequence[HealthCheck]) -> None:
        self.name = name
        self.checks = tuple(checks)

    def names(self) -> list[str]:
        return [c.name for c in self.checks]

    def evaluate(
        self, *, verbose: bool, exclude: Sequence[str] = (), only: str | None = None
    ) -> tuple[int, str]:
        """(HTTP status, text body) like k8s.io/apiserver's healthz handler."""
        if only is not None:
            for c in self.checks:
                if c.name == only:
                    reason = _run(c.check)
                    if reason is None:
                        return 200, "ok"
                    return 500, f"internal server error: {reason}\n"
            return 404, f"no such check: {only}\n"
        unmatched = set(exclude)
        lines: list[str] = []
        failed: list[tuple[str, str]] = []
        for c in self.checks:
            if c.name in unmatched:
                unmatched.discard(c.name)
                lines.append(f"[+]{c.name} excluded: ok\n")
                continue
            reason = _run(c.check)
            if reason is None:
                lines.append(f"[+]{c.name} ok\n")
            else:
                shown = " ".join(reason.splitlines()) if verbose else "reason withheld"
                lines.append(f"[-]{c.name} failed: {shown}\n")
                failed.append((c.name, reason))
        if unmatched:
            names = ",".join(go_quote(n) for n in sorted(unmatched))
            lines.append(f"warn: some health checks cannot be excluded: no matches for {names}\n")
            log_kv(log, logging.WARNING, "Cannot exclude some health checks", checks=names)
        body = "".join(lines)
        if failed:
            # Upstream logs the reasons it withholds from the response at V(2).
            log_kv(
                log,
                V(2),
                f"{self.name} check failed",
                checks=",".join(name for name, _ in failed),
                reasons="\n".join(f"[-]{name} failed: {reason}" for name, reason in failed),
            )
            return 500, f"{body}{self.name} check failed\n"
        if verbose:
            return 200, f"{body}{self.name} check passed\n"
        return 200, "ok"


def _run(check: Check) -> str | None:
    try:
        return check()
    except Exception as exc:  # a broken check is a failed check, not a 500 traceback
        return f"check raised {type(exc).__name__}: {exc}"
