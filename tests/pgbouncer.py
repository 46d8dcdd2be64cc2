"""A PgBouncer of the test suite's own, in transaction pooling mode, in front of a server.

:func:`pgbouncer` starts one on a free port with its ini, userlist and log in a temporary
directory, pointing at the host and port of a DSN, and yields the DSN that goes through it.
Without the binary it raises :class:`PgBouncerMissing` (``.ci/run`` installs it; under
CI=true the tests that need it fail instead of skipping). PgBouncer logs in to the server as
the DSN's user without a password, so that server must trust it (the suite's own servers do).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.pgserver import _free_port

__all__ = ["PgBouncerMissing", "find_pgbouncer", "pgbouncer", "pgbouncer_or_skip"]


class PgBouncerMissing(RuntimeError):
    """No ``pgbouncer`` binary on this machine."""


def find_pgbouncer() -> str:
    """The path of the ``pgbouncer`` binary (Debian puts it in /usr/sbin)."""
    for candidate in (shutil.which("pgbouncer"), "/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise PgBouncerMissing("pgbouncer is not installed: apt-get install -y pgbouncer")


def _ini(*, port: int, server: str, server_port: int, dbname: str, root: Path) -> str:
    return f"""\
[databases]
{dbname} = host={server} port={server_port} dbname={dbname}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {root}/userlist.txt
pool_mode = transaction
default_pool_size = 4
max_client_conn = 200
logfile = {root}/pgbouncer.log
pidfile = {root}/pgbouncer.pid
admin_users = postgres
"""


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = log.read_text(errors="replace") if log.exists() else ""
            raise RuntimeError(f"pgbouncer exited with {proc.returncode}: {text[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"pgbouncer did not listen on 127.0.0.1:{port} within 15 s")


@contextlib.contextmanager
def pgbouncer(dsn: str, *, may_crash: bool = False) -> Iterator[str]:
    """Run a PgBouncer (transaction pooling) in front of ``dsn``'s server; yield its DSN.

    If it exited on its own meanwhile, the end says so with its log's last lines (the tests
    that used it then fail with "connection refused", which does not tell why), unless
    ``may_crash``: PgBouncer 1.18 (Debian 12's) can exit with "FATAL ... disconnect_client():
    bad client state" when a cancel request's client hangs up before the cancel went through
    (pgbouncer#801, fixed by pgbouncer#846), which asyncpg can make happen."""
    binary = find_pgbouncer()
    parts = urlsplit(dsn)
    dbname = parts.path.lstrip("/") or "postgres"
    user = parts.username or "postgres"
    root = Path(tempfile.mkdtemp(prefix="batchworks-pgbouncer-"))
    port = _free_port()
    (root / "userlist.txt").write_text(f'"{user}" ""\n')
    ini = root / "pgbouncer.ini"
    ini.write_text(
        _ini(
            port=port,
            server=parts.hostname or "127.0.0.1",
            server_port=parts.port or 5432,
            dbname=dbname,
            root=root,
        )
    )
    command = [binary, str(ini)]
    if os.geteuid() == 0:  # pgbouncer refuses to run as root
        owner = pwd.getpwnam("postgres")
        for path in (root, *root.iterdir()):
            os.chown(path, owner.pw_uid, owner.pw_gid)
        command = ["runuser", "-u", "postgres", "--", *command]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        _wait_listening(port, proc, root / "pgbouncer.log")
        netloc = f"{user}@127.0.0.1:{port}"
        yield urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
        if proc.poll() is not None and not may_crash:
            log = root / "pgbouncer.log"
            text = log.read_text(errors="replace") if log.exists() else ""
            raise RuntimeError(
                f"pgbouncer exited with {proc.returncode} while the tests used it: {text[-2000:]}"
            )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)


def pgbouncer_or_skip(dsn: str, *, in_ci: bool, may_crash: bool = False) -> Iterator[str]:
    """For fixtures: :func:`pgbouncer`'s DSN; without the binary, skip, or fail under CI."""
    try:
        with pgbouncer(dsn, may_crash=may_crash) as bounced:
            yield bounced
    except PgBouncerMissing as exc:
        if in_ci:
            pytest.fail(f"{exc} (CI=true: .ci/run installs it; PgBouncer tests must not skip)")
        pytest.skip(str(exc))
