"""`metrics-server` entry point: parse flags, load credentials, run the daemon."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator

import trio

from metrics_server import cli, logs
from metrics_server.logs import log_kv

log = logging.getLogger("metrics_server")


def main(argv: list[str] | None = None) -> None:
    options = cli.parse_or_exit(sys.argv[1:] if argv is None else argv)
    logs.setup(options.verbosity, options.logging_format)

    from metrics_server import daemon
    from metrics_server.auth.errors import AuthError
    from metrics_server.kube.credentials import CredentialsError
    from metrics_server.serving.errors import ServingError

    fatal = (CredentialsError, ServingError, AuthError)
    try:
        access = daemon.load_access(options)
        trio.run(daemon.run, options, access)
    except BaseException as exc:
        leaves = list(_leaves(exc))
        known = [e for e in leaves if isinstance(e, fatal)]
        if known and len(known) == len(leaves):
            # A start-up error an operator can fix: one line, no traceback.
            log_kv(log, logging.ERROR, "Failed to start", err=known[0])
            raise SystemExit(1) from None
        if leaves and all(isinstance(e, KeyboardInterrupt) for e in leaves):
            raise SystemExit(130) from None
        raise


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


if __name__ == "__main__":
    main()
