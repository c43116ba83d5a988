"""The Helm chart: lint and render every configuration with the real helm, then check."""

from __future__ import annotations

import base64
import datetime as dt
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from tests.deploy import expectations as ex
from tests.deploy.conftest import CHART, canonical, key, write_values
from tests.deploy.crd_shapes import SHAPES, shape_errors
from tests.deploy.k8s_schema import (
    OLDEST_SUPPORTED,
    has_schema,
    schema_versions,
    validation_errors,
)

Render = Callable[..., list[dict[str, Any]]]

HA = {
    "replicas": 2,
    "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
    "podDisruptionBudget": {"enabled": True, "minAvailable": 1},
    "affinity": {
        "podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {
                    "labelSelector": {
                        "matchLabels": {
                            "app.kubernetes.io/name": "metrics-server",
                            "app.kubernetes.io/instance": "metrics-server",
                        }
                    },
                    "topologyKey": "kubernetes.io/hostname",
                }
            ]
        }
    },
}

# Every configuration the tests render; each is schema-validated for every k8s version.
CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "ha": HA,
    "pdb-max-unavailable": {"podDisruptionBudget": {"enabled": True, "maxUnavailable": 1}},
    "tls-helm": {"tls": {"type": "helm"}},
    "tls-cert-manager": {
        "tls": {"type": "cert-manager", "certManager": {"duration": "2160h", "renewBefore": "360h"}}
    },
    "tls-cert-manager-existing-issuer": {
        "tls": {
            "type": "cert-manager",
            "certManager": {
                "existingIssuer": {"enabled": True, "kind": "ClusterIssuer", "name": "cluster-ca"}
            },
        }
    },
    "tls-existing-secret": {
        "tls": {"type": "existing-secret", "existingSecret": {"name": "my-tls"}}
    },
    "tls-existing-secret-ca": {
        "tls": {"type": "existing-secret", "existingSecret": {"name": "my-tls"}},
        "apiService": {"caBundle": "PLACEHOLDER"},
    },
    "api-service-verified": {
        "apiService": {"insecureSkipTLSVerify": False, "caBundle": "PLACEHOLDER"}
    },
    "priority-class": {"priorityClassName": "metrics-critical"},
    "host-network": {"hostNetwork": {"enabled": True}, "containerPort": 4443},
    "service-monitor": {
        "metrics": {"enabled": True},
        "serviceMonitor": {
            "enabled": True,
            "interval": "30s",
            "scrapeTimeout": "5s",
            "additionalLabels": {"release": "prom"},
        },
    },
    "custom": {
        "args": ["--kubelet-tls-server-name-from-node", "--v=2", "--kubelet-request-timeout=5s"],
        "image": {"repository": "registry.example/ms", "tag": "dev", "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "regcred"}],
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/x"}},
        "service": {
            "type": "ClusterIP",
            "annotations": {"a": "b"},
            "labels": {"kubernetes.io/cluster-service": "true"},
        },
        "apiService": {"annotations": {"x": "y"}},
        "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}],
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "metrics-server"}},
            }
        ],
        "podSecurityContext": {"fsGroup": 1000},
        "resources": {
            "requests": {"cpu": "100m", "memory": "200Mi"},
            "limits": {"memory": "400Mi"},
        },
        "podLabels": {"team": "infra"},
        "podAnnotations": {"note": "hi"},
        "commonLabels": {"owner": "platform"},
        "revisionHistoryLimit": 3,
    },
    "renamed-no-rbac": {
        "fullnameOverride": "ms",
        "rbac": {"create": False},
        "serviceAccount": {"create": False, "name": "existing"},
        "apiService": {"create": False},
    },
}


@pytest.fixture(scope="module")
def ca_pem(tmp_path_factory: pytest.TempPathFactory) -> str:
    import trustme

    return trustme.CA().cert_pem.bytes().decode()


@pytest.fixture(scope="module")
def rendered(helm_template: Render, ca_pem: str) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for name, values in CONFIGS.items():
        api = values.get("apiService", {})
        if api.get("caBundle") == "PLACEHOLDER":
            out[name] = helm_template({**values, "apiService": {**api, "caBundle": ca_pem}})
        else:
            out[name] = helm_template(values)
    return out


