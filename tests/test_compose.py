"""Static checks of docker-compose.yml and the files under deploy/.

There is no Docker engine on the dev machines, so the compose file is only
parsed (yaml.safe_load), never run. Each check is a function returning the
problems it finds; the tests assert the real files have none, and a few tests
also feed a deliberately broken copy to prove the check can fail.
"""
from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import pytest
import yaml

from vitalstream.settings import Settings
from vitalstream.stack.services import AOF_REWRITE_MIN_SIZE

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
ENV_EXAMPLE = DEPLOY / ".env.example"

REQUIRED_SERVICES = {
    "kafka", "redis", "postgres", "minio", "minio-init",
    "mlflow", "worker", "api", "prometheus", "grafana",
}
ONE_SHOT = {"minio-init"}
VAR_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?+][^}]*)?\}")
REQUIRED_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):?\?[^}]*\}")
SECRET_KEY = re.compile(r"PASSWORD|SECRET|API_KEYS|TOKEN|CREDENTIAL", re.IGNORECASE)
ANY_REF = re.compile(r"\$?\$\{[^}]*\}")  # ${VAR...} or $${VAR} (expanded in the container)
URL_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/@\s\"':]*:([^/@\s\"']+)@", re.IGNORECASE)


# --- helpers ------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose() -> dict:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


def services(c: dict) -> dict[str, dict]:
    return c["services"]


def env_of(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):  # ["KEY=value", ...]
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def depends_of(svc: dict) -> dict:
    dep = svc.get("depends_on") or {}
    if isinstance(dep, list):  # short form: only "service_started"
        return {name: {"condition": "service_started"} for name in dep}
    return dep


def command_str(svc: dict, key: str = "command") -> str:
    cmd = svc.get(key) or ""
    return " ".join(cmd) if isinstance(cmd, list) else str(cmd)


def all_strings(node) -> list[str]:
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in all_strings(k) + all_strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in all_strings(v)]
    return [node] if isinstance(node, str) else []


def default_of(field: str):
    return Settings.model_fields[field].default


def container_port(spec) -> int:
    """'${ADDR:-127.0.0.1}:6380:6379' -> 6379, {'target': 6379} -> 6379."""
    if isinstance(spec, dict):
        return int(spec["target"])
    return int(str(spec).rsplit(":", 1)[-1].split("/")[0])


def host_port(spec) -> int:
    if isinstance(spec, dict):
        return int(spec["published"])
    parts = VAR_REF.sub("ADDR", str(spec)).split(":")
    assert len(parts) == 3, f"port {spec!r} should be ADDR:HOST:CONTAINER"
    return int(parts[1])


def bind_mounts(svc: dict) -> list[str]:
    out = []
    for v in svc.get("volumes") or []:
        src = v["source"] if isinstance(v, dict) else str(v).split(":", 1)[0]
        if src.startswith((".", "/")):
            out.append(src)
    return out


def named_volumes(svc: dict) -> dict[str, str]:
    """volume name -> mount target."""
    out = {}
    for v in svc.get("volumes") or []:
        if isinstance(v, dict):
            if v.get("type", "volume") == "volume":
                out[v["source"]] = v["target"]
            continue
        parts = str(v).split(":")
        if not parts[0].startswith((".", "/")) and len(parts) >= 2:
            out[parts[0]] = parts[1]
    return out


# --- checks -------------------------------------------------------------------

def healthcheck_problems(c: dict) -> list[str]:
    problems = []
    for name, svc in services(c).items():
        if name in ONE_SHOT:
            continue
        hc = svc.get("healthcheck")
        if not hc or hc.get("disable") or not hc.get("test") or hc["test"] in (["NONE"], "NONE"):
            problems.append(f"{name}: no healthcheck")
    return problems


