"""The authenticated identity handed from authentication to authorization and logging."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = [
    "ANONYMOUS",
    "ANONYMOUS_NAME",
    "SYSTEM_AUTHENTICATED",
    "SYSTEM_MASTERS",
    "SYSTEM_UNAUTHENTICATED",
    "UserInfo",
]

SYSTEM_AUTHENTICATED = "system:authenticated"
SYSTEM_UNAUTHENTICATED = "system:unauthenticated"
SYSTEM_MASTERS = "system:masters"
ANONYMOUS_NAME = "system:anonymous"


def _empty_extra() -> Mapping[str, tuple[str, ...]]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class UserInfo:
    """k8s.io/apiserver user.Info: name, uid, groups and extra, as sent in a SubjectAccessReview."""

    name: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=_empty_extra)
    authenticated_by: str = ""
    """The authenticator that produced this user (request-header, x509, token, anonymous)."""

    def with_authenticated_group(self) -> UserInfo:
        """Add system:authenticated like group.AuthenticatedGroupAdder.

        Upstream skips the anonymous user and anyone already in system:authenticated or
        system:unauthenticated.
        """
        if (
            self.name == ANONYMOUS_NAME
            or SYSTEM_AUTHENTICATED in self.groups
            or SYSTEM_UNAUTHENTICATED in self.groups
        ):
            return self
        return UserInfo(
            name=self.name,
            uid=self.uid,
            groups=(*self.groups, SYSTEM_AUTHENTICATED),
            extra=self.extra,
            authenticated_by=self.authenticated_by,
        )


ANONYMOUS = UserInfo(
    name=ANONYMOUS_NAME, groups=(SYSTEM_UNAUTHENTICATED,), authenticated_by="anonymous"
)
