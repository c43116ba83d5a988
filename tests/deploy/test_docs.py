"""docs/install.md refers to things that exist, and quotes what the server really says.

The troubleshooting section quotes log lines and `/readyz?verbose` lines for each known
failure mode (SPEC §9). tests/deploy/failure_texts.py renders the same situations with the
server's own code; every quoted line must be one the code produces today, and every failure
mode must be quoted in its section, so the docs cannot drift from the logs and health checks.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from metrics_server.daemon import FAILURE_CLASSES, TIMELY_FACTOR
from tests.deploy import failure_texts as ft
from tests.deploy.conftest import MANIFESTS, REPO, load_all, run

DOC = (REPO / "docs" / "install.md").read_text()
BENCHMARKS = (REPO / "docs" / "BENCHMARKS.md").read_text()


def code_lines(text: str) -> list[str]:
    """The lines inside fenced code blocks."""
    lines, inside = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            inside = not inside
        elif inside:
            lines.append(line)
    return lines


def code_blocks(text: str) -> list[str]:
    return re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def section(heading: str) -> str:
    """The text of the `### heading...` section, up to the next heading."""
    start = DOC.index(f"\n### {heading}")
    end = re.compile(r"^##", re.MULTILINE).search(DOC, start + 4)
    return DOC[start : end.start() if end else len(DOC)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.fixture(scope="module")
def rendered() -> dict[str, ft.Rendered]:
    return ft.scenarios()


@pytest.fixture(scope="module")
def failed_to_start() -> str:
    return ft.failed_to_start_line(ft.auth_reader_error())


def test_referenced_repository_paths_exist() -> None:
    paths = set(re.findall(r"(?<![\w/.])((?:manifests|charts)/[\w./-]*\w)", DOC))
    assert {
        "manifests/components.yaml",
        "manifests/high-availability.yaml",
        "charts/metrics-server",
        "manifests/overlays/test",
        "manifests/render.sh",
    } <= paths
    missing = sorted(p for p in paths if not (REPO / p).exists())
    assert not missing, missing
    for doc_path in re.findall(r"`((?:tests|docs)/[\w./-]+)`|\]\((\w+\.md)\)", DOC):
        path = doc_path[0] or f"docs/{doc_path[1]}"
        assert (REPO / path).exists(), path


def test_internal_links_resolve() -> None:
    anchors = {slug(h) for h in re.findall(r"^#+ (.*)$", DOC, flags=re.MULTILINE)}
    links = set(re.findall(r"\]\(#([\w-]+)\)", DOC))
    assert links, "no internal links found"
    assert links <= anchors, sorted(links - anchors)


def test_readme_points_at_install_build_and_troubleshooting() -> None:
    readme = (REPO / "README.md").read_text()
    anchors = {slug(h) for h in re.findall(r"^#+ (.*)$", DOC, flags=re.MULTILINE)}
    links = re.findall(r"\]\(docs/install\.md(?:#([\w-]+))?\)", readme)
    assert "build-the-image" in links and "" in links, links
    assert {a for a in links if a} <= anchors
    assert "docker build -t" in readme and "troubleshooting" in readme


def test_troubleshooting_covers_the_known_failure_modes() -> None:
    for needle in (
        "kubectl get apiservice v1beta1.metrics.k8s.io -o yaml",
        "/readyz?verbose",
        "logs deploy/metrics-server",
        "doesn't contain any IP SANs",  # upstream's wording, what users search for
        "x509: certificate signed by unknown authority",
        "FailedDiscoveryCheck",
        "MissingEndpoints",
        "metrics not available yet",
        "Probes failing",
        "OOMKilled",
        "missing from `kubectl top`",
        "--kubelet-tls-server-name-from-node",
    ):
        assert needle in DOC, needle


def test_quoted_log_lines_are_what_the_server_logs(
    rendered: dict[str, ft.Rendered], failed_to_start: str
) -> None:
    produced = {ft.normalize_log(line) for r in rendered.values() for line in r.logs}
    produced.add(ft.normalize_log(failed_to_start))
    quoted = [line for line in code_lines(DOC) if ft.normalize_log(line)]
    assert len(quoted) >= 15, quoted
    stale = [line for line in quoted if ft.normalize_log(line) not in produced]
    assert not stale, "quoted log lines the server no longer writes:\n" + "\n".join(stale)


def test_quoted_health_lines_are_what_the_server_answers(
    rendered: dict[str, ft.Rendered],
) -> None:
    produced = {line for r in rendered.values() for line in r.failed_checks()}
    quoted = [line for line in code_lines(DOC) if line.startswith(("[-]", "[+]"))]
    assert len(quoted) >= 10, quoted
    stale = [line for line in quoted if line not in produced]
    assert not stale, "quoted health lines the server no longer answers:\n" + "\n".join(stale)


def _node_1_logs(r: ft.Rendered) -> list[str]:
    """The scenario's log lines, of the per-node ones only node-1's."""
    return [
        line for line in r.logs if '"Failed to scrape node"' not in line or 'node="node-1"' in line
    ]


def _all(lines: list[str]) -> list[str]:
    return lines


# scenario → (section heading, which of its log lines must be quoted there, which of its
# failed health-check lines must be quoted there)
FAILURE_MODES: dict[str, tuple[str, Any, Any]] = {
    "no-ip-san": ("Kubelet certificate without an IP SAN", _node_1_logs, _all),
    "other-ca": ("Kubelet certificate signed by an unknown authority", _node_1_logs, None),
    "self-signed": ("Kubelet certificate signed by an unknown authority", _node_1_logs, _all),
    "http-401": ("Kubelet answers 401 or 403", _node_1_logs, _all),
    "http-403": ("Kubelet answers 401 or 403", _node_1_logs, _all),
    "timeout": ("Kubelet scrapes time out", _node_1_logs, _all),
    "refused": ("Kubelet scrapes time out", _node_1_logs, _all),
    "rbac": ("Nodes or pods cannot be listed", lambda r: r.logs, _all),
    "healthy": ("`error: metrics not available yet`", lambda r: r.logs, _all),
    "partial": ("`error: metrics not available yet`", None, _all),
    "stuck": (
        "Probes failing",
        lambda r: [line for line in r.logs if '"Failed probe"' in line],
        lambda lines: [line for line in lines if "metric-collection-timely" in line],
    ),
}


@pytest.mark.parametrize("scenario", sorted(FAILURE_MODES))
def test_each_failure_mode_is_quoted_in_its_section(
    rendered: dict[str, ft.Rendered], scenario: str
) -> None:
    heading, pick_logs, pick_checks = FAILURE_MODES[scenario]
    r = rendered[scenario]
    text = section(heading)
    quoted_logs = {ft.normalize_log(line) for line in code_lines(text)}
    quoted = set(code_lines(text))
    needed_logs = pick_logs(r) if pick_logs else []
    needed_checks = pick_checks(r.failed_checks()) if pick_checks else []
    assert needed_logs or needed_checks
    missing = [line for line in needed_logs if ft.normalize_log(line) not in quoted_logs]
    missing += [line for line in needed_checks if line not in quoted]
    assert not missing, f"not quoted under '### {heading}':\n" + "\n".join(missing)


def test_auth_reader_failure_is_quoted(failed_to_start: str) -> None:
    text = section("`FailedDiscoveryCheck`")
    quoted = {ft.normalize_log(line) for line in code_lines(text)}
    assert ft.normalize_log(failed_to_start) in quoted, failed_to_start
    main_source = (REPO / "metrics_server" / "__main__.py").read_text()
    assert '"Failed to start", err=' in main_source


def test_scenarios_hit_the_documented_failure_classes(rendered: dict[str, ft.Rendered]) -> None:
    # The scenarios must produce the reason each section is about, and the docs must quote
    # each class's label and fix as FAILURE_CLASSES words them.
    expected = {
        "no-ip-san": "tls_no_ip_san",
        "other-ca": "tls_unknown_ca",
        "self-signed": "tls_unknown_ca",
        "http-401": "http_401",
        "http-403": "http_403",
        "timeout": "timeout",
        "refused": "connect",
    }
    for scenario, reason in expected.items():
        logs = "\n".join(rendered[scenario].logs)
        assert f'reason="{reason}"' in logs, (scenario, logs)
        cls = FAILURE_CLASSES[reason]
        assert f"{cls.label}: {cls.fix}" in DOC, reason
        assert f'reason="{reason}"' in DOC, reason


def test_health_checks_table_names_every_check(rendered: dict[str, ft.Rendered]) -> None:
    names = {
        m.group(1)
        for r in rendered.values()
        for body in (r.readyz, r.livez)
        for m in re.finditer(r"^\[[+-]\]([\w-]+) ", body, flags=re.MULTILINE)
    }
    names -= {"ping", "log"}  # upstream's trivial checks
    assert {"metric-storage-ready", "metric-collection-timely", "shutdown"} <= names
    table = DOC[DOC.index("| check | in | fails while |") :]
    for name in names:
        assert f"| `{name}` |" in table, name
    assert f"{TIMELY_FACTOR:g} × `--metric-resolution`" in DOC


def test_sizing_quotes_the_benchmarks() -> None:
    text = DOC[DOC.index("## Sizing") : DOC.index("## Troubleshooting")]
    assert "0.12 MiB per node" in text and "0.16 mCPU per node" in text
    for figure in ("80.6", "0.122", "0.115", "166.5", "27.0", "103.9", "202.5", "658.0"):
        assert figure in text, figure
        assert figure in BENCHMARKS, f"{figure} is not (any more) in docs/BENCHMARKS.md"
    assert "| 1,000 |" in text and "| 5,000 |" in text


# -- "Build the image" ----------------------------------------------------------------


def _image_ref() -> tuple[str, str, str]:
    (ref,) = set(re.findall(r"docker build -t (\S+) \.", DOC))
    repo, _, tag = ref.rpartition(":")
    return ref, repo, tag


def test_build_the_image_gives_every_step() -> None:
    text = DOC[DOC.index("## Build the image") : DOC.index("## Install with kubectl")]
    ref, repo, tag = _image_ref()
    assert tag and tag != "latest"
    for step in (
        f"docker build -t {ref} .",
        f"kind load docker-image {ref}",
        f"minikube image load {ref}",
        f"docker push {ref}",
        f"--set image.repository={repo} --set image.tag={tag}",
        f"newName: {repo}",
        f"newTag: {tag}",
    ):
        assert step in text, step
    # The Dockerfile is where the doc says it is, and the placeholder is the manifests' image.
    assert (REPO / "Dockerfile").is_file()
    base = yaml.safe_load((MANIFESTS / "base" / "kustomization.yaml").read_text())
    (placeholder,) = [i["name"] for i in base["images"]]
    assert f"name: {placeholder}" in text
    assert f"`{placeholder}:{base['images'][0]['newTag']}`" in DOC


def test_documented_kustomize_overlay_uses_the_built_image(kubectl: Path, tmp_path: Path) -> None:
    ref, _, _ = _image_ref()
    (block,) = [b for b in code_blocks(DOC) if b.startswith("# my-overlay/kustomization.yaml, ")]
    overlay = tmp_path / "my-overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(block)
    (tmp_path / "metrics-server").symlink_to(REPO)  # "with the checkout in ../metrics-server"
    objs = load_all(run([kubectl, "kustomize", overlay]).stdout)
    (deploy,) = [o for o in objs if o["kind"] == "Deployment"]
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert container["image"] == ref


def test_documented_helm_values_use_the_built_image(helm_template: Any) -> None:
    ref, repo, tag = _image_ref()
    objs = helm_template({"image": {"repository": repo, "tag": tag}})
    (deploy,) = [o for o in objs if o["kind"] == "Deployment"]
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert container["image"] == ref


def test_platform_notes() -> None:
    for platform in ("**kind.**", "**minikube.**", "**EKS.**", "**GKE (and AKS).**"):
        assert platform in DOC, platform
    assert "serverTLSBootstrap" in DOC
