"""A throwaway PostgreSQL server for tests and benchmarks: Debian's `postgresql` binaries, a cluster in a temp folder.

    with Cluster.start() as pg:           # initdb + pg_ctl start on a free localhost port
        env = pg.create_database("runs")  # KTO_PG_HOST, KTO_PG_PORT, ...: what dagster_postgres.yaml reads
    # stopped (pg_ctl stop, then the postmaster's pid checked gone) and its folder removed

PostgreSQL refuses to run as root, so under root the server runs as the `postgres` user (Debian's package
creates it), else `nobody`; its folder is created for that user. It listens on 127.0.0.1 with a random password
(scram-sha-256), as a real server would; its unix socket, in its folder, is trusted for the admin tools.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from kto_pipeline_tests.procs import free_ports

SUPERUSER = "kto"
# What the instance config for PostgreSQL (kto_pipeline/dagster_postgres.yaml) reads from the environment.
PG_VARS = ("KTO_PG_HOST", "KTO_PG_PORT", "KTO_PG_USER", "KTO_PG_PASSWORD", "KTO_PG_DB")


def find_bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/<major>/bin holding initdb and pg_ctl (Debian does not put them on PATH)."""
    found = [
        Path(d)
        for d in glob.glob("/usr/lib/postgresql/*/bin")
        if os.access(Path(d) / "initdb", os.X_OK) and os.access(Path(d) / "pg_ctl", os.X_OK)
    ]
    found.sort(key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0)
    if found:
        return found[-1]
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path and shutil.which("initdb") else None


def _server_user() -> str | None:
    """None: run as ourselves; under root, a user PostgreSQL accepts."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists to run PostgreSQL as")


class Cluster:
    def __init__(self, bin_dir: Path, root: Path, port: int, user: str | None):
        self.bin_dir, self.root, self.port, self.user = bin_dir, root, port, user
        self.data, self.log = root / "data", root / "server.log"
        self.password = secrets.token_urlsafe(16)

    def _run(self, tool: str, *args: str, timeout: float = 120) -> str:
        kw = {"user": self.user, "group": pwd.getpwnam(self.user).pw_gid, "extra_groups": []} if self.user else {}
        proc = subprocess.run(
            [str(self.bin_dir / tool), *args], cwd=self.root, capture_output=True, text=True, timeout=timeout, **kw
        )
        if proc.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{tool} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}{log}")
        return proc.stdout

    @classmethod
    def start(cls, bin_dir: Path | None = None) -> Cluster:
        bin_dir = bin_dir or find_bin_dir()
        if bin_dir is None:
            raise FileNotFoundError(
                "no PostgreSQL server binaries (initdb, pg_ctl) under /usr/lib/postgresql/*/bin "
                "or on PATH: apt-get install postgresql"
            )
        user = _server_user()
        root = Path(tempfile.mkdtemp(prefix="kto-pg-"))
        if user:
            pw = pwd.getpwnam(user)
            os.chown(root, pw.pw_uid, pw.pw_gid)
        cluster = cls(bin_dir, root, free_ports(1)[0], user)
        try:
            # fsync off: a throwaway cluster; it changes durability after a crash, not locking or isolation
            pwfile = root / "pwfile"
            pwfile.write_text(cluster.password + "\n")
            if user:
                os.chown(pwfile, pwd.getpwnam(user).pw_uid, -1)
            cluster._run(
                "initdb",
                "-D",
                str(cluster.data),
                "-U",
                SUPERUSER,
                f"--pwfile={pwfile}",
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                "-E",
                "UTF8",
                "--no-sync",
            )
            pwfile.unlink()
            opts = f"-p {cluster.port} -c listen_addresses=127.0.0.1 -k {root} -c fsync=off -c max_connections=200"
            cluster._run("pg_ctl", "-D", str(cluster.data), "-l", str(cluster.log), "-o", opts, "-w", "start")
        except BaseException:
            cluster.stop()
            raise
        return cluster

    @property
    def pid(self) -> int | None:
        pidfile = self.data / "postmaster.pid"
        return int(pidfile.read_text().split()[0]) if pidfile.exists() else None

    def create_database(self, name: str) -> dict[str, str]:
        """A new database; the environment that points dagster_postgres.yaml at it."""
        self._run("createdb", "-h", str(self.root), "-p", str(self.port), "-U", SUPERUSER, name)
        return dict(zip(PG_VARS, ("127.0.0.1", str(self.port), SUPERUSER, self.password, name)))

    def stop(self) -> None:
        """Stop the server (fast shutdown: open connections are cut) and remove its folder."""
        pid = self.pid
        if pid is not None:
            try:
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")
            finally:
                for _ in range(100):  # pg_ctl -w waits for the pid file; make sure the postmaster is gone too
                    if not alive(pid):
                        break
                    time.sleep(0.1)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


REPO = Path(__file__).resolve().parent.parent
INSTANCE_YAML = {
    "sqlite": REPO / "kto_pipeline" / "dagster.yaml",
    "postgres": REPO / "kto_pipeline" / "dagster_postgres.yaml",
}


class InstanceHomes:
    """Fresh DAGSTER_HOMEs on one storage: the shipped dagster.yaml (SQLite under the home) or
    dagster_postgres.yaml pointed at a new database of one throwaway cluster per home.

        with InstanceHomes("postgres") as homes:
            env = homes.new(home)   # writes home/dagster.yaml; env: DAGSTER_HOME and what the yaml reads
    """

    def __init__(self, storage: str, cluster: Cluster | None = None):
        """cluster: a running one to create the databases in (left running); None: start one, stop it after."""
        if storage not in INSTANCE_YAML:
            raise ValueError(f"storage {storage!r}: use one of {sorted(INSTANCE_YAML)}")
        self.storage, self.cluster, self._own = storage, cluster, cluster is None

    def __enter__(self) -> InstanceHomes:
        if self.storage == "postgres" and self.cluster is None:
            self.cluster = Cluster.start()
        return self

    def new(self, home: Path) -> dict[str, str]:
        home.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(INSTANCE_YAML[self.storage], home / "dagster.yaml")
        env = {"DAGSTER_HOME": str(home)}
        if self.storage == "postgres":
            env.update(self.cluster.create_database(f"dagster_{uuid.uuid4().hex[:12]}"))
        return env

    def __exit__(self, *exc) -> None:
        if self.cluster is not None and self._own:
            self.cluster.stop()
