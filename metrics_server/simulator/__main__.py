"""`metrics-server-sim` / `python -m metrics_server.simulator`: argv in, exit code out."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import trio

from metrics_server.simulator._runner import SimulatorError, options_from, parse_args, run
from metrics_server.simulator.kubectl import kubectl_path

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    kubectl = None
    if args.demo:
        # May download kubectl: blocking, so it happens before trio starts.
        kubectl = kubectl_path()
    options = options_from(args, kubectl)
    failed = False
    try:
        trio.run(run, options)
    except* SimulatorError as group:
        for exc in group.exceptions:
            print(f"metrics-server-sim: {exc}", file=sys.stderr)
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
