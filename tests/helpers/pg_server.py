"""A throw-away PostgreSQL server for the tests: its own cluster in a temporary directory, listening
on 127.0.0.1 and on a Unix socket, password authentication for both, stopped (by process id) when the
test is done.

The NNI experiments of the tests run in private network namespaces (NNI's manager listens on every
interface); a Unix socket is a file, so they reach the server through :attr:`socket_url`.

`.ci/run` installs Debian's postgresql package; the binaries live in /usr/lib/postgresql/<v>/bin.
The server refuses to run as root, so as root it runs as the ``postgres`` user the package creates.
"""
from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path


def pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def available() -> str | None:
    """None when a server can be started here, else why not."""
    if pg_bin("initdb") is None or pg_bin("pg_ctl") is None:
        return "no PostgreSQL server binaries (apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root without a postgres user to run the server as"
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "psycopg2 is not installed (pip install -e '.[test]')"
    return None


class PostgresServer:
    def __init__(self, port: int):
        self.port = port
        self.root = Path(tempfile.mkdtemp(prefix="nni-visplugin-pg-"))
        self.data = self.root / "data"
        self.user, self.database = "nni", "optuna"
        self.password = secrets.token_hex(12)
        self._superuser_password = secrets.token_hex(12)
        self.pid: int | None = None
        self._as = []
        if os.geteuid() == 0:
            self._as = ["runuser", "-u", "postgres", "--"]
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        os.chmod(self.root, 0o700)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    @property
    def socket_url(self) -> str:
        return (f"postgresql+psycopg2://{self.user}:{self.password}@/{self.database}"
                f"?host={self.root}&port={self.port}")

    def _run(self, *cmd: str, env: dict | None = None) -> subprocess.CompletedProcess:
        if env is not None and self._as:  # runuser starts a clean environment: pass the variables through it
            cmd = ("env", *(f"{k}={v}" for k, v in env.items() if k.startswith("PG")), *cmd)
        return subprocess.run([*self._as, *cmd], capture_output=True, text=True, check=True, timeout=120, env=env)

    def start(self) -> "PostgresServer":
        pwfile = self.root / "superuser.pw"
        pwfile.write_text(self._superuser_password + "\n")
        if self._as:
            pw = pwd.getpwnam("postgres")
            os.chown(pwfile, pw.pw_uid, pw.pw_gid)
        self._run(pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=scram-sha-256",
                  f"--pwfile={pwfile}", "-E", "UTF8")
        pwfile.unlink()
        conf = (f"listen_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{self.root}'\n"
                "fsync = off\nmax_connections = 100\n")
        with (self.data / "postgresql.conf").open("a") as f:  # root may write the postgres user's file
            f.write(conf)
        self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-t", "60", "start")
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])
        sql = (f"CREATE ROLE {self.user} LOGIN PASSWORD '{self.password}'; "
               f"CREATE DATABASE {self.database} OWNER {self.user};")
        for statement in sql.split("; "):
            self._run(pg_bin("psql") or "psql", "-h", str(self.root), "-p", str(self.port), "-U", "postgres",
                      "-v", "ON_ERROR_STOP=1", "-c", statement,
                      env={**os.environ, "PGPASSWORD": self._superuser_password})
        return self

    def stop(self) -> None:
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGINT)  # PostgreSQL's "fast" shutdown
                for _ in range(100):
                    os.kill(self.pid, 0)
                    time.sleep(0.1)
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.pid = None
        shutil.rmtree(self.root, ignore_errors=True)
