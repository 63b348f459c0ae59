"""The five local services. Each knows how to check its prerequisites, start, probe and stop."""
from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from vitalstream.settings import Settings
from vitalstream.stack.process import StackError, read_pid, spawn, stop_pid


def _port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _venv_tool(name: str) -> str | None:
    """A console script of this Python environment (moto_server, mlflow), else one on PATH."""
    exe = Path(sys.executable).parent / name
    return str(exe) if exe.exists() else shutil.which(name)


def _redact(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]+@", r"//\1:***@", url)


class Service:
    name = "service"
    start_timeout_s = 90.0

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.stack_dir.resolve()
        self.data_dir = self.root / self.name
        self.log_path = self.root / "logs" / f"{self.name}.log"
        self.pid_file = self.root / "run" / f"{self.name}.pid"

    # --- identity ----------------------------------------------------------------
    @property
    def url(self) -> str:
        raise NotImplementedError

    @property
    def display_url(self) -> str:
        return _redact(self.url)

    def managed_pid(self) -> int | None:
        """The pid of the process this stack started, if it is still running."""
        return read_pid(self.pid_file)

    # --- lifecycle ---------------------------------------------------------------
    def check_prerequisites(self) -> None:
        """Raise StackError naming the fix when something the service needs is missing."""

    def healthy(self) -> bool:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def after_healthy(self) -> list[str]:
        """Idempotent setup once the service answers (databases, buckets); returns notes."""
        return []

    def stop(self) -> bool:
        pid = self.managed_pid()
        if pid is None:
            return False
        stop_pid(pid)
        self.pid_file.unlink(missing_ok=True)
        return True


# --- Kafka -----------------------------------------------------------------------------
KAFKA_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>io.vitalstream.local</groupId><artifactId>kafka-broker</artifactId>
  <version>{version}</version><packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{version}</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-reload4j</artifactId><version>1.7.36</version></dependency>
  </dependencies>
