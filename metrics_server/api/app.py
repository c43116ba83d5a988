"""The Quart-Trio application: routes only. Rendering lives in `api.metrics`.

Every failure is a Kubernetes Status body: routing misses (404), other methods (405),
watch requests (405, the Metrics API has no watch), bad selectors (400) and unexpected
errors (500, logged with the request path; the client never sees a traceback).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from metrics_server.api import discovery
from metrics_server.api.metrics import MetricsAPI
from metrics_server.api.status import (
    ApiError,
    method_not_allowed,
    not_acceptable,
    path_not_found,
)
from metrics_server.health import HealthEndpoint

log = logging.getLogger(__name__)

JSON = "application/json"
PREFIX = "/apis/metrics.k8s.io/v1beta1"


@dataclass(frozen=True, slots=True)
class AppParts:
    """What the routes need; built by the daemon."""

    api: MetricsAPI
    health: Mapping[str, HealthEndpoint]
    """"healthz", "livez" and "readyz"."""
    metrics_text: Any = None
    """Callable returning (body, content type) for /metrics, or None."""


def _json(body: bytes, status: int = 200) -> Response:
    return Response(body, status=status, content_type=JSON)


def _accepts_json(accept: str) -> bool:
    if not accept:
        return True
    for part in accept.split(","):
        media = part.split(";", 1)[0].strip().lower()
        if media in ("*/*", "application/*", JSON):
            return True
    return False


def _query() -> dict[str, str]:
    # The first value wins for repeated parameters, as with Go's url.Values.Get.
    return {k: v for k, v in request.args.items(multi=False)}


def _check_read(what: str) -> dict[str, str]:
    if not _accepts_json(request.headers.get("Accept", "")):
        raise not_acceptable(request.headers.get("Accept", ""))
    query = _query()
    if query.get("watch", "").lower() in ("1", "true"):
        raise method_not_allowed("WATCH", what)
    return query


def create_app(parts: AppParts) -> QuartTrio:
    app = QuartTrio("metrics_server")
    app.config["MAX_CONTENT_LENGTH"] = 1024 * 1024
    api = parts.api

    @app.errorhandler(ApiError)
    async def api_error(error: ApiError) -> Response:
        return _json(error.body(), error.code)

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        if error.code == 405:
            err = method_not_allowed(request.method, request.path)
        elif error.code == 404:
            err = path_not_found(request.path)
        else:
            err = ApiError(error.code or 400, error.name.replace(" ", ""), error.description or "")
        return _json(err.body(), err.code)

    @app.errorhandler(Exception)
    async def unexpected(error: Exception) -> Response:
        log.exception("internal error serving %s %s", request.method, request.path)
        err = ApiError(500, "InternalError", f"Internal error occurred: {type(error).__name__}")
        return _json(err.body(), 500)

    @app.get("/apis")
    async def apis() -> Response:
        return _json(discovery.API_GROUP_LIST)

    @app.get("/apis/metrics.k8s.io")
    async def group() -> Response:
        return _json(discovery.API_GROUP)

    @app.get(PREFIX)
    async def resources() -> Response:
        return _json(discovery.API_RESOURCE_LIST)

    @app.get(f"{PREFIX}/nodes")
    async def list_nodes() -> Response:
        return _json(api.list_nodes(_check_read("nodes")))

    @app.get(f"{PREFIX}/nodes/<name>")
    async def get_node(name: str) -> Response:
        _check_read("nodes")
        return _json(api.get_node(name))

    @app.get(f"{PREFIX}/pods")
    async def list_all_pods() -> Response:
        return _json(api.list_pods(None, _check_read("pods")))

    @app.get(f"{PREFIX}/namespaces/<namespace>/pods")
    async def list_pods(namespace: str) -> Response:
        return _json(api.list_pods(namespace, _check_read("pods")))

    @app.get(f"{PREFIX}/namespaces/<namespace>/pods/<name>")
    async def get_pod(namespace: str, name: str) -> Response:
        _check_read("pods")
        return _json(api.get_pod(namespace, name))

    def health(endpoint: str, only: str | None) -> Response:
        checks = parts.health[endpoint]
        status, text = checks.evaluate(
            verbose="verbose" in request.args,
            exclude=request.args.getlist("exclude"),
            only=only,
        )
        return Response(text, status=status, content_type="text/plain; charset=utf-8")

    for endpoint in ("healthz", "livez", "readyz"):

        async def whole(endpoint: str = endpoint) -> Response:
            return health(endpoint, None)

        async def one(check: str, endpoint: str = endpoint) -> Response:
            return health(endpoint, check)

        app.add_url_rule(f"/{endpoint}", f"{endpoint}", whole, methods=["GET"])
        app.add_url_rule(f"/{endpoint}/<check>", f"{endpoint}_one", one, methods=["GET"])

    if parts.metrics_text is not None:

        @app.get("/metrics")
        async def metrics() -> Response:
            body, content_type = parts.metrics_text()
            return Response(body, status=200, content_type=content_type)

    return app
