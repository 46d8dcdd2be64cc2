"""Find a PostgreSQL server for the tests, or start a throwaway cluster.

Also usable as a script (``python -m tests.pgserver``) to print the DSN it would use.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator

import asyncpg

LOCAL_DSN = "postgresql://postgres@127.0.0.1:5432/test"


def answers(dsn: str, timeout: float = 3.0) -> str | None:
    """None if a server answers at ``dsn``, else why not."""

    async def probe() -> None:
        conn = await asyncpg.connect(dsn, timeout=timeout)
        await conn.close()

    # In a thread of its own: pytest may call this while an event loop runs in this one.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        try:
            pool.submit(asyncio.run, probe()).result()
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
    return None


def _pg_bin() -> str | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(candidate, "initdb")):
            return candidate
    found = shutil.which("initdb")
    return os.path.dirname(found) if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[str]:
    """Start a PostgreSQL cluster in a temporary directory; yield its DSN; stop it after."""
    bindir = _pg_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL's binaries (initdb, pg_ctl) are not installed")
    root = tempfile.mkdtemp(prefix="batchworks-pg-")
    data = os.path.join(root, "data")
    port = _free_port()
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root: run it as the postgres user
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    run = [*prefix, os.path.join(bindir, "initdb"), "-D", data, "-U", "postgres", "-A", "trust"]
    subprocess.run([*run, "--no-sync"], check=True, capture_output=True)
    ctl = [*prefix, os.path.join(bindir, "pg_ctl"), "-D", data, "-w", "-l", f"{root}/log"]
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run([*ctl, "-o", options, "start"], check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*ctl, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def find_or_start_server() -> Iterator[tuple[str | None, str]]:
    """Yield ``(dsn, "")`` for a server that answers, or ``(None, why)``."""
    env = os.environ.get("BATCHWORKS_TEST_DSN")
    if env:
        failure = answers(env)
        if failure is None:
            yield env, ""
        else:
            yield None, f"BATCHWORKS_TEST_DSN={env} does not answer ({failure})"
        return
    local_failure = answers(LOCAL_DSN)
    if local_failure is None:
        yield LOCAL_DSN, ""
        return
    try:
        cluster = throwaway_cluster()
        dsn = cluster.__enter__()
    except Exception as exc:
        yield None, f"{LOCAL_DSN} does not answer ({local_failure}); no throwaway cluster ({exc})"
        return
    try:
        yield dsn, ""
    finally:
        cluster.__exit__(None, None, None)


if __name__ == "__main__":
    with find_or_start_server() as (dsn, why):
        print(dsn or why)  # noqa: T201
