"""The serving layer's one exception type: anything that keeps us from listening securely."""

from __future__ import annotations

__all__ = ["ServingError"]


class ServingError(Exception):
    """Bad TLS flags, unreadable/unwritable certificate files, or a port we can't bind."""
