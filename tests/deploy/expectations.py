"""What SPEC §8 requires of a deployment, shared by the manifest and chart tests."""

from __future__ import annotations

from typing import Any

# The args upstream ships in its manifests (SPEC §1, "shipped manifests" column).
MANIFEST_ARGS = [
    "--cert-dir=/tmp",
    "--secure-port=10250",
    "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname",
    "--kubelet-use-node-status-port",
    "--metric-resolution=15s",
]

SERVER_RULES = [
    {"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["pods", "nodes"], "verbs": ["get", "list", "watch"]},
]
READER_RULES = [
    {
        "apiGroups": ["metrics.k8s.io"],
        "resources": ["pods", "nodes"],
        "verbs": ["get", "list", "watch"],
    },
]
AGGREGATE_LABELS = {
    f"rbac.authorization.k8s.io/aggregate-to-{role}": "true" for role in ("view", "edit", "admin")
}

SECURITY_CONTEXT = {
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "allowPrivilegeEscalation": False,
    "seccompProfile": {"type": "RuntimeDefault"},
    "capabilities": {"drop": ["ALL"]},
}


def _canon_rules(rules: list[dict[str, Any]]) -> list[tuple[tuple[str, ...], ...]]:
    return sorted(
        tuple(
            tuple(sorted(r.get(k, [])))
            for k in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs")
        )
        for r in rules
    )


def same_rules(actual: list[dict[str, Any]], expected: list[dict[str, Any]]) -> bool:
    """RBAC rules grant exactly the same (order-insensitive within and across rules)."""
    return _canon_rules(actual) == _canon_rules(expected)


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in by_kind(objs, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_rbac(
    objs: list[dict[str, Any]],
    *,
    server_role: str,
    reader_role: str,
    sa_name: str,
    sa_namespace: str,
) -> None:
    """ClusterRoles, bindings and the auth-reader RoleBinding exactly as SPEC §8."""
    server = one(objs, "ClusterRole", server_role)
    assert same_rules(server["rules"], SERVER_RULES), server["rules"]
    reader = one(objs, "ClusterRole", reader_role)
    assert same_rules(reader["rules"], READER_RULES), reader["rules"]
    assert AGGREGATE_LABELS.items() <= reader["metadata"]["labels"].items()
    assert len(by_kind(objs, "ClusterRole")) == 2

    subject = [{"kind": "ServiceAccount", "name": sa_name, "namespace": sa_namespace}]
    refs = {
        (b["kind"], b["roleRef"]["kind"], b["roleRef"]["name"]): b
        for b in by_kind(objs, "ClusterRoleBinding") + by_kind(objs, "RoleBinding")
    }
    assert set(refs) == {
        ("ClusterRoleBinding", "ClusterRole", "system:auth-delegator"),
        ("ClusterRoleBinding", "ClusterRole", server_role),
        ("RoleBinding", "Role", "extension-apiserver-authentication-reader"),
    }, sorted(refs)
    for binding in refs.values():
        assert binding["roleRef"]["apiGroup"] == "rbac.authorization.k8s.io"
        assert binding["subjects"] == subject
    auth_reader = refs["RoleBinding", "Role", "extension-apiserver-authentication-reader"]
    # The Role and the extension-apiserver-authentication ConfigMap live in kube-system.
    assert auth_reader["metadata"]["namespace"] == "kube-system"


def container(deploy: dict[str, Any]) -> dict[str, Any]:
    (c,) = deploy["spec"]["template"]["spec"]["containers"]
    assert c["name"] == "metrics-server"
    return c


def check_pod(deploy: dict[str, Any], *, port: int = 10250) -> None:
    """Probes, ports, security context, /tmp, priority, requests (SPEC §8)."""
    spec = deploy["spec"]["template"]["spec"]
    c = container(deploy)
    assert c["ports"] == [{"name": "https", "containerPort": port, "protocol": "TCP"}]
    assert f"--secure-port={port}" in c["args"]
    assert "--cert-dir=/tmp" in c["args"]
    for probe, path, delay in (("readinessProbe", "/readyz", 20), ("livenessProbe", "/livez", 0)):
        p = c[probe]
        assert p["httpGet"] == {"path": path, "port": "https", "scheme": "HTTPS"}, probe
        assert p["periodSeconds"] == 10, probe
        assert p["failureThreshold"] == 3, probe
        assert p.get("initialDelaySeconds", 0) == delay, probe
    assert c["securityContext"] == SECURITY_CONTEXT
    assert c["resources"]["requests"] == {"cpu": "100m", "memory": "200Mi"}
    (tmp_mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
    (tmp_vol,) = [v for v in spec["volumes"] if v["name"] == tmp_mount["name"]]
    assert tmp_vol.get("emptyDir") == {}
    assert spec["priorityClassName"] == "system-cluster-critical"
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert matches(deploy["spec"]["selector"]["matchLabels"], pod_labels)


def check_service(svc: dict[str, Any], deploy: dict[str, Any]) -> None:
    assert svc["spec"]["ports"] == [
        {"name": "https", "port": 443, "protocol": "TCP", "targetPort": "https"}
    ]
    assert matches(svc["spec"]["selector"], deploy["spec"]["template"]["metadata"]["labels"])


def check_apiservice(api: dict[str, Any], *, service: str, namespace: str) -> None:
    assert api["apiVersion"] == "apiregistration.k8s.io/v1"
    assert api["metadata"]["name"] == "v1beta1.metrics.k8s.io"
    spec = api["spec"]
    assert spec["group"] == "metrics.k8s.io"
    assert spec["version"] == "v1beta1"
    assert spec["groupPriorityMinimum"] == 100
    assert spec["versionPriority"] == 100
    assert spec["service"]["name"] == service
    assert spec["service"]["namespace"] == namespace
    assert spec["service"].get("port", 443) == 443
