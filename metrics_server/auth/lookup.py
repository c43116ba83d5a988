"""Reading and watching `kube-system/extension-apiserver-authentication`.

kube-apiserver publishes its client CA and front-proxy (request-header) settings in this
ConfigMap. Upstream semantics (k8s.io/apiserver options/authentication.go):

* the ConfigMap supplies the client CA only when `--client-ca-file` is empty, and the
  request-header settings only when `--requestheader-client-ca-file` is empty; neither when
  `--authentication-skip-lookup` is set;
* the request-header half is looked up once at start-up: NotFound means "no front proxy";
  any other failure (Forbidden, unreachable, malformed) stops start-up unless
  `--authentication-tolerate-lookup-failure`, in which case request-header authentication
  stays off (logged as a warning);
* afterwards the ConfigMap is kept current by list + watch, reconnecting with backoff forever.

Every failed read or watch is reported to `on_failure` with a short reason (the daemon
counts them in /metrics); the log follows the state: one warning when reading starts to
fail, debug lines while it keeps failing, one INFO line once it is readable again.

The httpx client is given to us already configured (base URL, CA, credentials).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import trio

from .certverify import EMPTY_BUNDLE, parse_ca_bundle
from .errors import AuthConfigError, AuthLookupError
from .sources import AuthSources, RequestHeaderSettings

__all__ = ["CONFIGMAP_NAME", "CONFIGMAP_NAMESPACE", "ConfigMapWatcher"]

log = logging.getLogger(__name__)

CONFIGMAP_NAMESPACE = "kube-system"
CONFIGMAP_NAME = "extension-apiserver-authentication"
_LIST_PATH = f"/api/v1/namespaces/{CONFIGMAP_NAMESPACE}/configmaps"
_FIELD_SELECTOR = f"metadata.name={CONFIGMAP_NAME}"
_BACKOFF = (1.0, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0)
_MAX_BACKOFF = 30.0


_WHERE = f"configmap/{CONFIGMAP_NAME} in {CONFIGMAP_NAMESPACE}"

FailureHook = Callable[[str], None]
"""Called with the reason of each failed read or watch: timeout, connection, http_<status>
or invalid."""


class _Gone(Exception):
    """The watch's resourceVersion is too old (410); relist."""


