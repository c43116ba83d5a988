"""Health endpoints in Kubernetes' format: /healthz, /livez, /readyz and per-check paths.

A check is a name and a function returning None when healthy or a reason otherwise.
`?verbose` lists every check; `?exclude=NAME` (repeatable) skips checks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

Check = Callable[[], str | None]


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
        lines: list[str] = []
        failed: list[str] = []
        for c in self.checks:
            if c.name in exclude:
                lines.append(f"[+]{c.name} excluded: ok")
                continue
            reason = _run(c.check)
            if reason is None:
                lines.append(f"[+]{c.name} ok")
            else:
                # Like k8s.io/apiserver: reasons only for ?verbose (probes don't need them).
                lines.append(f"[-]{c.name} failed: {reason if verbose else 'reason withheld'}")
                failed.append(c.name)
        if failed:
            body = "\n".join(lines) + f"\n{self.name} check failed\n"
            return 500, body
        if verbose:
            return 200, "\n".join(lines) + f"\n{self.name} check passed\n"
        return 200, "ok"


def _run(check: Check) -> str | None:
    try:
        return check()
    except Exception as exc:  # a broken check is a failed check, not a 500 traceback
        return f"check raised {type(exc).__name__}: {exc}"
