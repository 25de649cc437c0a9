"""A throwaway PostgreSQL server for the tests: its own data dir in a temp dir, a free loopback port,
a role with a random password, stopped and deleted at the end.

Debian's postgresql package provides the binaries; on a machine without them, as root (CI), it is
installed with apt-get. PostgreSQL refuses to run as root, so as root the server runs as the
package's `postgres` user (runuser). Used by the `postgres_url` fixture in conftest.py.
"""
from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

SERVER_USER = "postgres"  # created by Debian's postgresql-common


class PgUnavailable(RuntimeError):
    """No PostgreSQL server binaries here and no way to install them."""


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def ensure_binaries() -> Path:
    """The directory of initdb/pg_ctl, installing Debian's postgresql package first if root can."""
    bin_dir = _bin_dir()
    if bin_dir is not None:
        return bin_dir
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise PgUnavailable("PostgreSQL server binaries not found (install Debian's `postgresql` package)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                                                "postgresql"]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode:
            raise PgUnavailable(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    bin_dir = _bin_dir()
    if bin_dir is None:
        raise PgUnavailable("apt-get installed postgresql but initdb is still not found")
    return bin_dir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    """start() -> a postgresql:// URL for a fresh database owned by a fresh role; stop() removes everything."""

    def __init__(self) -> None:
        self.bin_dir = ensure_binaries()
        self.root = Path(tempfile.mkdtemp(prefix="evolve-pg-"))
        self.port = _free_port()
        self.password = secrets.token_hex(12)
        self.as_root = os.geteuid() == 0

    def _run(self, *cmd: str) -> subprocess.CompletedProcess:
        argv = [str(self.bin_dir / cmd[0]), *cmd[1:]] if (self.bin_dir / cmd[0]).exists() else list(cmd)
        if self.as_root:
            argv = ["runuser", "-u", SERVER_USER, "--", *argv]
        r = subprocess.run(argv, capture_output=True, text=True, cwd=self.root)
        if r.returncode:
            raise RuntimeError(f"{cmd[0]} failed ({r.returncode}): {(r.stdout + r.stderr).strip()[-800:]}")
        return r

    def start(self) -> str:
        if self.as_root:
            shutil.chown(self.root, SERVER_USER)
        self.root.chmod(0o700)
        data = self.root / "data"
        self._run("initdb", "-D", str(data), "-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256",
                  "--no-sync")
        self._run("pg_ctl", "-D", str(data), "-l", str(self.root / "server.log"), "-w", "-t", "60", "start",
                  "-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                        f"-c max_connections=100")
        sql = f"CREATE ROLE evolve LOGIN PASSWORD '{self.password}'; CREATE DATABASE evolve OWNER evolve;"
        for stmt in sql.split("; "):
            self._run("psql", "-h", str(self.root), "-p", str(self.port), "-U", "postgres", "-d", "postgres",
                      "-v", "ON_ERROR_STOP=1", "-q", "-c", stmt)
        self.url = f"postgresql://evolve:{self.password}@127.0.0.1:{self.port}/evolve"
        return self.url

    def restart(self) -> None:
        """pg_ctl restart -m fast, as an administrator or a failover does: every connection is closed, the server
        is down for a moment, then back on the same port."""
        self._run("pg_ctl", "-D", str(self.root / "data"), "-l", str(self.root / "server.log"), "-m", "fast", "-w",
                  "-t", "60", "restart")  # -l: the new server must not hold our pipe open

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")
        except RuntimeError:
            pass  # never started, or already gone
        shutil.rmtree(self.root, ignore_errors=True)