</project>
"""

KAFKA_LOG4J = """log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.state.change.logger=WARN
"""


def java_major_version(java: str = "java") -> int | None:
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2)) if major == 1 and m.group(2) else major


class Kafka(Service):
    """Apache Kafka, single node in KRaft mode, jars resolved from Maven Central and cached."""

    name = "kafka"

    @property
    def url(self) -> str:
        return f"kafka://{self.settings.kafka_bootstrap}"

    @property
    def libs_dir(self) -> Path:
        return self.settings.cache_dir / f"kafka-{self.settings.kafka_version}" / "libs"

    def check_prerequisites(self) -> None:
        major = java_major_version()
        if major is None or major < 17:
            found = "not found" if major is None else f"is {major}"
            raise StackError(f"Java 17+ {found}: apt-get install openjdk-17-jre-headless")
        if not (self.libs_dir / f"kafka_2.13-{self.settings.kafka_version}.jar").exists() and not shutil.which("mvn"):
            raise StackError("Maven not found (needed once to fetch the Kafka broker jars): apt-get install maven")

    def ensure_jars(self) -> None:
        jar = self.libs_dir / f"kafka_2.13-{self.settings.kafka_version}.jar"
        if jar.exists():
            return
        build = self.libs_dir.parent
        build.mkdir(parents=True, exist_ok=True)
        (build / "pom.xml").write_text(KAFKA_POM.format(version=self.settings.kafka_version))
        tmp = build / "libs.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = ["mvn", "-q", "-B", "-f", str(build / "pom.xml"), "dependency:copy-dependencies",
               f"-DoutputDirectory={tmp}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise StackError(f"kafka: resolving broker jars from Maven Central failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        tmp.rename(self.libs_dir)  # atomic: a half-downloaded set is never used

    def _java_cmd(self, main: str, *args: str) -> list[str]:
        return ["java", f"-Xmx{self.settings.kafka_heap}", "-XX:+UseG1GC",
                f"-Dlog4j.configuration=file:{self.data_dir / 'log4j.properties'}",
                "-cp", f"{self.libs_dir}/*", main, *args]

    def _write_config(self) -> Path:
        s = self.settings
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "log4j.properties").write_text(KAFKA_LOG4J)
        props = self.data_dir / "server.properties"
        props.write_text("\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@{s.host}:{s.kafka_controller_port}",
            f"listeners=PLAINTEXT://{s.host}:{s.kafka_port},CONTROLLER://{s.host}:{s.kafka_controller_port}",
            f"advertised.listeners=PLAINTEXT://{s.host}:{s.kafka_port}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            f"log.dirs={self.data_dir / 'data'}",
            f"num.partitions={s.topic_partitions}",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=8",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "log.retention.hours=-1",
            "message.max.bytes=2097152",
            "",
        ]))
        return props

    def start(self) -> None:
        self.ensure_jars()
        props = self._write_config()
        if not (self.data_dir / "data" / "meta.properties").exists():
            cluster_id = subprocess.run(self._java_cmd("kafka.tools.StorageTool", "random-uuid"),
                                        capture_output=True, text=True).stdout.strip().splitlines()[-1]
            fmt = subprocess.run(self._java_cmd("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)),
                                 capture_output=True, text=True)
            if fmt.returncode != 0:
                raise StackError(f"kafka: formatting KRaft storage failed: {fmt.stdout}{fmt.stderr}")
        spawn(self._java_cmd("kafka.Kafka", str(props)), log_path=self.log_path, pid_file=self.pid_file)

    def healthy(self) -> bool:
        host, port = self.settings.kafka_bootstrap.split(",")[0].rsplit(":", 1)
        if not _port_open(host, int(port)):
            return False
        import asyncio

        from aiokafka.admin import AIOKafkaAdminClient

        async def probe() -> bool:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.kafka_bootstrap, request_timeout_ms=5000)
            await admin.start()
            try:
                await admin.list_topics()
                return True
            finally:
                await admin.close()

        return asyncio.run(probe())

    def after_healthy(self) -> list[str]:
        from streams.topics import ensure_topics

        result = ensure_topics(self.settings)
        created = [t for t, state in result.items() if state == "created"]
        return [f"topics: {len(result)} present" + (f", created {', '.join(created)}" if created else "")]


# --- Redis -----------------------------------------------------------------------------
# The online store's AOF rewrite threshold, in the local stack and in docker-compose.yml.
AOF_REWRITE_MIN_SIZE = "1gb"


class Redis(Service):
    name = "redis"
    start_timeout_s = 30.0

    @property
    def url(self) -> str:
        return self.settings.redis_url

    def check_prerequisites(self) -> None:
        if not shutil.which("redis-server"):
            raise StackError("redis-server not found: apt-get install redis-server")

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        port = urlsplit(self.url).port or self.settings.redis_port
        cmd = ["redis-server", "--port", str(port), "--bind", self.settings.host, "--dir", str(self.data_dir),
               "--daemonize", "no", "--save", "", "--appendonly", "yes",
               # The online store writes ~140-field hashes; above 128 fields Redis uses a real hash table
               # instead of a listpack it must scan on every HSET (2-3x the write rate, see docs/benchmarks.md).
               "--hash-max-listpack-entries", "128",
               # Its append-only file is nearly all overwrites of one hash per patient (~7 KB a vector): ~14 MB/s
               # at 2,000 vectors/s. Redis's default (rewrite from 64 MB) forked and dumped the dataset every
               # ~4 s, and p99 latency at 2,000 events/s tripled (docs/benchmarks.md, session 11).
               "--auto-aof-rewrite-min-size", AOF_REWRITE_MIN_SIZE]
        spawn(cmd, log_path=self.log_path, pid_file=self.pid_file)

    def healthy(self) -> bool:
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()


# --- PostgreSQL ------------------------------------------------------------------------
def _postgres_bindir() -> Path | None:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name),
                        reverse=True) if Path("/usr/lib/postgresql").exists() else []
    if candidates:
        return candidates[0].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class Postgres(Service):
    name = "postgres"
    start_timeout_s = 60.0

    @property
    def url(self) -> str:
        return self.settings.postgres_dsn

    @property
    def _run_as(self) -> str | None:
        # PostgreSQL refuses to run as root; use the Debian package's system user.
        return "postgres" if os.geteuid() == 0 else None

    def check_prerequisites(self) -> None:
        if _postgres_bindir() is None:
            raise StackError("PostgreSQL server not found: apt-get install postgresql")
        if self._run_as:
            try:
                pwd.getpwnam(self._run_as)
            except KeyError:
                raise StackError("running as root needs the 'postgres' system user: apt-get install postgresql")

    def _as_user(self, cmd: list[str]) -> list[str]:
        return ["runuser", "-u", self._run_as, "--", *cmd] if self._run_as else cmd

    def _pgdata(self) -> Path:
        pgdata = self.data_dir / "data"
        if self._run_as and pgdata.resolve() == pgdata:
            # The postgres user must be able to reach the data dir; if a parent (e.g. /root) is
            # private, keep the data in /var/lib and link it into the stack dir.
            probe = subprocess.run(self._as_user(["test", "-x", str(self.data_dir.parent)]))
            if probe.returncode != 0:
                import hashlib

                alt = Path("/var/lib/vitalstream") / hashlib.sha1(str(self.data_dir).encode()).hexdigest()[:12]
                alt.mkdir(parents=True, exist_ok=True)
                shutil.chown(alt, self._run_as, self._run_as)
                self.data_dir.mkdir(parents=True, exist_ok=True)
                if not pgdata.is_symlink():
                    pgdata.symlink_to(alt / "data")
        return pgdata

    def start(self) -> None:
        bindir = _postgres_bindir()
        assert bindir is not None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        pgdata = self._pgdata()
        sock_dir = pgdata.parent if not pgdata.is_symlink() else Path(os.readlink(pgdata)).parent
        if self._run_as:
            for p in (self.data_dir, sock_dir):
                shutil.chown(p, self._run_as, self._run_as)
        if not (pgdata / "PG_VERSION").exists():
            pwfile = sock_dir / ".pwfile"
            pwfile.write_text(self.settings.postgres_password.get_secret_value())
            if self._run_as:
                shutil.chown(pwfile, self._run_as, self._run_as)
            os.chmod(pwfile, 0o600)
            init = subprocess.run(self._as_user([str(bindir / "initdb"), "-D", str(pgdata), "-U", self.settings.postgres_user,
                                                 f"--pwfile={pwfile}", "--auth-host=scram-sha-256", "--auth-local=peer",
                                                 "-E", "UTF8", "--locale=C"]), capture_output=True, text=True)
            pwfile.unlink(missing_ok=True)
            if init.returncode != 0:
                raise StackError(f"postgres: initdb failed: {init.stderr[-2000:]}")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.touch()
        if self._run_as:
            shutil.chown(self.log_path, self._run_as, self._run_as)
        cmd = [str(bindir / "postgres"), "-D", str(pgdata), "-p", str(self.settings.postgres_port),
               "-c", f"listen_addresses={self.settings.host}", "-c", f"unix_socket_directories={sock_dir}",
               "-c", "max_connections=200", "-c", "shared_buffers=256MB", "-c", "fsync=on"]
        spawn(cmd, log_path=self.log_path, pid_file=self.pid_file, user=self._run_as)

    def stop(self) -> bool:
        pid = self.managed_pid()
        if pid is None:
            return False
        import signal

        os.kill(pid, signal.SIGINT)  # "fast" shutdown: roll back open transactions, exit cleanly
        from vitalstream.stack.process import pid_alive, wait_until

        if not wait_until(lambda: not pid_alive(pid), timeout_s=30):
            stop_pid(pid)
        self.pid_file.unlink(missing_ok=True)
        return True

    def _connect(self, dbname: str):
        import psycopg2

        return psycopg2.connect(self.settings.postgres_url(dbname), connect_timeout=3)

    def healthy(self) -> bool:
        import psycopg2

        try:
            conn = psycopg2.connect(self.url, connect_timeout=3)
        except psycopg2.OperationalError as exc:
            if "does not exist" not in str(exc):
                raise
            conn = self._connect("postgres")  # server up, databases not created yet
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                return cur.fetchone() == (1,)
        finally:
            conn.close()

    def after_healthy(self) -> list[str]:
        conn = self._connect("postgres")
        conn.autocommit = True
        created = []
        try:
            with conn.cursor() as cur:
                for db in (self.settings.postgres_db, self.settings.postgres_mlflow_db):
                    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
                    if cur.fetchone() is None:
                        cur.execute(f'CREATE DATABASE "{db}"')
                        created.append(db)
        finally:
            conn.close()
        return [f"databases: {self.settings.postgres_db}, {self.settings.postgres_mlflow_db}"
                + (f" (created {', '.join(created)})" if created else "")]


# --- S3 --------------------------------------------------------------------------------
class ObjectStore(Service):
    """An S3-compatible server: moto in server mode (Apache-2.0). MinIO in docker-compose."""

    name = "s3"
    start_timeout_s = 60.0

    @property
    def url(self) -> str:
        return self.settings.s3_endpoint_url or f"http://{self.settings.host}:{self.settings.s3_port}"

    def check_prerequisites(self) -> None:
        if _venv_tool("moto_server") is None:
            raise StackError("moto_server not found: pip install 'moto[server]' (or the project's [test] extra)")

    def start(self) -> None:
        port = urlsplit(self.url).port or self.settings.s3_port
        spawn([_venv_tool("moto_server"), "-H", self.settings.host, "-p", str(port)],
              log_path=self.log_path, pid_file=self.pid_file)

    def client(self):
        import boto3

        s = self.settings
        return boto3.client("s3", endpoint_url=self.url, region_name=s.s3_region,
                            aws_access_key_id=s.s3_access_key_id.get_secret_value(),
                            aws_secret_access_key=s.s3_secret_access_key.get_secret_value())

    def healthy(self) -> bool:
        with urllib.request.urlopen(self.url, timeout=3) as resp:  # noqa: S310 (loopback URL from settings)
            return resp.status < 500

    def after_healthy(self) -> list[str]:
        bucket = self.settings.lake_bucket
        if not bucket:
            return []
        client = self.client()
        names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if bucket not in names:
            client.create_bucket(Bucket=bucket)
            return [f"bucket {bucket} created"]
        return [f"bucket {bucket} present"]


# --- MLflow ----------------------------------------------------------------------------
class MLflow(Service):
    name = "mlflow"
    start_timeout_s = 180.0

    @property
    def url(self) -> str:
        return self.settings.mlflow_tracking_uri

    def check_prerequisites(self) -> None:
        if _venv_tool("mlflow") is None:
            raise StackError("mlflow not found: pip install mlflow (installed with the project)")

    def start(self) -> None:
        s = self.settings
        backend = s.postgres_url(s.postgres_mlflow_db).replace("postgresql://", "postgresql+psycopg2://", 1)
        port = urlsplit(self.url).port or s.mlflow_port
        env = {**s.s3_env(), "MLFLOW_BACKEND_STORE_URI": backend}  # via env: keeps the password out of `ps`
        cmd = [_venv_tool("mlflow"), "server", "--host", s.host, "--port", str(port),
               "--artifacts-destination", s.mlflow_artifact_uri, "--workers", "1"]
        spawn(cmd, log_path=self.log_path, pid_file=self.pid_file, env=env, cwd=self.root)

    def healthy(self) -> bool:
        with urllib.request.urlopen(self.url.rstrip("/") + "/health", timeout=3) as resp:  # noqa: S310
            return resp.status == 200


def all_services(settings: Settings) -> list[Service]:
    """In start order: MLflow needs PostgreSQL and S3."""
    return [Kafka(settings), Redis(settings), Postgres(settings), ObjectStore(settings), MLflow(settings)]