class _Failure(AuthLookupError):
    """A read or watch failed; `reason` is the short label for /metrics."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def failure_reason(exc: BaseException) -> str:
    """The /metrics label for what went wrong reading or watching the ConfigMap."""
    if isinstance(exc, _Failure):
        return exc.reason
    if isinstance(exc, (trio.TooSlowError, httpx.TimeoutException)):
        return "timeout"
    if isinstance(exc, httpx.HTTPError):
        return "connection"
    return "invalid"


def _json_strings(data: Mapping[str, str], key: str) -> tuple[str, ...]:
    raw = data.get(key, "")
    if not raw:
        return ()
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise AuthConfigError(f"configmap key {key}: invalid JSON: {exc}") from exc
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AuthConfigError(f"configmap key {key}: expected a JSON array of strings")
    return tuple(value)


def request_header_from_configmap(data: Mapping[str, str]) -> RequestHeaderSettings:
    """Parse the request-header keys (upstream's loadRequestHeaderFor)."""
    source = f"configmap/{CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME}[requestheader-client-ca-file]"
    ca = parse_ca_bundle(data.get("requestheader-client-ca-file", "").encode(), source)
    return RequestHeaderSettings(
        ca=ca,
        allowed_names=_json_strings(data, "requestheader-allowed-names"),
        username_headers=_json_strings(data, "requestheader-username-headers"),
        group_headers=_json_strings(data, "requestheader-group-headers"),
        extra_headers_prefix=_json_strings(data, "requestheader-extra-headers-prefix"),
    )


def _data(obj: Mapping[str, Any] | None) -> dict[str, str]:
    if obj is None:
        return {}
    data = obj.get("data") or {}
    if not isinstance(data, dict):
        raise AuthConfigError("configmap data is not an object")
    return {str(k): str(v) for k, v in data.items()}


class ConfigMapWatcher:
    """Keeps `AuthSources` current from the cluster ConfigMap.

    Use: `await nursery.start(watcher.run)`. `run` performs the start-up lookup before
    reporting started (raising AuthLookupError when that is fatal) and then watches forever.
    """

    def __init__(
        self,
        client: httpx.AsyncClient | None,
        sources: AuthSources,
        *,
        request_timeout: float = 10.0,
        watch_inactivity_timeout: float = 330.0,
        on_failure: FailureHook | None = None,
    ) -> None:
        self.client = client
        self.sources = sources
        self.request_timeout = request_timeout
        self.watch_inactivity_timeout = watch_inactivity_timeout
        self.on_failure = on_failure
        """Set before `run` starts (the daemon counts failures in /metrics)."""
        self._failing = False
        self._request_header_dropped = False
        cfg = sources.config
        self.want_client_ca = not cfg.client_ca_file and not cfg.authentication_skip_lookup
        self.want_request_header = (
            not cfg.requestheader_client_ca_file and not cfg.authentication_skip_lookup
        )

    def _apply(self, obj: Mapping[str, Any] | None) -> None:
        data = _data(obj)
        if self.want_client_ca:
            source = f"configmap/{CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME}[client-ca-file]"
            try:
                bundle = parse_ca_bundle(data.get("client-ca-file", "").encode(), source)
            except AuthConfigError as exc:
                log.warning("ignoring invalid client-ca-file in the configmap: %s", exc)
            else:
                self.sources.set_client_ca(bundle)
        if self.want_request_header:
            if obj is None:
                self.sources.set_request_header(RequestHeaderSettings(EMPTY_BUNDLE, (), (), (), ()))
            else:
                self.sources.set_request_header(request_header_from_configmap(data))

    async def _list(self) -> tuple[dict[str, Any] | None, str]:
        """One list call; returns (the ConfigMap or None, resourceVersion)."""
        assert self.client is not None
        try:
            with trio.fail_after(self.request_timeout):
                resp = await self.client.get(_LIST_PATH, params={"fieldSelector": _FIELD_SELECTOR})
        except trio.TooSlowError as exc:
            raise _Failure(
                "timeout", f"reading {_WHERE} timed out after {self.request_timeout:g}s"
            ) from exc
        except httpx.HTTPError as exc:
            raise _Failure(failure_reason(exc), f"reading {_WHERE} failed: {exc}") from exc
        if resp.status_code == 403:
            raise _Failure(
                "http_403",
                f"unable to get {_WHERE} "
                "(403 Forbidden). Usually fixed by 'kubectl create rolebinding -n "
                f"{CONFIGMAP_NAMESPACE} ROLEBINDING_NAME "
                "--role=extension-apiserver-authentication-reader "
                "--serviceaccount=YOUR_NS:YOUR_SA'",
            )
        if resp.status_code != 200:
            raise _Failure(f"http_{resp.status_code}", f"reading {_WHERE}: HTTP {resp.status_code}")
        try:
            body = resp.json()
            items = body.get("items") or []
            rv = str((body.get("metadata") or {}).get("resourceVersion", ""))
        except (ValueError, AttributeError) as exc:
            raise _Failure("invalid", f"configmap list reply is not a list: {exc}") from exc
        for item in items:
            if (item.get("metadata") or {}).get("name") == CONFIGMAP_NAME:
                return item, rv
        return None, rv

    async def initial_lookup(self) -> None:
        """Start-up lookup with upstream's failure semantics."""
        if not (self.want_client_ca or self.want_request_header):
            return
        if self.client is None:
            log.warning(
                "No authentication kubeconfig: configmap/%s in %s is not read, so client "
                "certificate and request-header authentication from the cluster won't work.",
                CONFIGMAP_NAME,
                CONFIGMAP_NAMESPACE,
            )
            self.want_client_ca = self.want_request_header = False
            return
        try:
            obj, _ = await self._list()
            self._apply(obj)
        except (AuthLookupError, AuthConfigError) as exc:
            self._count(exc)
            if not self.want_request_header:
                # Upstream looks up only the request-header half synchronously; the client
                # CA controller just retries in the background.
                self._failing = True
                log.warning("client CA lookup failed, will retry: %s", exc)
                return
            if not self.sources.config.authentication_tolerate_lookup_failure:
                raise AuthLookupError(
                    f"unable to load configmap based request-header-client-ca-file: {exc}"
                ) from exc
            # Upstream's three warnings, as one line: it is one event.
            self._failing = True
            log.warning(
                "Error looking up in-cluster authentication configuration: %s. "
                "Continuing without authentication configuration. "
                "This may treat all requests as anonymous. "
                "To require authentication configuration lookup to succeed, "
                "set --authentication-tolerate-lookup-failure=false",
                exc,
            )
            self.want_request_header = False
            self._request_header_dropped = True

    def _count(self, exc: BaseException) -> None:
        if self.on_failure is not None:
            self.on_failure(failure_reason(exc))

    def _failed(self, exc: BaseException, delay: float) -> None:
        """One failed attempt of the watch loop: counted always, a warning only the first
        time in a row."""
        self._count(exc)
        if self._failing:
            log.debug("%s still unreadable (retrying in %gs): %s", _WHERE, delay, exc)
            return
        self._failing = True
        log.warning("configmap watch failed (retrying in %gs): %s", delay, exc)

    def _readable(self) -> None:
        if not self._failing:
            return
        self._failing = False
        if self._request_header_dropped:
            # Upstream reads the request-header half once, at start-up.
            log.info(
                "%s is readable again; request-header authentication stays off until "
                "restart (it is read at start-up only)",
                _WHERE,
            )
        else:
            log.info("%s is readable again", _WHERE)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Initial lookup, then list+watch forever (this routine never ends gracefully)."""
        await self.initial_lookup()
        task_status.started()
        if self.client is None or not (self.want_client_ca or self.want_request_header):
            return
        failures = 0
        while True:
            try:
                obj, rv = await self._list()
                self._apply(obj)
                self._readable()
                failures = 0
                while True:
                    rv = await self._watch(rv)
            except _Gone:
                log.log(
                    logging.DEBUG if self._failing else logging.INFO,
                    "configmap watch expired, relisting",
                )
                continue
            except (AuthLookupError, AuthConfigError, httpx.HTTPError, trio.TooSlowError) as exc:
                delay = _BACKOFF[failures] if failures < len(_BACKOFF) else _MAX_BACKOFF
                failures += 1
                self._failed(exc, delay)
                await trio.sleep(delay)

    async def _watch(self, rv: str) -> str:
        """One watch request from `rv`; returns the last resourceVersion seen."""
        assert self.client is not None
        params = {
            "fieldSelector": _FIELD_SELECTOR,
            "watch": "true",
            "allowWatchBookmarks": "true",
            "resourceVersion": rv,
            "timeoutSeconds": "300",
        }
        # The client's read timeout would cut a quiet watch; our inactivity bound replaces it.
        timeout = httpx.Timeout(self.request_timeout, read=None)
        async with self.client.stream("GET", _LIST_PATH, params=params, timeout=timeout) as resp:
            if resp.status_code == 410:
                raise _Gone
            if resp.status_code != 200:
                raise _Failure(
                    f"http_{resp.status_code}", f"configmap watch: HTTP {resp.status_code}"
                )
            lines = resp.aiter_lines().__aiter__()
            while True:
                # A silent watch is a dead watch: bound the wait for each line.
                with trio.fail_after(self.watch_inactivity_timeout):
                    try:
                        line = await lines.__anext__()
                    except StopAsyncIteration:
                        return rv
                if line.strip():
                    rv = self._handle_event(line, rv)

    def _handle_event(self, line: str, rv: str) -> str:
        try:
            event = json.loads(line)
            kind = event["type"]
            obj = event["object"]
        except (ValueError, KeyError, TypeError) as exc:
            raise _Failure("invalid", f"malformed watch event: {exc}") from exc
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise _Gone
            code = obj.get("code")
            reason = f"http_{code}" if isinstance(code, int) else "invalid"
            raise _Failure(reason, f"watch error: {obj.get('message', '')}")
        new_rv = str((obj.get("metadata") or {}).get("resourceVersion", rv))
        if kind in ("ADDED", "MODIFIED"):
            self._apply(obj)
        elif kind == "DELETED":
            self._apply(None)
        return new_rv
