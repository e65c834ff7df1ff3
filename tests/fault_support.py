"""Servers that fault-injection tests may stop and restart: their own Redis and PostgreSQL.

Never the machine's shared servers (6379, 5432): each test module starts a ``redis-server``
and a PostgreSQL cluster (``initdb``/``pg_ctl``) on free ports in a temporary folder, kills
and restarts them at will, and removes everything on exit, whatever happened.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import redis
from api_support import free_port, wait_until

PG_BIN = (
    Path(sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1])
    if glob.glob("/usr/lib/postgresql/*/bin")
    else None
)
START_TIMEOUT_S = 30.0


def _as_postgres(args: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root; the tests usually run as root.
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


class RedisServer:
    """A ``redis-server`` on 127.0.0.1 with AOF on (as in docker-compose.yml), restartable."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.folder / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "yes",
                "--appendfsync", "everysec",
                "--dir", str(self.folder),
                "--maxmemory-policy", "noeviction",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        try:
            wait_until(lambda: self._answers(client), START_TIMEOUT_S, interval=0.05)
        finally:
            client.close()

    def _answers(self, client: redis.Redis) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"redis-server exited: {(self.folder / 'redis.log').read_text()}")
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    def stop(self, hard: bool = False) -> None:
        """SIGTERM (Redis saves the AOF and exits) or, with ``hard``, SIGKILL (a crash)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def restart(self, hard: bool = False, down_s: float = 1.0) -> None:
        self.stop(hard=hard)
        time.sleep(down_s)
        self.start()

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_connect_timeout=2, socket_timeout=5)


class PostgresCluster:
    """A throw-away PostgreSQL cluster on 127.0.0.1 (trust auth), restartable."""

    def __init__(self) -> None:
        if PG_BIN is None:
            raise RuntimeError("PostgreSQL server binaries not found in /usr/lib/postgresql")
        # Not under pytest's tmp folders: those are root-only, and the server runs as postgres.
        self.folder = Path(tempfile.mkdtemp(prefix="bulkscore-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        self.data = self.folder / "data"
        self.port = free_port()
        self.admin_dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _pg(self, *args: str, timeout: float = 60) -> None:
        assert PG_BIN is not None
        command = _as_postgres([str(PG_BIN / args[0]), *args[1:]])
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {done.stdout}\n{done.stderr}")

    def init(self) -> None:
        self._pg("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} "
            # A worker frozen (SIGSTOP) inside a transaction must not hold its row locks, and
            # so every other worker, forever: the recommended production setting, shortened.
            "-c idle_in_transaction_session_timeout=10s -c fsync=off"
        )
        self._pg(
            "pg_ctl", "-D", str(self.data), "-l", str(self.folder / "pg.log"),
            "-o", options, "-w", "-t", "30", "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """``fast``: a clean shutdown that ends every session; ``immediate``: a crash."""
        if (self.data / "postmaster.pid").exists():
            self._pg("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def restart(self, mode: str = "fast", down_s: float = 1.0) -> None:
        self.stop(mode)
        time.sleep(down_s)
        self.start()

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.admin_dsn, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def remove(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)


@contextmanager
def own_redis(folder: Path) -> Iterator[RedisServer]:
    """A private Redis for the block; killed on exit."""
    server = RedisServer(folder)
    server.start()
    try:
        yield server
    finally:
        server.stop(hard=True)


@contextmanager
def own_postgres() -> Iterator[PostgresCluster]:
    """A private PostgreSQL cluster for the block; stopped and deleted on exit."""
    cluster = PostgresCluster()
    try:
        cluster.init()
        yield cluster
    finally:
        cluster.remove()
