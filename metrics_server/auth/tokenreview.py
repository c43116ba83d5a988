"""Bearer-token authentication by TokenReview against kube-apiserver, with a TTL cache.

POST /apis/authentication.k8s.io/v1/tokenreviews, bounded by `fail_after`. Accepted and
rejected answers are cached for the TTL under a keyed BLAKE2b digest of the token; failures are
never cached. Tokens never appear in logs or error messages.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import httpx
import trio

from .errors import AuthBackendError
from .ttlcache import ReviewCache
from .user import UserInfo

__all__ = ["TOKENREVIEW_PATH", "TokenReviewer"]

log = logging.getLogger(__name__)

TOKENREVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"


@dataclass(frozen=True, slots=True)
class _Answer:
    user: UserInfo | None


def _user_from_status(status: dict[str, Any]) -> UserInfo:
    u = status.get("user") or {}
    name = u.get("username")
    if not isinstance(name, str) or not name:
        raise AuthBackendError("tokenreview: authenticated without a username")
    groups = u.get("groups") or []
    extra = u.get("extra") or {}
    if not isinstance(groups, list) or not isinstance(extra, dict):
        raise AuthBackendError("tokenreview: malformed user")
    return UserInfo(
        name=name,
        uid=str(u.get("uid") or ""),
        groups=tuple(str(g) for g in groups),
        extra=MappingProxyType(
            {str(k): tuple(str(x) for x in (v or [])) for k, v in extra.items()}
        ),
        authenticated_by="token",
    )


class TokenReviewer:
    """Answers "who holds this token?" (None = rejected); raises AuthBackendError on failure."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        cache_ttl: float = 10.0,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = 4096,
    ) -> None:
        self.client = client
        self.cache_ttl = cache_ttl
        self.timeout = timeout
        self.cache: ReviewCache[_Answer] = ReviewCache(max_entries=max_entries, clock=clock)
        # A per-process key: digests are useless outside this process.
        self._key = secrets.token_bytes(32)

    def _digest(self, token: str) -> str:
        return hashlib.blake2b(token.encode(), key=self._key, digest_size=32).hexdigest()

    async def review(self, token: str) -> UserInfo | None:
        answer = await self.cache.lookup(
            self._digest(token), lambda: self._post(token), lambda _: self.cache_ttl
        )
        return answer.user

    async def _post(self, token: str) -> _Answer:
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token},
        }
        try:
            with trio.fail_after(self.timeout):
                resp = await self.client.post(TOKENREVIEW_PATH, json=body)
        except trio.TooSlowError as exc:
            raise AuthBackendError(
                f"tokenreview webhook error: no answer within {self.timeout:g}s"
            ) from exc
        except httpx.HTTPError as exc:
            # str(exc) of an httpx error names the URL, never the request body.
            raise AuthBackendError(f"tokenreview webhook error: {exc}") from exc
        if resp.status_code not in (200, 201):
            raise AuthBackendError(f"tokenreview webhook error: HTTP {resp.status_code}")
        try:
            status = resp.json().get("status") or {}
        except (ValueError, AttributeError) as exc:
            raise AuthBackendError("tokenreview webhook error: malformed reply") from exc
        if not isinstance(status, dict):
            raise AuthBackendError("tokenreview webhook error: malformed status")
        if status.get("authenticated") is True:
            return _Answer(_user_from_status(status))
        if status.get("error"):
            # Upstream turns status.error into an authentication error (still a 401).
            raise AuthBackendError(f"tokenreview: {status['error']}")
        return _Answer(None)
