"""The Quart-Trio application: routes and content negotiation only. Rendering lives in
`api.metrics` (objects), `api.discovery` and `api.openapi` (documents).

Every failure is a Kubernetes Status body, in the negotiated encoding (protobuf when the
client asked for it): routing misses (404), other methods (405), watch requests (405, the
Metrics API has no watch), media types we cannot produce (406, always JSON), bad selectors
and options (400), and unexpected errors (500, logged with the request path; the client never
sees a traceback). Documents that clients cache (aggregated discovery, OpenAPI) carry ETags and
answer a matching If-None-Match with 304.
"""

from __future__ import annotations

import dataclasses
import email.utils
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from metrics_server.api import discovery, openapi, serialize
from metrics_server.api.metrics import MetricsAPI
from metrics_server.api.negotiate import (
    AGGREGATED_DISCOVERY,
    JSON,
    RESOURCE_MEDIA_TYPES,
    YAML,
    Choice,
    Conversion,
    negotiate,
    resource_conversion_allowed,
)
from metrics_server.api.status import (
    ApiError,
    method_not_allowed,
    not_acceptable,
    path_not_found,
)
from metrics_server.health import HealthEndpoint

log = logging.getLogger(__name__)

PREFIX = "/apis/metrics.k8s.io/v1beta1"
DOCUMENT_MEDIA_TYPES = (JSON, YAML)
"""What discovery documents are served as."""
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
# kube-apiserver indents its answers for these clients, which are usually people.
_HUMAN_AGENTS = ("curl", "Wget", "Mozilla/5.0")
_YEAR_SECONDS = 365 * 24 * 3600


@dataclass(frozen=True, slots=True)
class AppParts:
    """What the routes need; built by the daemon."""

    api: MetricsAPI
    health: Mapping[str, HealthEndpoint]
    """"healthz", "livez" and "readyz"."""
    metrics_text: Any = None
    """Callable returning (body, content type) for /metrics, or None."""


def _respond(body: bytes, content_type: str = JSON, status: int = 200) -> Response:
    return Response(body, status=status, content_type=content_type)


def _query() -> dict[str, str]:
    # The first value wins for repeated parameters, as with Go's url.Values.Get.
    return {k: v for k, v in request.args.items(multi=False)}


def _accept() -> str:
    return request.headers.get("Accept", "")


def _pretty(choice: Choice, query: Mapping[str, str]) -> Choice:
    if choice.pretty or choice.media_type != JSON:
        return choice
    if "pretty" in query:
        pretty = query["pretty"] in _TRUE
    else:
        pretty = request.headers.get("User-Agent", "").startswith(_HUMAN_AGENTS)
    return dataclasses.replace(choice, pretty=True) if pretty else choice


def _resource_choice(what: str) -> tuple[dict[str, str], Choice]:
    choice = negotiate(_accept(), RESOURCE_MEDIA_TYPES, resource_conversion_allowed)
    if choice is None:
        raise not_acceptable(RESOURCE_MEDIA_TYPES)
    query = _query()
    if query.get("watch", "").lower() not in ("", "0", "false"):
        raise method_not_allowed("WATCH", what)
    return query, _pretty(choice, query)


def _error_media_type() -> str:
    """Status bodies follow the request's negotiated encoding; Table views do not apply."""
    choice = negotiate(_accept(), RESOURCE_MEDIA_TYPES, resource_conversion_allowed)
    return choice.media_type if choice is not None else JSON


def _document(body: bytes, media_types: tuple[str, ...] = DOCUMENT_MEDIA_TYPES) -> Response:
    """A legacy discovery document (stored as JSON) in the negotiated media type."""
    choice = negotiate(_accept(), media_types)
    if choice is None:
        raise not_acceptable(media_types)
    if choice.media_type == YAML:
        body = serialize.to_yaml(orjson.loads(body))
    return _respond(body, choice.media_type)


def _cached(body: bytes, etag: str, content_type: str) -> Response:
    """A cacheable document: ETag and Vary set; 304 when If-None-Match names this version."""
    if request.headers.get("If-None-Match", "") == etag:
        response = Response(b"", status=304)
    else:
        response = _respond(body, content_type)
    response.headers["ETag"] = etag
    response.headers["Vary"] = "Accept"
    return response


def _aggregated_allowed(media_type: str, conversion: Conversion) -> bool:
    return media_type == JSON and conversion in AGGREGATED_DISCOVERY