def test_helm_lint(helm: Path, tmp_path: Path) -> None:
    for name in ("default", "ha", "tls-helm", "tls-cert-manager", "service-monitor", "custom"):
        values = tmp_path / f"{name}.yaml"
        write_values(values, CONFIGS[name])
        proc = subprocess.run(
            [
                str(helm),
                "lint",
                "--strict",
                str(CHART),
                "--namespace",
                "kube-system",
                "--values",
                str(values),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, f"{name}:\n{proc.stdout}{proc.stderr}"
        assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("version", schema_versions())
def test_core_objects_validate_against_kubernetes_schemas(
    rendered: dict[str, list[dict[str, Any]]], version: str
) -> None:
    distinct = {canonical(o): o for objs in rendered.values() for o in objs}
    core = [o for o in distinct.values() if (o["apiVersion"], o["kind"]) not in SHAPES]
    for obj in core:
        assert has_schema(obj, version), f"{key(obj)}: no Kubernetes {version} schema"
    failures = {key(o): errs for o in core if (errs := validation_errors(o, version))}
    assert not failures, yaml.safe_dump(failures)


def test_crd_objects_have_the_crd_shape(rendered: dict[str, list[dict[str, Any]]]) -> None:
    distinct = {canonical(o): o for objs in rendered.values() for o in objs}
    crds = [o for o in distinct.values() if (o["apiVersion"], o["kind"]) in SHAPES]
    assert {o["kind"] for o in crds} == {"ServiceMonitor", "Issuer", "Certificate"}
    failures = {key(o): errs for o in crds if (errs := shape_errors(o))}
    assert not failures, yaml.safe_dump(failures)


def test_every_object_is_labelled_and_namespaced(rendered: dict[str, list[dict[str, Any]]]) -> None:
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "APIService"}
    for name, objs in rendered.items():
        for obj in objs:
            meta = obj["metadata"]
            assert meta["labels"]["app.kubernetes.io/instance"] == "metrics-server", key(obj)
            assert meta["labels"]["app.kubernetes.io/managed-by"] == "Helm", key(obj)
            if obj["kind"] in cluster_scoped:
                assert "namespace" not in meta, (name, key(obj))
            else:
                assert meta["namespace"] == "kube-system", (name, key(obj))


def test_default(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered["default"]
    assert sorted(key(o) for o in objs) == sorted(
        [
            "ServiceAccount kube-system/metrics-server",
            "ClusterRole system:metrics-server",
            "ClusterRole system:metrics-server-aggregated-reader",
            "RoleBinding kube-system/metrics-server-auth-reader",
            "ClusterRoleBinding metrics-server:system:auth-delegator",
            "ClusterRoleBinding system:metrics-server",
            "Service kube-system/metrics-server",
            "Deployment kube-system/metrics-server",
            "APIService v1beta1.metrics.k8s.io",
        ]
    )
    ex.check_rbac(
        objs,
        server_role="system:metrics-server",
        reader_role="system:metrics-server-aggregated-reader",
        sa_name="metrics-server",
        sa_namespace="kube-system",
    )
    deploy = ex.one(objs, "Deployment")
    ex.check_pod(deploy)
    c = ex.container(deploy)
    # The same arguments as the shipped manifests (--secure-port comes from containerPort).
    assert sorted(c["args"]) == sorted(ex.MANIFEST_ARGS)
    assert c["image"] == "ghcr.io/metrics-server-py/metrics-server:v0.1.0"
    assert c["imagePullPolicy"] == "IfNotPresent"
    assert deploy["spec"]["replicas"] == 1
    pod = deploy["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "metrics-server"
    assert "hostNetwork" not in pod
    ex.check_service(ex.one(objs, "Service"), deploy)
    api = ex.one(objs, "APIService")
    ex.check_apiservice(api, service="metrics-server", namespace="kube-system")
    assert api["spec"]["insecureSkipTLSVerify"] is True
    assert "caBundle" not in api["spec"]


def test_release_name_and_namespace_flow_through(helm_template: Render) -> None:
    objs = helm_template({}, release="ms", namespace="monitoring")
    ex.check_rbac(
        objs,
        server_role="system:ms-metrics-server",
        reader_role="system:ms-metrics-server-aggregated-reader",
        sa_name="ms-metrics-server",
        sa_namespace="monitoring",
    )
    ex.check_apiservice(
        ex.one(objs, "APIService"), service="ms-metrics-server", namespace="monitoring"
    )
    assert ex.one(objs, "Deployment")["metadata"]["namespace"] == "monitoring"


def test_high_availability(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered["ha"]
    deploy = ex.one(objs, "Deployment")
    ex.check_pod(deploy)
    assert deploy["spec"]["replicas"] == 2
    assert deploy["spec"]["strategy"] == HA["updateStrategy"]
    pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
    (term,) = deploy["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert ex.matches(term["labelSelector"]["matchLabels"], pod_labels)
    pdb = ex.one(objs, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["minAvailable"] == 1
    assert "maxUnavailable" not in pdb["spec"]
    assert ex.matches(pdb["spec"]["selector"]["matchLabels"], pod_labels)

    pdb = ex.one(rendered["pdb-max-unavailable"], "PodDisruptionBudget")
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": pdb["spec"]["selector"]}
    assert not ex.by_kind(rendered["default"], "PodDisruptionBudget")


def _tls_mount(deploy: dict[str, Any]) -> str:
    c = ex.container(deploy)
    assert "--tls-cert-file=/etc/metrics-server/tls/tls.crt" in c["args"]
    assert "--tls-private-key-file=/etc/metrics-server/tls/tls.key" in c["args"]
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == "/etc/metrics-server/tls"]
    assert mount["readOnly"] is True
    (vol,) = [
        v for v in deploy["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]
    ]
    return str(vol["secret"]["secretName"])


def _pem(b64: str) -> bytes:
    return base64.b64decode(b64, validate=True)


def test_tls_metrics_server_is_self_signed(rendered: dict[str, list[dict[str, Any]]]) -> None:
    c = ex.container(ex.one(rendered["default"], "Deployment"))
    assert not any(a.startswith(("--tls-cert-file", "--tls-private-key-file")) for a in c["args"])
    assert not ex.by_kind(rendered["default"], "Secret")


def test_tls_helm(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered["tls-helm"]
    secret = ex.one(objs, "Secret")
    assert secret["type"] == "kubernetes.io/tls"
    assert _tls_mount(ex.one(objs, "Deployment")) == secret["metadata"]["name"]
    api = ex.one(objs, "APIService")
    assert api["spec"]["insecureSkipTLSVerify"] is False
    assert api["spec"]["caBundle"] == secret["data"]["ca.crt"]

    ca = x509.load_pem_x509_certificate(_pem(secret["data"]["ca.crt"]))
    cert = x509.load_pem_x509_certificate(_pem(secret["data"]["tls.crt"]))
    cert.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    # The name the kube-apiserver's aggregator dials: <service>.<namespace>.svc
    assert "metrics-server.kube-system.svc" in sans.get_values_for_type(x509.DNSName)
    assert cert.not_valid_after_utc - dt.datetime.now(dt.UTC) > dt.timedelta(days=360)
    # The key in the Secret is the certificate's.
    private = load_pem_private_key(_pem(secret["data"]["tls.key"]), password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    assert private.public_key().public_numbers() == cert.public_key().public_numbers()
    # Pods roll when the certificate changes.
    annotations = ex.one(objs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/tls" in annotations


def test_tls_cert_manager(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered["tls-cert-manager"]
    issuer = ex.one(objs, "Issuer")
    assert issuer["spec"] == {"selfSigned": {}}
    cert = ex.one(objs, "Certificate")
    assert _tls_mount(ex.one(objs, "Deployment")) == cert["spec"]["secretName"]
    assert cert["spec"]["issuerRef"] == {
        "group": "cert-manager.io",
        "kind": "Issuer",
        "name": issuer["metadata"]["name"],
    }
    assert "metrics-server.kube-system.svc" in cert["spec"]["dnsNames"]
    assert cert["spec"]["duration"] == "2160h"
    assert cert["spec"]["renewBefore"] == "360h"
    api = ex.one(objs, "APIService")
    assert api["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
        f"kube-system/{cert['metadata']['name']}"
    )
    assert api["spec"]["insecureSkipTLSVerify"] is False
    assert "caBundle" not in api["spec"]  # injected by cert-manager's cainjector

    objs = rendered["tls-cert-manager-existing-issuer"]
    assert not ex.by_kind(objs, "Issuer")
    assert ex.one(objs, "Certificate")["spec"]["issuerRef"] == {
        "group": "cert-manager.io",
        "kind": "ClusterIssuer",
        "name": "cluster-ca",
    }


def test_tls_existing_secret(rendered: dict[str, list[dict[str, Any]]], ca_pem: str) -> None:
    objs = rendered["tls-existing-secret"]
    assert _tls_mount(ex.one(objs, "Deployment")) == "my-tls"
    assert not ex.by_kind(objs, "Secret")
    api = ex.one(objs, "APIService")
    # No CA known at render time (helm template cannot look the Secret up): like upstream.
    assert api["spec"]["insecureSkipTLSVerify"] is True
    objs = rendered["tls-existing-secret-ca"]
    api = ex.one(objs, "APIService")
    assert api["spec"]["insecureSkipTLSVerify"] is False
    assert _pem(api["spec"]["caBundle"]).decode() == ca_pem


def test_api_service_verification_with_the_default_tls_type(
    rendered: dict[str, list[dict[str, Any]]], ca_pem: str
) -> None:
    # tls.type=metrics-server with insecureSkipTLSVerify=false: the caBundle given is used
    # (for a certificate of your own); without one the chart refuses (see
    # test_invalid_values_fail_clearly), as the self-signed certificate cannot be verified.
    api = ex.one(rendered["api-service-verified"], "APIService")
    assert api["spec"]["insecureSkipTLSVerify"] is False
    assert _pem(api["spec"]["caBundle"]).decode() == ca_pem
    ex.check_apiservice(api, service="metrics-server", namespace="kube-system")
    assert not ex.by_kind(rendered["api-service-verified"], "Secret")


def test_priority_class_name(
    rendered: dict[str, list[dict[str, Any]]], helm_template: Render
) -> None:
    def pod(objs: list[dict[str, Any]]) -> dict[str, Any]:
        return ex.one(objs, "Deployment")["spec"]["template"]["spec"]

    assert pod(rendered["default"])["priorityClassName"] == "system-cluster-critical"
    assert pod(rendered["priority-class"])["priorityClassName"] == "metrics-critical"
    # Empty: no priority class at all (e.g. outside kube-system, where a ResourceQuota on
    # system-cluster-critical may refuse the pod).
    assert "priorityClassName" not in pod(helm_template({"priorityClassName": ""}))


def test_kube_version_matches_what_is_validated(helm: Path) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == f">={OLDEST_SUPPORTED}.0-0"
    assert schema_versions()[0] == str(OLDEST_SUPPORTED)
    older = f"{OLDEST_SUPPORTED.major}.{OLDEST_SUPPORTED.minor - 1}.0"
    for version, ok in ((f"{OLDEST_SUPPORTED}.0", True), (older, False)):
        proc = subprocess.run(
            [str(helm), "template", "metrics-server", str(CHART), "--kube-version", version],
            capture_output=True,
            text=True,
            check=False,
        )
        assert (proc.returncode == 0) is ok, (version, proc.stderr)
        if not ok:
            assert "incompatible with Kubernetes" in proc.stderr, proc.stderr


def test_upstream_tls_type_spellings_are_accepted(helm_template: Render) -> None:
    a = helm_template({"tls": {"type": "existingSecret", "existingSecret": {"name": "my-tls"}}})
    b = helm_template({"tls": {"type": "existing-secret", "existingSecret": {"name": "my-tls"}}})
    assert a == b
    objs = helm_template({"tls": {"type": "certManager"}})
    assert ex.one(objs, "Certificate")


def test_host_network(rendered: dict[str, list[dict[str, Any]]]) -> None:
    deploy = ex.one(rendered["host-network"], "Deployment")
    ex.check_pod(deploy, port=4443)
    pod = deploy["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    ex.check_service(ex.one(rendered["host-network"], "Service"), deploy)


def test_service_monitor(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered["service-monitor"]
    c = ex.container(ex.one(objs, "Deployment"))
    (allow,) = [a for a in c["args"] if a.startswith("--authorization-always-allow-paths=")]
    # /metrics is added without dropping the health paths the probes need.
    assert set(allow.split("=", 1)[1].split(",")) == {"/healthz", "/readyz", "/livez", "/metrics"}
    mon = ex.one(objs, "ServiceMonitor")
    svc = ex.one(objs, "Service")
    assert ex.matches(mon["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"])
    (endpoint,) = mon["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert endpoint["scheme"] == "https"
    assert endpoint["interval"] == "30s"
    assert endpoint["scrapeTimeout"] == "5s"
    assert mon["metadata"]["labels"]["release"] == "prom"
    assert mon["spec"]["namespaceSelector"]["matchNames"] == ["kube-system"]
    # Needs both switches.
    assert not ex.by_kind(rendered["default"], "ServiceMonitor")


def test_custom_values(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered["custom"]
    deploy = ex.one(objs, "Deployment")
    ex.check_pod(deploy)
    c = ex.container(deploy)
    assert c["args"][-3:] == CONFIGS["custom"]["args"]
    assert set(ex.MANIFEST_ARGS) <= set(c["args"])
    assert c["image"] == "registry.example/ms:dev"
    assert c["imagePullPolicy"] == "Always"
    assert c["resources"]["limits"] == {"memory": "400Mi"}
    pod = deploy["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["tolerations"] == CONFIGS["custom"]["tolerations"]
    assert pod["topologySpreadConstraints"] == CONFIGS["custom"]["topologySpreadConstraints"]
    assert pod["securityContext"] == {"fsGroup": 1000}
    assert deploy["spec"]["template"]["metadata"]["labels"]["team"] == "infra"
    assert deploy["spec"]["template"]["metadata"]["annotations"] == {"note": "hi"}
    assert deploy["spec"]["revisionHistoryLimit"] == 3
    sa = ex.one(objs, "ServiceAccount")
    assert sa["metadata"]["annotations"] == CONFIGS["custom"]["serviceAccount"]["annotations"]
    svc = ex.one(objs, "Service")
    assert svc["metadata"]["annotations"] == {"a": "b"}
    assert svc["metadata"]["labels"]["kubernetes.io/cluster-service"] == "true"
    assert ex.one(objs, "APIService")["metadata"]["annotations"] == {"x": "y"}
    assert all(o["metadata"]["labels"]["owner"] == "platform" for o in objs)


def test_rendered_args_are_accepted_by_the_server(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    from metrics_server.cli import parse_options

    for name, objs in rendered.items():
        args = ex.container(ex.one(objs, "Deployment"))["args"]
        parse_options(args)  # raises FlagError naming the flag
        assert name


def test_switches_off(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered["renamed-no-rbac"]
    assert sorted(o["kind"] for o in objs) == ["Deployment", "Service"]
    deploy = ex.one(objs, "Deployment", "ms")
    assert deploy["spec"]["template"]["spec"]["serviceAccountName"] == "existing"
    assert ex.one(objs, "Service")["metadata"]["name"] == "ms"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"tls": {"type": "bogus"}}, "tls.type must be one of"),
        ({"tls": {"type": "existing-secret"}}, "tls.existingSecret.name is required"),
        ({"hostNetwork": {"enabled": True}}, "set containerPort to a free port"),
        (
            {"apiService": {"insecureSkipTLSVerify": False}},
            "apiService.insecureSkipTLSVerify=false with tls.type=metrics-server needs "
            "apiService.caBundle",
        ),
        (
            {"podDisruptionBudget": {"enabled": True, "minAvailable": 1, "maxUnavailable": 1}},
            "only one of minAvailable and maxUnavailable",
        ),
    ],
)
def test_invalid_values_fail_clearly(
    helm: Path, tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    vals = tmp_path / "values.yaml"
    write_values(vals, values)
    proc = subprocess.run(
        [str(helm), "template", "metrics-server", str(CHART), "--values", str(vals)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr
