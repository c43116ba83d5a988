"""The fake kube-apiserver: discovery, list/watch of nodes, pods, namespaces and configmaps,
TokenReview/SubjectAccessReview, the metrics.k8s.io aggregation proxy and test fault hooks.

As kube-apiserver's aggregator does, it also merges what the metrics server publishes into its
own documents: aggregated discovery on /api and /apis (when the client asks for
APIGroupDiscoveryList), the OpenAPI v2 document (JSON, or gnostic protobuf as kubectl asks), and
the /openapi/v3 index, whose metrics.k8s.io entry it serves from the metrics server. It fetches
those as "system:kube-aggregator" over the front-proxy client certificate, on each request (no
cache: tests change the metrics server).

Hand-written on h11 (`_http.py`) rather than Quart-Trio on Hypercorn because the simulator needs
what a framework hides: peer certificates, streaming watches that a test can cut mid-stream,
a listener that goes down and comes back on the same port, and low per-request overhead when
thousands of clients list and watch.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import trio

from metrics_server.simulator._auth import User, authorize
from metrics_server.simulator._http import Request, Responder, serve_connection
from metrics_server.simulator._net import RestartableListener
from metrics_server.simulator._selectors import (
    FieldSelector,
    LabelSelector,
    SelectorError,
    parse_field_selector,
    parse_label_selector,
)
from metrics_server.simulator._world import Event, Expired, Obj, World

__all__ = ["FakeAPIServer", "ListFaults"]

JSON = "application/json"
PROXY_TIMEOUT = 30.0
DEFAULT_WATCH_TIMEOUT = 1800.0
_PUBLIC = frozenset({"/version", "/healthz", "/livez", "/readyz", "/sim/truth"})
_HOP_HEADERS = frozenset({
    "host", "authorization", "connection", "keep-alive", "transfer-encoding", "te", "upgrade",
    "proxy-authorization", "proxy-connection", "content-length", "accept-encoding",
})
_STRIPPED_PREFIXES = ("x-remote-", "impersonate-")
_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
DOCUMENT_TIMEOUT = 5.0
AGGREGATED_KIND = "APIGroupDiscoveryList"
METRICS_GV_PATH = "apis/metrics.k8s.io/v1beta1"
OPENAPI_V2_PROTOBUF = (
    "application/com.github.proto-openapi.spec.v2@v1.0+protobuf",
    "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
)
# Response headers of the metrics server worth passing on to clients.
_PASSED_HEADERS = ("content-type", "etag", "vary", "cache-control", "expires", "location",
                   "last-modified")
# Groups this apiserver serves itself: name → (version, [(resource, kind, verbs)]).
_OWN_GROUPS: dict[str, tuple[str, list[tuple[str, str, list[str]]]]] = {
    "authentication.k8s.io": ("v1", [("tokenreviews", "TokenReview", ["create"])]),
    "authorization.k8s.io": ("v1", [("subjectaccessreviews", "SubjectAccessReview",
                                     ["create"])]),
}


@dataclass(frozen=True, slots=True)
class _Resource:
    name: str
    kind: str
    namespaced: bool
    fields: frozenset[str]
    short: tuple[str, ...]


RESOURCES = {
    "nodes": _Resource("nodes", "Node", False, frozenset({"metadata.name", "spec.unschedulable"}),
                       ("no",)),
    "pods": _Resource(
        "pods", "Pod", True,
        frozenset({"metadata.name", "metadata.namespace", "spec.nodeName", "status.phase"}),
        ("po",),
    ),
    "namespaces": _Resource("namespaces", "Namespace", False,
                            frozenset({"metadata.name", "status.phase"}), ("ns",)),
    "configmaps": _Resource("configmaps", "ConfigMap", True,
                            frozenset({"metadata.name", "metadata.namespace"}), ("cm",)),
}


def _field(obj: Obj, path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        if not isinstance(value, dict):
            return ""
        value = value.get(part)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def status_body(code: int, reason: str, message: str, details: Obj | None = None) -> bytes:
    doc: Obj = {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    }
    if details:
        doc["details"] = details
    return orjson.dumps(doc)


async def _send_status(
    respond: Responder, code: int, reason: str, message: str, details: Obj | None = None
) -> None:
    await respond.start(code, [("content-type", JSON)], status_body(code, reason, message, details))


async def _send_json(respond: Responder, doc: object, code: int = 200) -> None:
    await respond.start(code, [("content-type", JSON)], orjson.dumps(doc))


def negotiate(accept: str) -> str | None:
    """"full", "meta" (PartialObjectMetadata[List]) or None when nothing acceptable is asked."""
    if not accept.strip():
        return "full"
    for media in accept.split(","):
        kind, *params = (p.strip() for p in media.split(";"))
        if kind not in (JSON, "*/*", "application/*"):
            continue
        opts = dict(p.split("=", 1) for p in params if "=" in p)
        as_ = opts.get("as")
        if as_ is None:
            return "full"
        if as_ in ("PartialObjectMetadata", "PartialObjectMetadataList") and opts.get(
            "g"
        ) == "meta.k8s.io":
            return "meta"
        # Table and anything else we cannot render: try the next media range.
    return None


def aggregated_version(accept: str) -> str | None:
    """"v2" or "v2beta1" when the Accept header asks for JSON aggregated discovery first."""
    for media in accept.split(","):
        kind, *params = (p.strip() for p in media.split(";"))
        opts = dict(p.split("=", 1) for p in params if "=" in p)
        if (kind == JSON and opts.get("as") == AGGREGATED_KIND
                and opts.get("g") == "apidiscovery.k8s.io" and opts.get("v") in ("v2", "v2beta1")):
            return opts["v"]
        if kind in (JSON, "*/*", "application/*") and "as" not in opts:
            return None
    return None


@dataclass(slots=True)
class ListFaults:
    """Injected list failures: `remaining` None with `active` means until cleared."""

    active: bool = False
    remaining: int | None = None
    status: int = 500
    delay: float = 0.0


@dataclass(slots=True)
class _Upstream:
    url: str
    client: httpx.AsyncClient


@dataclass(slots=True)
class FakeAPIServer:
    world: World
    ssl_context: ssl.SSLContext
    tokens: dict[str, User]
    bookmark_interval: float
    nursery: trio.Nursery
    port: int = 0
    list_faults: ListFaults = field(default_factory=ListFaults)
    upstream: _Upstream | None = None
    listener: RestartableListener | None = None
    closing_clients: list[httpx.AsyncClient] = field(default_factory=list)
    _key_cache: dict[str, tuple[int, list[tuple[str, str]]]] = field(default_factory=dict)
    """resource → (resourceVersion, its keys sorted) for paging."""

    # ---- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        if self.listener is None:
            self.listener = RestartableListener(self.nursery, self._connection, port=self.port)
        self.listener.start()
        self.port = self.listener.port

    def stop(self) -> None:
        if self.listener is not None:
            self.listener.stop()

    async def _connection(self, raw: trio.SocketStream) -> None:
        await serve_connection(raw, self.ssl_context, self.handle)

    def set_upstream(self, url: str | None, client: httpx.AsyncClient | None) -> None:
        if self.upstream is not None:
            self.closing_clients.append(self.upstream.client)
        self.upstream = _Upstream(url.rstrip("/"), client) if url and client else None

    # ---- authentication ---------------------------------------------------------------------

    def authenticate(self, request: Request) -> User | None:
        auth = request.header("authorization")
        if auth.startswith("Bearer "):
            return self.tokens.get(auth[7:].strip())
        cert = request.peer_cert
        if cert:
            cn = ""
            groups: list[str] = []
            for rdn in cert.get("subject", ()):
                for key, value in rdn:
                    if key == "commonName":
                        cn = value
                    elif key == "organizationName":
                        groups.append(value)
            if cn:
                return User(cn, "", (*groups, "system:authenticated"))
        return None

    # ---- dispatch ---------------------------------------------------------------------------

    async def handle(self, request: Request, respond: Responder) -> None:
        path = request.path.rstrip("/") or "/"
        user = self.authenticate(request)
        if path in _PUBLIC:
            await self._public(request, respond, path)
            return
        if user is None:
            await _send_status(respond, 401, "Unauthorized", "Unauthorized")
            return
        if path == "/apis/metrics.k8s.io" or path.startswith("/apis/metrics.k8s.io/"):
            await self._proxy(request, respond, user, path)
            return
        segments = path.strip("/").split("/")
        if segments[:2] == ["api", "v1"] and len(segments) > 2:
            await self._resource(request, respond, user, segments[2:])
        elif path.startswith(("/apis/authentication.k8s.io/v1/tokenreviews",
                              "/apis/authorization.k8s.io/v1/subjectaccessreviews")):
            await self._review(request, respond, user, segments)
        elif path == "/openapi" or path.startswith("/openapi/"):
            await self._openapi(request, respond, path)
        elif path in ("/api", "/apis") and (version := aggregated_version(
                request.header("accept"))):
            await self._aggregated_discovery(respond, path, version)
        else:
            await self._discovery(request, respond, path)

    async def _public(self, request: Request, respond: Responder, path: str) -> None:
        if path == "/version":
            await _send_json(respond, {
                "major": "1", "minor": "35", "gitVersion": "v1.35.0-sim",
                "gitCommit": "0" * 40, "gitTreeState": "clean",
                "buildDate": "2025-12-17T00:00:00Z", "goVersion": "go1.25.0",
                "compiler": "gc", "platform": "linux/amd64",
            })
        elif path == "/sim/truth":
            at = request.query.get("at")
            await _send_json(respond, self.world.truth(float(at) if at else None))
        else:
            await respond.start(200, [("content-type", "text/plain; charset=utf-8")], b"ok")

    # ---- discovery --------------------------------------------------------------------------

    async def _discovery(self, request: Request, respond: Responder, path: str) -> None:
        # Aggregated discovery (as=APIGroupDiscoveryList) is answered with the legacy document
        # and a plain application/json content type, which clients take as "fall back".
        groups = {
            "authentication.k8s.io": ("v1", ["tokenreviews", "TokenReview"]),
            "authorization.k8s.io": ("v1", ["subjectaccessreviews", "SubjectAccessReview"]),
            "metrics.k8s.io": ("v1beta1", None),
        }

        def group_doc(name: str, version: str) -> Obj:
            gv = {"groupVersion": f"{name}/{version}", "version": version}
            return {"name": name, "versions": [gv], "preferredVersion": gv}

        if path == "/api":
            await _send_json(respond, {
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{self.port}"}
                ],
            })
        elif path == "/api/v1":
            resources = [
                {
                    "name": r.name, "singularName": r.kind.lower(), "namespaced": r.namespaced,
                    "kind": r.kind, "verbs": _VERBS, "shortNames": list(r.short),
                    **({"categories": ["all"]} if r.name == "pods" else {}),
                }
                for r in RESOURCES.values()
            ]
            await _send_json(respond, {
                "kind": "APIResourceList", "groupVersion": "v1", "resources": resources,
            })
        elif path == "/apis":
            await _send_json(respond, {
                "kind": "APIGroupList", "apiVersion": "v1",
                "groups": [group_doc(name, v) for name, (v, _) in groups.items()],
            })
        elif path.startswith("/apis/") and path.count("/") == 2 and path[6:] in groups:
            name = path[6:]
            await _send_json(respond, {
                "kind": "APIGroup", "apiVersion": "v1", **group_doc(name, groups[name][0]),
            })
        elif path.startswith("/apis/") and path.count("/") == 3:
            _, _, name, version = path.split("/")
            entry = groups.get(name)
            if entry is None or entry[0] != version or entry[1] is None:
                await _send_status(respond, 404, "NotFound", "the server could not find the "
                                   "requested resource")
                return
            plural, kind = entry[1]
            await _send_json(respond, {
                "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{name}/{version}",
                "resources": [{"name": plural, "singularName": kind.lower(), "namespaced": False,
                               "kind": kind, "verbs": ["create"]}],
            })
        else:
            await _send_status(respond, 404, "NotFound",
                               "the server could not find the requested resource")

    # ---- resources --------------------------------------------------------------------------

    def _sorted_keys(
        self, resource: str, store: dict[tuple[str, str], Obj]
    ) -> list[tuple[str, str]]:
        cached = self._key_cache.get(resource)
        if cached is None or cached[0] != self.world.rv:
            cached = self._key_cache[resource] = (self.world.rv, sorted(store))
        return cached[1]

    def _store(self, resource: str) -> dict[tuple[str, str], Obj]:
        world = self.world
        if resource == "nodes":
            return {("", n.name): n.obj for n in world.nodes.values()}
        if resource == "pods":
            return {key: pod.obj for key, pod in world.pods.items()}
        if resource == "namespaces":
            return {("", name): obj for name, obj in world.namespaces.items()}
        return world.configmaps

    def _get_one(self, resource: str, namespace: str, name: str) -> Obj | None:
        world = self.world
        if resource == "nodes":
            node = world.nodes.get(name)
            return node.obj if node else None
        if resource == "pods":
            pod = world.pods.get((namespace, name))
            return pod.obj if pod else None
        if resource == "namespaces":
            return world.namespaces.get(name)
        return world.configmaps.get((namespace, name))

    async def _resource(
        self, request: Request, respond: Responder, user: User, rest: list[str]
    ) -> None:
        namespace = ""
        name = ""
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        elif rest[0] == "namespaces" and len(rest) == 2:
            rest = ["namespaces", rest[1]]
        if len(rest) > 2 or rest[0] not in RESOURCES:
            await _send_status(respond, 404, "NotFound",
                               "the server could not find the requested resource")
            return
        rdef = RESOURCES[rest[0]]
        if len(rest) == 2:
            name = rest[1]
        if request.method != "GET":
            await _send_status(respond, 405, "MethodNotAllowed",
                               f"the simulator does not support {request.method} on {rdef.name}")
            return
        watch = request.query.get("watch", "") in ("1", "true", "True")
        verb = "watch" if watch else ("get" if name else "list")
        allowed, reason = authorize(user, verb=verb, group="", resource=rdef.name,
                                    namespace=namespace, name=name)
        if not allowed:
            scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
            await _send_status(
                respond, 403, "Forbidden",
                f'{rdef.name} is forbidden: User "{user.name}" cannot {verb} resource '
                f'"{rdef.name}" in API group "" {scope}: {reason}',
                {"kind": rdef.name},
            )
            return
        mode = negotiate(request.header("accept"))
        if mode is None:
            await _send_status(respond, 406, "NotAcceptable",
                               "only the following media types are accepted: application/json")
            return
        try:
            labels = parse_label_selector(request.query.get("labelSelector"))
            fields = parse_field_selector(request.query.get("fieldSelector"), rdef.fields)
        except SelectorError as exc:
            await _send_status(respond, 400, "BadRequest", str(exc))
            return
        matcher = _matcher(rdef, namespace, name if watch else "", labels, fields)
        if watch:
            await self._watch(request, respond, rdef, mode, matcher)
        elif name:
            obj = self._get_one(rdef.name, namespace, name)
            if obj is None:
                await _send_status(respond, 404, "NotFound",
                                   f'{rdef.name} "{name}" not found',
                                   {"name": name, "kind": rdef.name})
            else:
                await _send_json(respond, _wrap(obj, rdef, mode))
        else:
            await self._list(request, respond, rdef, mode, matcher=matcher, namespace=namespace,
                             fields=fields)

    async def _list(
        self, request: Request, respond: Responder, rdef: _Resource, mode: str, *,
        matcher: Callable[[Obj | None], bool], namespace: str, fields: FieldSelector,
    ) -> None:
        faults = self.list_faults
        if faults.delay > 0:
            await trio.sleep(faults.delay)
        if faults.active:
            if faults.remaining is not None:
                faults.remaining -= 1
                if faults.remaining <= 0:
                    faults.active = False
            await _send_status(respond, faults.status, "InternalError",
                               "simulated list failure")
            return
        rv = self.world.rv
        pinned = fields.value_of("metadata.name")
        if pinned is not None and (namespace or not rdef.namespaced):
            one = self._get_one(rdef.name, namespace, pinned)
            candidates: Iterable[tuple[tuple[str, str], Obj]] = (
                [((namespace, pinned), one)] if one is not None else []
            )
        start_after = _decode_continue(request.query.get("continue", ""))
        if pinned is None or not (namespace or not rdef.namespaced):
            # Pages of a 150,000-pod list: each one starts where the last ended (bisect into
            # keys sorted once per resourceVersion), not by sorting and skipping everything.
            store = self._store(rdef.name)
            keys = self._sorted_keys(rdef.name, store)
            first = 0 if start_after is None else bisect.bisect_right(keys, start_after)
            candidates = ((key, store[key]) for key in keys[first:])
        limit = int(request.query.get("limit") or 0)
        items: list[Obj] = []
        more = None
        last_key = ("", "")
        for key, obj in candidates:
            if start_after is not None and key <= start_after:
                continue
            if not matcher(obj):
                continue
            if limit and len(items) >= limit:
                more = _encode_continue(last_key)
                break
            items.append(obj)
            last_key = key
        meta: Obj = {"resourceVersion": str(rv)}
        if more:
            meta["continue"] = more
        if mode == "meta":
            doc: Obj = {
                "kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1",
                "metadata": meta,
                "items": [{"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                           "metadata": obj["metadata"]} for obj in items],
            }
        else:
            doc = {"kind": f"{rdef.kind}List", "apiVersion": "v1", "metadata": meta,
                   "items": items}
        await _send_json(respond, doc)

    async def _watch(
        self, request: Request, respond: Responder, rdef: _Resource, mode: str,
        matcher: Callable[[Obj | None], bool],
    ) -> None:
        world = self.world
        rv_param = request.query.get("resourceVersion", "")
        timeout = float(request.query.get("timeoutSeconds") or DEFAULT_WATCH_TIMEOUT)
        bookmarks = request.query.get("allowWatchBookmarks", "") in ("1", "true", "True")
        drop_generation = world.drop_generation
        await respond.start(200, [("content-type", JSON)])
        with trio.move_on_after(timeout):
            changed = world.changed
            if rv_param in ("", "0"):
                since = world.rv
                for obj in sorted(self._store(rdef.name).values(),
                                  key=lambda o: int(o["metadata"]["resourceVersion"])):
                    if matcher(obj):
                        await respond.send(_line("ADDED", _wrap(obj, rdef, mode)))
            else:
                try:
                    since = int(rv_param)
                except ValueError:
                    since = -1
            next_bookmark = trio.current_time() + self.bookmark_interval
            while True:
                try:
                    events = world.events_since(since)
                except Expired as exc:
                    error = orjson.loads(status_body(410, "Expired", str(exc)))
                    await respond.send(orjson.dumps({"type": "ERROR", "object": error}) + b"\n")
                    return
                for event in events:
                    since = event.rv
                    line = _event_line(event, rdef, mode, matcher)
                    if line:
                        await respond.send(line)
                if bookmarks and trio.current_time() >= next_bookmark:
                    # Every event up to `since` has been delivered, so it is safe to resume from.
                    await respond.send(_bookmark(rdef, mode, since))
                    next_bookmark = trio.current_time() + self.bookmark_interval
                with trio.move_on_at(next_bookmark if bookmarks else float("inf")):
                    await changed.wait()
                # No await between taking the new event and reading the history again.
                changed = world.changed
                if world.drop_generation != drop_generation:
                    await respond.abort()

    # ---- what the aggregator merges from the metrics server -----------------------------------

    async def _fetch_upstream(
        self, target: str, headers: list[tuple[str, str]]
    ) -> httpx.Response | None:
        """GET `target` from the metrics server as the aggregator; None when it cannot answer."""
        upstream = self.upstream
        if upstream is None:
            return None
        identity = [("x-remote-user", "system:kube-aggregator"),
                    ("x-remote-group", "system:masters")]
        try:
            with trio.fail_after(DOCUMENT_TIMEOUT):
                return await upstream.client.get(upstream.url + target,
                                                 headers=[*headers, *identity])
        except (httpx.HTTPError, trio.TooSlowError, ssl.SSLError, OSError):
            return None

    async def _metrics_discovery(self) -> list[Obj]:
        """The metrics server's APIGroupDiscovery items: its aggregated /apis, or its legacy
        resource list converted, as kube-apiserver does for servers without aggregation."""
        response = await self._fetch_upstream("/apis", [(
            "accept", f"application/json;g=apidiscovery.k8s.io;v=v2;as={AGGREGATED_KIND},"
            "application/json")])
        if response is None or response.status_code != 200:
            return []
        if f"as={AGGREGATED_KIND}" in response.headers.get("content-type", ""):
            items: list[Obj] = orjson.loads(response.content).get("items") or []
            return items
        legacy = await self._fetch_upstream("/apis/metrics.k8s.io/v1beta1",
                                            [("accept", JSON)])
        if legacy is None or legacy.status_code != 200:
            return []
        resources = [
            {"resource": r["name"],
             "responseKind": {"group": "metrics.k8s.io", "version": "v1beta1",
                              "kind": r["kind"]},
             "scope": "Namespaced" if r.get("namespaced") else "Cluster",
             "singularResource": r.get("singularName", ""), "verbs": r.get("verbs", [])}
            for r in orjson.loads(legacy.content).get("resources", [])
        ]
        return [{"metadata": {"name": "metrics.k8s.io", "creationTimestamp": None},
                 "versions": [{"version": "v1beta1", "resources": resources,
                               "freshness": "Current"}]}]

    async def _aggregated_discovery(self, respond: Responder, path: str, version: str) -> None:
        if path == "/api":
            resources = [
                {"resource": r.name, "responseKind": {"group": "", "version": "v1",
                                                      "kind": r.kind},
                 "scope": "Namespaced" if r.namespaced else "Cluster",
                 "singularResource": r.kind.lower(), "verbs": _VERBS,
                 "shortNames": list(r.short),
                 **({"categories": ["all"]} if r.name == "pods" else {})}
                for r in RESOURCES.values()
            ]
            items: list[Obj] = [{"metadata": {"creationTimestamp": None}, "versions": [
                {"version": "v1", "resources": resources, "freshness": "Current"}]}]
        else:
            items = [
                {"metadata": {"name": name, "creationTimestamp": None}, "versions": [{
                    "version": gv, "freshness": "Current", "resources": [
                        {"resource": plural, "responseKind": {"group": name, "version": gv,
                                                              "kind": kind},
                         "scope": "Cluster", "singularResource": kind.lower(), "verbs": verbs}
                        for plural, kind, verbs in resources_]}]}
                for name, (gv, resources_) in _OWN_GROUPS.items()
            ]
            items += await self._metrics_discovery()
        body = orjson.dumps({"kind": AGGREGATED_KIND,
                             "apiVersion": f"apidiscovery.k8s.io/{version}",
                             "metadata": {}, "items": items})
        content_type = f"{JSON};g=apidiscovery.k8s.io;v={version};as={AGGREGATED_KIND}"
        await respond.start(200, [("content-type", content_type)], body)

    async def _openapi(self, request: Request, respond: Responder, path: str) -> None:
        if path == "/openapi/v2":
            await self._openapi_v2(request, respond)
        elif path == "/openapi/v3":
            paths: Obj = {}
            response = await self._fetch_upstream("/openapi/v3", [("accept", JSON)])
            if response is not None and response.status_code == 200:
                entry = orjson.loads(response.content).get("paths", {}).get(METRICS_GV_PATH)
                if entry:
                    paths[METRICS_GV_PATH] = entry
            await _send_json(respond, {"paths": paths})
        elif path == f"/openapi/v3/{METRICS_GV_PATH}":
            forwarded = [(k, v) for k, v in request.headers if k in ("accept", "if-none-match")]
            response = await self._fetch_upstream(request.target, forwarded)
            if response is None:
                await _send_status(respond, 503, "ServiceUnavailable", "service unavailable")
                return
            headers = [(k, response.headers[k]) for k in _PASSED_HEADERS if k in response.headers]
            await respond.start(response.status_code, headers, response.content)
        else:
            await _send_status(respond, 404, "NotFound",
                               "the server could not find the requested resource")

    async def _openapi_v2(self, request: Request, respond: Responder) -> None:
        accept = request.header("accept")
        kinds = [p.split(";", 1)[0].strip().lower() for p in accept.split(",")] if accept else []
        as_protobuf = False
        for kind in kinds:
            if kind in (JSON, "*/*", "application/*"):
                break
            if kind in OPENAPI_V2_PROTOBUF:
                as_protobuf = True
                break
        else:
            if kinds:
                await _send_status(respond, 406, "NotAcceptable",
                                   "only the following media types are accepted: "
                                   f"application/json, {OPENAPI_V2_PROTOBUF[1]}")
                return
        spec: Obj = {
            "swagger": "2.0",
            "info": {"title": "Kubernetes", "version": "v1.35.0-sim"},
            "paths": {"/version/": {"get": {
                "operationId": "getCodeVersion", "produces": [JSON], "schemes": ["https"],
                "responses": {"200": {"description": "OK"}}}}},
            "definitions": {},
        }
        response = await self._fetch_upstream("/openapi/v2", [("accept", JSON)])
        if response is not None and response.status_code == 200:
            theirs = orjson.loads(response.content)
            for section in ("paths", "definitions"):
                for key, value in (theirs.get(section) or {}).items():
                    spec[section].setdefault(key, value)
        body = gnostic_v2(spec) if as_protobuf else orjson.dumps(spec)
        etag = '"' + hashlib.sha512(body).hexdigest().upper() + '"'
        content_type = OPENAPI_V2_PROTOBUF[1] if as_protobuf else JSON
        if request.header("if-none-match") == etag:
            await respond.start(304, [("etag", etag)], b"")
        else:
            await respond.start(200, [("content-type", content_type), ("etag", etag)], body)

    # ---- reviews ----------------------------------------------------------------------------

    async def _review(
        self, request: Request, respond: Responder, user: User, segments: list[str]
    ) -> None:
        group, resource = segments[1], segments[3]
        if request.method != "POST":
            await _send_status(respond, 405, "MethodNotAllowed", "only POST is supported")
            return
        allowed, _ = authorize(user, verb="create", group=group, resource=resource)
        if not allowed:
            await _send_status(respond, 403, "Forbidden",
                               f'{resource}.{group} is forbidden: User "{user.name}" cannot '
                               f'create resource "{resource}" in API group "{group}" at the '
                               "cluster scope")
            return
        try:
            review = orjson.loads(request.body)
            spec = review["spec"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            await _send_status(respond, 400, "BadRequest", "malformed review")
            return
        if resource == "tokenreviews":
            subject = self.tokens.get(str(spec.get("token", "")))
            status: Obj = (
                {"authenticated": True, "user": {"username": subject.name, "uid": subject.uid,
                                                 "groups": list(subject.groups)},
                 "audiences": spec.get("audiences") or ["https://kubernetes.default.svc"]}
                if subject else {"authenticated": False, "error": "invalid bearer token"}
            )
            kind = "TokenReview"
        else:
            who = User(str(spec.get("user", "")), str(spec.get("uid", "")),
                       tuple(spec.get("groups") or ()))
            attrs = spec.get("resourceAttributes")
            if attrs:
                ok, reason = authorize(
                    who, verb=attrs.get("verb", ""), group=attrs.get("group", ""),
                    resource=attrs.get("resource", ""),
                    subresource=attrs.get("subresource", ""),
                    namespace=attrs.get("namespace", ""), name=attrs.get("name", ""),
                )
            else:
                non = spec.get("nonResourceAttributes") or {}
                ok, reason = authorize(who, verb=non.get("verb", ""), path=non.get("path", ""))
            status = {"allowed": ok, "reason": reason}
            if not ok:
                status["denied"] = False  # "no opinion", as RBAC says when nothing matches
            kind = "SubjectAccessReview"
        await _send_json(respond, {
            "kind": kind, "apiVersion": f"{group}/v1", "metadata": {"creationTimestamp": None},
            "spec": spec, "status": status,
        }, 201)

    # ---- aggregation ------------------------------------------------------------------------

    async def _proxy(self, request: Request, respond: Responder, user: User, path: str) -> None:
        parts = path.strip("/").split("/")[3:]  # after apis/metrics.k8s.io/v1beta1
        if parts:
            namespace = parts[1] if parts[0] == "namespaces" and len(parts) >= 3 else ""
            tail = parts[2:] if namespace else parts
            verb = "get" if len(tail) > 1 else "list"
            ok, reason = authorize(user, verb=verb, group="metrics.k8s.io",
                                   resource=tail[0] if tail else "", namespace=namespace,
                                   name=tail[1] if len(tail) > 1 else "")
        else:
            ok, reason = authorize(user, verb=request.method.lower(), path=path)
        if not ok:
            await _send_status(respond, 403, "Forbidden",
                               f'User "{user.name}" cannot access {path}: {reason}')
            return
        upstream = self.upstream
        if upstream is None:
            await _send_status(respond, 503, "ServiceUnavailable", "service unavailable")
            return
        headers = [
            (k, v) for k, v in request.headers
            if k not in _HOP_HEADERS and not k.startswith(_STRIPPED_PREFIXES)
        ]
        headers.append(("x-remote-user", user.name))
        headers.extend(("x-remote-group", g) for g in user.groups)
        headers.append(("x-forwarded-for", "127.0.0.1"))
        headers.append(("accept-encoding", "identity"))
        outgoing = upstream.client.build_request(
            request.method, upstream.url + request.target, headers=headers,
            content=request.body or None,
        )
        try:
            with trio.fail_after(PROXY_TIMEOUT):
                response = await upstream.client.send(outgoing, stream=True)
        except (httpx.HTTPError, trio.TooSlowError, ssl.SSLError, OSError):
            await _send_status(respond, 503, "ServiceUnavailable", "service unavailable")
            return
        try:
            await respond.start(response.status_code, [
                ("content-type", response.headers.get("content-type", JSON)),
                *((k, response.headers[k]) for k in _PASSED_HEADERS[1:] if k in response.headers),
            ])
            try:
                async for chunk in response.aiter_raw():
                    await respond.send(chunk)
            except httpx.HTTPError:
                await respond.abort()
        finally:
            with trio.move_on_after(5) as cleanup:
                cleanup.shield = True
                await response.aclose()


def _matcher(
    rdef: _Resource, namespace: str, name: str, labels: LabelSelector, fields: FieldSelector
) -> Callable[[Obj | None], bool]:
    def matches(obj: Obj | None) -> bool:
        if obj is None:
            return False
        meta = obj["metadata"]
        if namespace and meta.get("namespace") != namespace:
            return False
        if name and meta.get("name") != name:
            return False
        if not labels.empty and not labels.matches(meta.get("labels") or {}):
            return False
        return fields.matches(lambda f: _field(obj, f))

    return matches


def _wrap(obj: Obj, rdef: _Resource, mode: str) -> Obj:
    if mode == "meta":
        return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                "metadata": obj["metadata"]}
    return {"kind": rdef.kind, "apiVersion": "v1", **obj}


def _line(type_: str, obj: Obj) -> bytes:
    return orjson.dumps({"type": type_, "object": obj}) + b"\n"


def _event_line(
    event: Event, rdef: _Resource, mode: str, matcher: Callable[[Obj | None], bool]
) -> bytes | None:
    if event.resource != rdef.name:
        return None
    if event.type == "ADDED":
        type_ = "ADDED" if matcher(event.new) else None
    elif event.type == "DELETED":
        type_ = "DELETED" if matcher(event.old) else None
    else:
        was, now = matcher(event.old), matcher(event.new)
        type_ = ("MODIFIED" if now else "DELETED") if was else ("ADDED" if now else None)
    if type_ is None:
        return None
    key = f"{mode}:{type_}"
    line = event.encoded.get(key)
    if line is None:
        line = event.encoded[key] = _line(type_, _wrap(event.new, rdef, mode))
    return line


def _bookmark(rdef: _Resource, mode: str, rv: int) -> bytes:
    meta = {"resourceVersion": str(rv)}
    if mode == "meta":
        obj: Obj = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                    "metadata": meta}
    else:
        obj = {"kind": rdef.kind, "apiVersion": "v1", "metadata": meta}
    return _line("BOOKMARK", obj)


def _encode_continue(key: tuple[str, str]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(key))).decode()


def _decode_continue(token: str) -> tuple[str, str] | None:
    if not token:
        return None
    try:
        ns, name = orjson.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, TypeError):
        return None
    return (str(ns), str(name))



# ---- OpenAPI v2 in gnostic's protobuf form (what kubectl asks /openapi/v2 for) ---------------


def _pb_key(number: int, wire: int) -> bytes:
    return _pb_varint(number << 3 | wire)


def _pb_varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _pb_bytes(number: int, data: bytes) -> bytes:
    return _pb_key(number, 2) + _pb_varint(len(data)) + data


def _pb_text(number: int, text: str) -> bytes:
    return _pb_bytes(number, text.encode())


def _gnostic_any(value: Any) -> bytes:
    # Any {yaml 2}: JSON text is YAML too, and is how extension values travel.
    return _pb_text(2, orjson.dumps(value).decode())


def _gnostic_schema(schema: Obj) -> bytes:
    """openapi.v2.Schema: the fields Kubernetes schemas use (gnostic OpenAPIv2.proto numbers)."""
    out = bytearray()
    for key, number in (("$ref", 1), ("format", 2), ("title", 3), ("description", 4)):
        if isinstance(schema.get(key), str):
            out += _pb_text(number, schema[key])
    if "default" in schema:
        out += _pb_bytes(5, _gnostic_any(schema["default"]))
    for name in schema.get("required", ()):
        out += _pb_text(19, name)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        out += _pb_bytes(21, _pb_bytes(1, _gnostic_schema(extra)))
    elif isinstance(extra, bool):
        out += _pb_bytes(21, _pb_key(2, 0) + _pb_varint(int(extra)))
    types = schema.get("type")
    if types:
        out += _pb_bytes(22, b"".join(_pb_text(1, t) for t in
                                      ([types] if isinstance(types, str) else types)))
    if isinstance(schema.get("items"), dict):
        out += _pb_bytes(23, _pb_bytes(1, _gnostic_schema(schema["items"])))
    for part in schema.get("allOf", ()):
        out += _pb_bytes(24, _gnostic_schema(part))
    properties = schema.get("properties")
    if isinstance(properties, dict):
        out += _pb_bytes(25, b"".join(
            _pb_bytes(1, _pb_text(1, name) + _pb_bytes(2, _gnostic_schema(sub)))
            for name, sub in properties.items()))
    for key, value in schema.items():
        if key.startswith("x-"):
            out += _pb_bytes(31, _pb_text(1, key) + _pb_bytes(2, _gnostic_any(value)))
    return bytes(out)


def gnostic_v2(spec: Obj) -> bytes:
    """openapi.v2.Document {swagger 1, info 2, definitions 9}. Paths stay out: kubectl reads
    only the definitions (explain, validation)."""
    info = spec.get("info", {})
    definitions = b"".join(
        _pb_bytes(1, _pb_text(1, name) + _pb_bytes(2, _gnostic_schema(schema)))
        for name, schema in spec.get("definitions", {}).items()
    )
    info_message = _pb_text(1, info.get("title", "")) + _pb_text(2, info.get("version", ""))
    return _pb_text(1, spec.get("swagger", "2.0")) + _pb_bytes(2, info_message) + _pb_bytes(
        9, definitions)