def create_app(parts: AppParts) -> QuartTrio:
    app = QuartTrio("metrics_server")
    app.config["MAX_CONTENT_LENGTH"] = 1024 * 1024
    # Kubernetes answers OPTIONS like any other method it does not serve: a 405 Status.
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    api = parts.api

    @app.errorhandler(ApiError)
    async def api_error(error: ApiError) -> Response:
        # A 406 is about the Accept header itself, so it can only be answered in JSON.
        media_type = JSON if error.code == 406 else _error_media_type()
        return _respond(error.encode(media_type), media_type, error.code)

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        if error.code == 405:
            err = method_not_allowed(request.method, request.path)
        elif error.code == 404:
            err = path_not_found(request.path)
        else:
            err = ApiError(error.code or 400, error.name.replace(" ", ""), error.description or "")
        media_type = _error_media_type()
        return _respond(err.encode(media_type), media_type, err.code)

    @app.errorhandler(Exception)
    async def unexpected(error: Exception) -> Response:
        log.exception("internal error serving %s %s", request.method, request.path)
        err = ApiError(500, "InternalError", f"Internal error occurred: {type(error).__name__}")
        return _respond(err.body(), JSON, 500)

    # -- discovery ----------------------------------------------------------------------

    @app.get("/apis")
    async def apis() -> Response:
        choice = negotiate(_accept(), DOCUMENT_MEDIA_TYPES, _aggregated_allowed)
        if choice is None:
            raise not_acceptable(DOCUMENT_MEDIA_TYPES)
        if choice.conversion is not None:
            version = choice.conversion.version
            return _cached(
                discovery.AGGREGATED[version],
                discovery.AGGREGATED_ETAGS[version],
                choice.content_type,
            )
        return _document(discovery.API_GROUP_LIST)

    @app.get("/apis/metrics.k8s.io")
    async def group() -> Response:
        return _document(discovery.API_GROUP)

    @app.get(PREFIX)
    async def resources() -> Response:
        return _document(discovery.API_RESOURCE_LIST)

    @app.get("/version")
    async def version() -> Response:
        # As kube-apiserver: JSON whatever the Accept header says.
        return _respond(discovery.VERSION_INFO)

    # -- OpenAPI ------------------------------------------------------------------------

    @app.get("/openapi/v2")
    async def openapi_v2() -> Response:
        # Clients that can only read the protobuf form (gnostic) get 406, as from any server
        # that lacks it; a JSON range anywhere in the header gets JSON.
        if negotiate(_accept(), (JSON,)) is None:
            raise not_acceptable((JSON,))
        return _cached(openapi.V2, openapi.V2_ETAG, JSON)

    @app.get("/openapi/v3")
    async def openapi_v3_index() -> Response:
        return _cached(openapi.V3_INDEX, discovery.etag(openapi.V3_INDEX), JSON)

    @app.get(f"/openapi/v3/{openapi.GROUP_VERSION_PATH}")
    async def openapi_v3() -> Response:
        if negotiate(_accept(), (JSON,)) is None:
            raise not_acceptable((JSON,))
        asked = request.args.get("hash", "")
        if asked and asked != openapi.V3_HASH:
            # An outdated link: send the client to the current document, as kube-openapi does.
            response = Response(b"", status=301)
            response.headers["Location"] = (
                f"/openapi/v3/{openapi.GROUP_VERSION_PATH}?hash={openapi.V3_HASH}"
            )
            return response
        response = _cached(openapi.V3, openapi.V3_ETAG, JSON)
        if asked:
            # The hash pins the content, so the answer never goes stale.
            response.headers["Cache-Control"] = "public, immutable"
            response.headers["Expires"] = email.utils.formatdate(
                time.time() + _YEAR_SECONDS, usegmt=True
            )
        return response

    # -- the Metrics API ----------------------------------------------------------------

    @app.get(f"{PREFIX}/nodes")
    async def list_nodes() -> Response:
        query, choice = _resource_choice("nodes")
        return _respond(api.list_nodes(query, choice), choice.media_type)

    @app.get(f"{PREFIX}/nodes/<name>")
    async def get_node(name: str) -> Response:
        query, choice = _resource_choice("nodes")
        return _respond(api.get_node(name, query, choice), choice.media_type)

    @app.get(f"{PREFIX}/pods")
    async def list_all_pods() -> Response:
        query, choice = _resource_choice("pods")
        return _respond(api.list_pods(None, query, choice), choice.media_type)

    @app.get(f"{PREFIX}/namespaces/<namespace>/pods")
    async def list_pods(namespace: str) -> Response:
        query, choice = _resource_choice("pods")
        return _respond(api.list_pods(namespace, query, choice), choice.media_type)

    @app.get(f"{PREFIX}/namespaces/<namespace>/pods/<name>")
    async def get_pod(namespace: str, name: str) -> Response:
        query, choice = _resource_choice("pods")
        return _respond(api.get_pod(namespace, name, query, choice), choice.media_type)

    # -- health and self-metrics --------------------------------------------------------

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
