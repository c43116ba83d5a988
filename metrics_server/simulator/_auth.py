"""Who is who in the simulated cluster and what they may do: the token table's users and a few
RBAC-like rules, shared by the fake apiserver's own checks and its SubjectAccessReview answers.

- members of `system:masters` (kubectl's admin) may do everything;
- the metrics-server service account may do what upstream's ClusterRoles grant it;
- "viewer" may get and list metrics.k8s.io, nothing else;
- everybody authenticated may read discovery and health paths; nothing more ("nobody").
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ADMIN",
    "METRICS_SERVER",
    "NOBODY",
    "VIEWER",
    "User",
    "authorize",
]


@dataclass(frozen=True, slots=True)
class User:
    name: str
    uid: str
    groups: tuple[str, ...]


ADMIN = User("kubernetes-admin", "uid-admin", ("system:masters", "system:authenticated"))
METRICS_SERVER = User(
    "system:serviceaccount:kube-system:metrics-server",
    "uid-metrics-server",
    ("system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"),
)
VIEWER = User("viewer", "uid-viewer", ("system:authenticated",))
NOBODY = User("nobody", "uid-nobody", ("system:authenticated",))

_READ = frozenset({"get", "list", "watch"})
# (group, resource, subresource, namespace or "" for any) → verbs
_METRICS_SERVER_RULES: dict[tuple[str, str, str, str], frozenset[str]] = {
    ("", "nodes", "", ""): _READ,
    ("", "pods", "", ""): _READ,
    ("", "namespaces", "", ""): _READ,
    ("", "nodes", "metrics", ""): frozenset({"get"}),
    ("", "configmaps", "", "kube-system"): _READ,
    ("authentication.k8s.io", "tokenreviews", "", ""): frozenset({"create"}),
    ("authorization.k8s.io", "subjectaccessreviews", "", ""): frozenset({"create"}),
    ("metrics.k8s.io", "nodes", "", ""): _READ,
    ("metrics.k8s.io", "pods", "", ""): _READ,
}
_PUBLIC_PATHS = ("/api", "/apis", "/version", "/healthz", "/livez", "/readyz", "/openapi")


def authorize(
    user: User,
    *,
    verb: str,
    group: str = "",
    resource: str = "",
    subresource: str = "",
    namespace: str = "",
    name: str = "",
    path: str | None = None,
) -> tuple[bool, str]:
    """(allowed, reason). `path` set means a non-resource request."""
    del name  # no rule here is per object
    if "system:masters" in user.groups:
        return True, "allowed by group system:masters"
    if path is not None:
        if "system:authenticated" in user.groups and (
            path in _PUBLIC_PATHS or path.startswith(tuple(p + "/" for p in _PUBLIC_PATHS))
        ):
            return True, "allowed by ClusterRole system:discovery"
        return False, "no RBAC policy matched"
    if user.name == METRICS_SERVER.name:
        for ns in (namespace, ""):
            verbs = _METRICS_SERVER_RULES.get((group, resource, subresource, ns))
            if verbs is not None and verb in verbs:
                return True, "allowed by ClusterRole system:metrics-server"
    if user.name == VIEWER.name and group == "metrics.k8s.io" and verb in ("get", "list"):
        return True, "allowed by ClusterRole system:aggregated-metrics-reader"
    return False, "no RBAC policy matched"