def depends_problems(c: dict) -> list[str]:
    problems = []
    svcs = services(c)
    for name, svc in svcs.items():
        for dep, spec in depends_of(svc).items():
            if dep not in svcs:
                problems.append(f"{name}: depends on unknown service {dep}")
                continue
            cond = (spec or {}).get("condition", "service_started")
            if svcs[dep].get("healthcheck"):
                want = "service_healthy"
            elif dep in ONE_SHOT:
                want = "service_completed_successfully"
            else:
                want = cond
            if cond != want:
                problems.append(f"{name} -> {dep}: condition {cond}, want {want}")
    return problems


def settings_env_problems(c: dict) -> list[str]:
    fields = {f"VITALSTREAM_{f.upper()}" for f in Settings.model_fields}
    problems = []
    for name, svc in services(c).items():
        for key in env_of(svc):
            if key.upper().startswith("VITALSTREAM_") and key not in fields:
                problems.append(f"{name}: {key} is not a Settings field")
    for text in all_strings(c):  # interpolation variables too
        for var in VAR_REF.findall(text):
            if var.upper().startswith("VITALSTREAM_") and var not in fields:
                problems.append(f"${{{var}}} is not a Settings field")
    return problems


def secret_problems(c: dict) -> list[str]:
    problems = []
    for name, svc in services(c).items():
        for key, value in env_of(svc).items():
            if SECRET_KEY.search(key) and not REQUIRED_REF.fullmatch(value.strip()):
                problems.append(f"{name}: {key} must be a required ${{VAR:?...}} reference, got {value!r}")
    for text in all_strings(c):
        for m in URL_PASSWORD.finditer(ANY_REF.sub("VARREF", text)):
            if m.group(1) != "VARREF":
                problems.append(f"plaintext password in URL {text!r}")
    return problems


# --- tests --------------------------------------------------------------------

def test_compose_spec_without_version_key(compose):
    assert "version" not in compose


def test_required_services_present(compose):
    missing = REQUIRED_SERVICES - set(services(compose))
    assert not missing, f"missing services: {sorted(missing)}"


def test_every_long_running_service_has_a_healthcheck(compose):
    assert healthcheck_problems(compose) == []
    broken = copy.deepcopy(compose)
    del broken["services"]["redis"]["healthcheck"]
    assert healthcheck_problems(broken) == ["redis: no healthcheck"]


def test_depends_on_waits_for_health(compose):
    assert depends_problems(compose) == []
    broken = copy.deepcopy(compose)
    broken["services"]["worker"]["depends_on"]["kafka"] = {"condition": "service_started"}
    broken["services"]["api"]["depends_on"] = list(broken["services"]["api"]["depends_on"])
    problems = depends_problems(broken)
    assert any(p.startswith("worker -> kafka") for p in problems)
    assert any(p.startswith("api -> redis") for p in problems)


@pytest.mark.parametrize(
    "service, needs",
    [
        ("worker", {"kafka", "redis", "minio", "minio-init"}),
        ("api", {"redis", "postgres", "mlflow"}),
        ("mlflow", {"postgres", "minio"}),
        ("minio-init", {"minio"}),
    ],
)
def test_dependency_graph(compose, service, needs):
    assert needs <= set(depends_of(services(compose)[service]))


def test_vitalstream_env_vars_are_settings_fields(compose):
    assert settings_env_problems(compose) == []
    broken = copy.deepcopy(compose)
    broken["services"]["worker"]["environment"]["VITALSTREAM_KAFKA_BOOTSTRAP_SERVERS"] = "kafka:9092"
    assert settings_env_problems(broken) == ["worker: VITALSTREAM_KAFKA_BOOTSTRAP_SERVERS is not a Settings field"]


