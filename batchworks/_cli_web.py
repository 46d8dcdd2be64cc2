"""``batchworks web`` (the dashboard, served by uvicorn) and ``batchworks jobs why ID``: the
commands of #17, kept out of :mod:`batchworks.cli`, which registers them with :func:`add`.

The dashboard is closed by default. ``BATCHWORKS_WEB_PASSWORD`` is the operators' password
(HTTP Basic, any user name) and ``BATCHWORKS_WEB_READ_PASSWORD`` an optional read-only one.
Without a password, ``web`` refuses a host that is not a loopback address; on a loopback one
it makes up a password and prints it once.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import secrets
import signal
import sys
from typing import Any

from batchworks._cli_common import EXIT_OK, Command, UsageError, open_backend, parse_job_id
from batchworks.why import why_waiting

__all__ = ["add"]

PASSWORD_ENV = "BATCHWORKS_WEB_PASSWORD"
READ_PASSWORD_ENV = "BATCHWORKS_WEB_READ_PASSWORD"
SECRET_ENV = "BATCHWORKS_WEB_SECRET"
WEB_EXTRA = "pip install 'batchworks[web]'"


def add(command: Command, job_commands: Any) -> None:
    """Register ``web`` and ``jobs why`` through cli.py's ``command`` helper."""
    why = command("why", _why, "why a job is waiting (or that it is not)", job_commands)
    why.add_argument("id", type=parse_job_id)
    why.add_argument("--json", action="store_true")
    web = command(
        "web",
        _web,
        f"serve the operators' dashboard (needs {WEB_EXTRA}; password from ${PASSWORD_ENV})",
    )
    web.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)"
    )
    web.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    web.add_argument(
        "--root-path", default="", help="the path prefix a reverse proxy serves it under"
    )


async def _why(args: argparse.Namespace) -> int:

    async with open_backend(args) as backend:
        found = await why_waiting(backend, args.id)
    if found is None:
        raise UsageError(f"no job {args.id} in schema {args.schema!r}")
    if args.json:
        print(json.dumps([reason.as_dict() for reason in found], default=str))
        return EXIT_OK
    print(f"job {args.id}:")
    for reason in found:
        print(f"- {reason.text}")
    return EXIT_OK


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def passwords(host: str) -> tuple[str, str | None, bool]:
    """The operate and read passwords, and whether the operate one was made up here.

    :raises UsageError: no password for a host that is not a loopback address."""

    operate = os.environ.get(PASSWORD_ENV) or None
    read = os.environ.get(READ_PASSWORD_ENV) or None
    if operate is None:
        if not is_loopback(host):
            raise UsageError(
                f"refusing to serve the dashboard on {host!r} without a password: set "
                f"{PASSWORD_ENV} (and {READ_PASSWORD_ENV} for read-only users), or listen on "
                "127.0.0.1"
            )
        return secrets.token_urlsafe(18), read, True
    return operate, read, False


async def _web(args: argparse.Namespace) -> int:

    try:
        import uvicorn

        from batchworks.web import PasswordAuth, create_app
    except ImportError as exc:
        raise UsageError(
            f"the dashboard needs the web extra ({exc.name} is missing): {WEB_EXTRA}"
        ) from None
    operate, read, made_up = passwords(args.host)
    try:
        authorize = PasswordAuth(operate, read)
    except ValueError as exc:
        raise UsageError(f"{exc} (${PASSWORD_ENV}, ${READ_PASSWORD_ENV})") from None
    secret = os.environ.get(SECRET_ENV)
    async with open_backend(args) as backend:
        app = create_app(backend, authorize=authorize, secret=secret.encode() if secret else None)
        config = uvicorn.Config(
            app, host=args.host, port=args.port, root_path=args.root_path, log_level="info"
        )
        server = uvicorn.Server(config)
        where = f"http://{args.host}:{args.port}{args.root_path}/"
        if made_up:
            print(
                f"dashboard at {where} (any user name; password {operate}, made up for this run: "
                f"set {PASSWORD_ENV} to choose one)",
                file=sys.stderr,
                flush=True,
            )
        else:
            print(f"dashboard at {where}", file=sys.stderr, flush=True)
        # uvicorn stops gracefully on SIGTERM, then raises it again once its own handler is
        # gone: with this one in place that second SIGTERM is a no-op and the command exits 0,
        # as a worker does after a graceful stop.
        previous = signal.signal(signal.SIGTERM, _stopped)
        try:
            await server.serve()
        finally:
            signal.signal(signal.SIGTERM, previous)
    return EXIT_OK


def _stopped(signum: int, frame: object) -> None:
    """The SIGTERM handler around uvicorn's: the stop already happened."""
