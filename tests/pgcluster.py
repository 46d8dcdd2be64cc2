"""PostgreSQL clusters the tests start and break themselves: a server that comes up late, a
primary with a streaming standby that is promoted when the primary dies.

Everything lives in a temporary directory and listens on free ports chosen at run time, so
runs of the suite side by side never meet. The binaries are those :mod:`tests.pgserver` finds
(``/usr/lib/postgresql/*/bin``); as root, every command runs as the postgres user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.pgserver import _free_port, _pg_bin

__all__ = ["STANDBY", "Cluster", "clusters", "free_port", "primary_and_standby"]

free_port = _free_port


def _as_postgres() -> list[str]:
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def _bindir() -> str:
    bindir = _pg_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL's binaries (initdb, pg_ctl) are not installed")
    return bindir


@dataclass
class Cluster:
    """One data directory and the server running on it (or not)."""

    root: Path
    name: str
    port: int = field(default_factory=_free_port)

    @property
    def data(self) -> Path:
        return self.root / self.name

    @property
    def log(self) -> Path:
        return self.root / f"{self.name}.log"

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def socket_dsn(self) -> str:
        """Through the Unix socket only (in :attr:`root`), for a server not on TCP yet."""
        return f"postgresql://postgres@/postgres?host={self.root}&port={self.port}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        tool, *rest = args
        command = [*_as_postgres(), os.path.join(_bindir(), tool), *rest]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{tool} failed: {result.stdout}{result.stderr}\n{log}")
        return result

    def initdb(self, *settings: str) -> None:
        """A new cluster; ``settings`` are lines appended to its postgresql.conf."""
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("".join(f"{line}\n" for line in settings))
        with (self.data / "pg_hba.conf").open("a") as hba:
            hba.write("host replication all 127.0.0.1/32 trust\n")

    def basebackup(self, primary: Cluster, *, app_name: str) -> None:
        """This cluster as a streaming standby of ``primary`` (``pg_basebackup -R``)."""
        self._run(
            "pg_basebackup",
            "-D",
            str(self.data),
            "-h",
            "127.0.0.1",
            "-p",
            str(primary.port),
            "-U",
            "postgres",
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
            "-d",
            f"application_name={app_name}",
        )

    def start(self, *, tcp: bool = True) -> None:
        """Start the server and wait until it accepts connections; with ``tcp=False`` on its
        Unix socket only (as the official docker image does while it initializes)."""
        listen = "127.0.0.1" if tcp else "''"
        options = f"-p {self.port} -k {self.root} -c listen_addresses={listen}"
        self._run("pg_ctl", "-D", str(self.data), "-w", "-l", str(self.log), "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-m", mode, "stop", check=False)

    def kill(self) -> None:
        """SIGKILL the postmaster (a crashed host); its children exit on their own."""
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)

    def promote(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "promote")


STANDBY = "standby1"  # the standby's application_name, as synchronous_standby_names names it


def primary_and_standby(
    root: Path,
    *,
    synchronous: bool = True,
    primary_port: int | None = None,
    replication_port: int | None = None,
) -> tuple[Cluster, Cluster]:
    """A primary and a streaming standby of it (``pg_basebackup -R``), both started; with
    ``synchronous``, a commit returns only once the standby has flushed it. The standby does
    not wait for a standby of its own once promoted.

    ``primary_port`` fixes the primary's port (default: a free one) and ``replication_port``
    is where the standby streams from (default: the primary's), so that a proxy the test
    started in front of the primary can hold the replication stream back."""
    primary = Cluster(root, "primary", **({"port": primary_port} if primary_port else {}))
    sync = f"synchronous_standby_names = '{STANDBY}'" if synchronous else ""
    primary.initdb("wal_level = replica", "max_wal_senders = 4", "fsync = off", sync)
    primary.start()
    standby = Cluster(root, "standby")
    standby.basebackup(primary, app_name=STANDBY)
    upstream = replication_port or primary.port
    conninfo = f"host=127.0.0.1 port={upstream} user=postgres application_name={STANDBY}"
    with (standby.data / "postgresql.auto.conf").open("a") as conf:
        conf.write(f"primary_conninfo = '{conninfo}'\nsynchronous_standby_names = ''\n")
        # Retrying the lost primary every 5 s (the default) can hold a promotion that long.
        conf.write("wal_retrieve_retry_interval = '100ms'\n")
    standby.start()
    return primary, standby


@contextlib.contextmanager
def clusters() -> Iterator[Path]:
    """A temporary directory for :class:`Cluster` data, owned by postgres; every server still
    running in it is stopped at the end. Raises RuntimeError without PostgreSQL's binaries."""
    _bindir()
    root = Path(tempfile.mkdtemp(prefix="batchworks-cluster-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
    try:
        yield root
    finally:
        for pidfile in root.glob("*/postmaster.pid"):
            Cluster(root, pidfile.parent.name).stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