@pytest.mark.parametrize("service", ["worker", "api"])
def test_app_env_wiring(compose, service):
    env = env_of(services(compose)[service])
    assert env["VITALSTREAM_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert env["VITALSTREAM_REDIS_URL"] == "redis://redis:6379/0"
    assert env["VITALSTREAM_LAKE_URI"] == "s3://vitalstream-lake"
    assert env["VITALSTREAM_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert env["VITALSTREAM_MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["VITALSTREAM_MLFLOW_ARTIFACT_URI"] == "s3://vitalstream-lake/mlflow"
    assert env["VITALSTREAM_TABLE_STORE"] == "rocksdb://"
    assert env["VITALSTREAM_METRICS_PORT"] == "9108"
    assert env["VITALSTREAM_POSTGRES_DSN"].startswith("postgresql://")
    assert env["VITALSTREAM_POSTGRES_DSN"].endswith("@postgres:5432/vitalstream")
    for key in ("VITALSTREAM_POSTGRES_USER", "VITALSTREAM_POSTGRES_PASSWORD", "VITALSTREAM_HOST",
                "VITALSTREAM_S3_ACCESS_KEY_ID", "VITALSTREAM_S3_SECRET_ACCESS_KEY", "VITALSTREAM_API_KEYS"):
        assert env.get(key), f"{service}: {key} not set"


def test_env_values_parse_with_settings(compose, monkeypatch):
    """The wired values (secrets substituted) must build a valid Settings object."""
    fake = {"POSTGRES_PASSWORD": "pw", "S3_ACCESS_KEY_ID": "app", "S3_SECRET_ACCESS_KEY": "s3cret-s3cret",
            "API_KEYS": '["k1", "k2"]'}

    def substitute(m: re.Match) -> str:
        if m.group(1) in fake:
            return fake[m.group(1)]
        assert ":-" in m.group(0), f"required variable {m.group(1)} has no test value"
        return m.group(0).split(":-", 1)[1][:-1]

    def interpolate(value: str) -> str:
        return VAR_REF.sub(substitute, value)

    for key in list(os.environ):
        if key.startswith("VITALSTREAM_"):
            monkeypatch.delenv(key)
    for key, value in env_of(services(compose)["worker"]).items():
        monkeypatch.setenv(key, interpolate(value))
    s = Settings(_env_file=None)
    assert s.kafka_bootstrap == "kafka:9092"
    assert s.postgres_dsn == "postgresql://vitalstream:pw@postgres:5432/vitalstream"
    assert [k.get_secret_value() for k in s.api_keys] == ["k1", "k2"]
    assert s.s3_secret_access_key.get_secret_value() == "s3cret-s3cret"
    assert s.metrics_port == 9108 and s.table_store == "rocksdb://"
    assert s.lake_bucket == "vitalstream-lake"


def test_no_plaintext_secrets(compose):
    assert secret_problems(compose) == []
    broken = copy.deepcopy(compose)
    broken["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] = "hunter2"
    broken["services"]["api"]["environment"]["VITALSTREAM_POSTGRES_DSN"] = "postgresql://u:hunter2@postgres/db"
    problems = secret_problems(broken)
    assert any("POSTGRES_PASSWORD" in p for p in problems)
    assert any("plaintext password in URL" in p for p in problems)


def test_env_example_lists_every_required_variable(compose):
    required = {var for text in all_strings(compose) for var in REQUIRED_REF.findall(text)}
    assert {"POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "S3_SECRET_ACCESS_KEY", "API_KEYS"} <= required
    example = ENV_EXAMPLE.read_text()
    assigned = dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", example, re.MULTILINE))
    missing = required - set(assigned)
    assert not missing, f"deploy/.env.example lacks {sorted(missing)}"
    for var in required:
        if SECRET_KEY.search(var):
            assert assigned[var].strip() == "", f".env.example must not carry a value for secret {var}"


def test_referenced_files_exist(compose):
    referenced = []
    for name, svc in services(compose).items():
        referenced += [(name, ROOT / src) for src in bind_mounts(svc)]
        build = svc.get("build")
        if build:
            ctx = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            referenced.append((name, ctx / dockerfile))
    assert referenced
    missing = [f"{name}: {path.relative_to(ROOT)}" for name, path in referenced if not path.exists()]
    assert not missing, missing
    for path in ("deploy/postgres/init.sql", "deploy/minio/lifecycle.json", "deploy/minio/init.sh",
                 "deploy/prometheus/prometheus.yml", "deploy/grafana/provisioning/datasources/prometheus.yml",
                 "deploy/Dockerfile", "deploy/.env.example"):
        assert (ROOT / path).is_file(), path


def test_named_volumes_declared_and_used(compose):
    declared = set(compose.get("volumes") or {})
    used = {}
    for name, svc in services(compose).items():
        for vol, target in named_volumes(svc).items():
            used.setdefault(vol, []).append((name, target))
    assert set(used) - declared == set(), "volumes used but not declared"
    assert declared - set(used) == set(), "volumes declared but unused"
    targets = {(name, target) for mounts in used.values() for name, target in mounts}
    for expected in [("kafka", "/var/lib/kafka/data"), ("redis", "/data"), ("postgres", "/var/lib/postgresql/data"),
                     ("minio", "/data"), ("worker", "/var/lib/vitalstream"), ("prometheus", "/prometheus"),
                     ("grafana", "/var/lib/grafana")]:
        assert expected in targets, f"{expected[0]} has no named volume at {expected[1]}"


def test_ports(compose):
    svcs = services(compose)
    published = {name: {container_port(p): host_port(p) for p in svc.get("ports") or []}
                 for name, svc in svcs.items()}
    # Host ports are the local stack's defaults, so the CLI reaches either stack unchanged.
    assert published["kafka"] == {9094: default_of("kafka_port")}
    assert published["redis"] == {6379: default_of("redis_port")}
    assert published["postgres"] == {5432: default_of("postgres_port")}
    assert published["minio"] == {9000: default_of("s3_port"), 9001: 9001}
    assert published["mlflow"] == {5000: default_of("mlflow_port")}
    assert published["api"] == {8000: default_of("api_port")}
    assert published["prometheus"] == {9090: 9090}
    assert published["grafana"] == {3000: 3000}
    hosts = [p for ports in published.values() for p in ports.values()]
    assert len(hosts) == len(set(hosts)), "two services publish the same host port"
    assert str(default_of("metrics_port")) in [str(p) for p in svcs["worker"].get("expose", [])]
    # Unauthenticated infrastructure is bound to an explicit address, never bare "6379:6379".
    for name in ("kafka", "redis", "postgres", "minio"):
        for spec in svcs[name]["ports"]:
            assert str(spec).count(":") >= 2 and str(spec).startswith("${PUBLISH_ADDR"), (name, spec)


def test_worker_runs_faust(compose):
    worker = services(compose)["worker"]
    assert command_str(worker).startswith("faust -A app worker")
    assert worker.get("build") and worker["build"]["dockerfile"] == "deploy/Dockerfile"
    assert named_volumes(worker).get("worker-state") == "/var/lib/vitalstream"


def test_api_runs_uvicorn_and_checks_health(compose):
    api = services(compose)["api"]
    assert command_str(api) == "uvicorn api.main:app --host 0.0.0.0 --port 8000"
    assert "http://localhost:8000/health" in command_str(api["healthcheck"], "test")


def test_kafka_is_single_node_kraft(compose):
    svcs = services(compose)
    assert not [n for n, s in svcs.items() if "zookeeper" in (n + str(s.get("image", ""))).lower()]
    kafka = svcs["kafka"]
    assert kafka["image"] == f"apache/kafka:{default_of('kafka_version')}"
    env = env_of(kafka)
    assert not any("ZOOKEEPER" in k for k in env)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert "CONTROLLER://:9093" in env["KAFKA_LISTENERS"] and "PLAINTEXT://:9092" in env["KAFKA_LISTENERS"]
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] == "CONTROLLER"
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    cluster_id = VAR_REF.sub(lambda m: m.group(0).split(":-", 1)[1][:-1], env["CLUSTER_ID"])
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", cluster_id), "CLUSTER_ID must be a 22-char base64 UUID"
    hc = command_str(kafka["healthcheck"], "test")
    assert "/opt/kafka/bin/kafka-topics.sh --bootstrap-server localhost:9092 --list" in hc


def test_redis_persistence_and_hash_encoding(compose):
    redis = services(compose)["redis"]
    assert redis["image"].startswith("redis:7")
    cmd = command_str(redis)
    assert re.search(r"--appendonly\s+yes", cmd)
    # The same AOF rewrite threshold as the local stack's (vitalstream/stack/services.py).
    assert re.search(rf"--auto-aof-rewrite-min-size\s+{AOF_REWRITE_MIN_SIZE}\b", cmd)
    m = re.search(r"--hash-max-listpack-entries\s+(\d+)", cmd)
    assert m, "hash-max-listpack-entries not set"
    # The online store writes ~140-field hashes; they must exceed the threshold so Redis
    # stores them as hash tables instead of re-scanning a listpack on every HSET.
    assert 0 < int(m.group(1)) < 140
    assert "redis-cli ping" in command_str(redis["healthcheck"], "test")


def test_postgres_init_creates_both_databases(compose):
    pg = services(compose)["postgres"]
    assert pg["image"] == "postgres:15"
    assert any(src == "./deploy/postgres/init.sql" for src in bind_mounts(pg))
    assert "/docker-entrypoint-initdb.d/" in " ".join(map(str, pg["volumes"]))
    sql = (DEPLOY / "postgres" / "init.sql").read_text()
    for db in (default_of("postgres_db"), default_of("postgres_mlflow_db")):
        assert re.search(rf"CREATE DATABASE {db}\b", sql), db
    assert "pg_isready" in command_str(pg["healthcheck"], "test")


def test_minio_lifecycle_rules():
    rules = json.loads((DEPLOY / "minio" / "lifecycle.json").read_text())["Rules"]
    expiry = {r["Filter"]["Prefix"]: r["Expiration"]["Days"] for r in rules if r["Status"] == "Enabled"}
    assert expiry.get("raw/") == 90
    assert expiry.get("processed/") == 730
    assert len({r["ID"] for r in rules}) == len(rules)


def test_minio_init_applies_bucket_and_lifecycle(compose):
    svcs = services(compose)
    init = svcs["minio-init"]
    assert init["image"].startswith("minio/mc")
    assert init.get("restart") == "no"
    assert any(src == "./deploy/minio" for src in bind_mounts(init))
    script = (DEPLOY / "minio" / "init.sh").read_text()
    bucket = Settings.model_fields["lake_uri"].default.removeprefix("s3://")
    assert bucket == "vitalstream-lake" and env_of(init)["LAKE_BUCKET"] == bucket
    assert "mc mb --ignore-existing" in script
    assert re.search(r"mc ilm rule import \S+ < \S*lifecycle\.json", script)
    assert "--console-address" in command_str(svcs["minio"])
    assert "mc ready local" in command_str(svcs["minio"]["healthcheck"], "test")


def test_mlflow_server(compose):
    mlflow = services(compose)["mlflow"]
    cmd = command_str(mlflow)
    assert "mlflow server" in cmd
    assert re.search(r"--backend-store-uri \"?postgresql://\S+@postgres:5432/mlflow", cmd)
    assert "--artifacts-destination s3://vitalstream-lake/mlflow" in cmd
    assert "--host 0.0.0.0 --port 5000" in cmd
    env = env_of(mlflow)
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY")
    assert "/health" in command_str(mlflow["healthcheck"], "test")


def test_dockerfile_builds_the_project():
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.MULTILINE)
    assert re.search(r"pip install .*\s\.$", text, re.MULTILINE)
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert ".env" in ignore and ".stack" in ignore, "secrets/local state would enter the image"


def test_prometheus_scrapes_worker_and_api():
    cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {(t, job.get("metrics_path", "/metrics"))
               for job in cfg["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert (f"worker:{default_of('metrics_port')}", "/metrics") in targets
    assert (f"api:{default_of('api_port')}", "/metrics") in targets


def test_grafana_provisions_prometheus(compose):
    grafana = services(compose)["grafana"]
    assert any(src == "./deploy/grafana/provisioning" for src in bind_mounts(grafana))
    cfg = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (ds,) = [d for d in cfg["datasources"] if d["type"] == "prometheus"]
    assert ds["url"] == "http://prometheus:9090"
    assert ds.get("isDefault") is True
