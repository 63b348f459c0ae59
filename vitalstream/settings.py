"""The one settings object. Every value can be set with an env var prefixed VITALSTREAM_.

Defaults point at the local stack that `vitalstream stack up` runs on 127.0.0.1.
A URL left unset is derived from its port, so moving a port moves its URL.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VITALSTREAM_", env_file=".env", extra="ignore")

    # --- local stack -------------------------------------------------------------
    stack_dir: Path = Field(Path(".stack"), description="Data, logs and pid files of local services.")
    cache_dir: Path = Field(Path.home() / ".cache" / "vitalstream", description="Downloaded Kafka jars etc.")
    host: str = "127.0.0.1"

    kafka_version: str = "3.9.1"
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    kafka_heap: str = "768m"
    kafka_bootstrap: str | None = None  # host:port; derived from kafka_port when unset

    redis_port: int = 6380
    redis_url: str | None = None

    postgres_port: int = 5433
    postgres_user: str = "vitalstream"
    postgres_password: SecretStr = SecretStr("vitalstream-local")
    postgres_db: str = "vitalstream"  # predictions, audit
    postgres_mlflow_db: str = "mlflow"
    postgres_dsn: str | None = None  # predictions database DSN

    s3_port: int = 9000
    s3_endpoint_url: str | None = None  # None with an s3:// lake on AWS proper
    s3_access_key_id: SecretStr = SecretStr("vitalstream")
    s3_secret_access_key: SecretStr = SecretStr("vitalstream-local-secret")
    s3_region: str = "us-east-1"
    lake_uri: str = "s3://vitalstream-lake"  # or file:///abs/path

    mlflow_port: int = 5000
    mlflow_tracking_uri: str | None = None
    mlflow_artifact_uri: str | None = None  # defaults to {lake_uri}/mlflow

    # --- topics ------------------------------------------------------------------
    topic_prefix: str = ""  # namespaces every topic, e.g. "staging." or a test's own prefix
    topic_partitions: int = 4
    topic_replication: int = 1
    clinical_retention_ms: int = -1  # Kafka history is the source of truth: keep it
    deadletter_retention_ms: int = 90 * 24 * 3600 * 1000
    scores_retention_ms: int = 7 * 24 * 3600 * 1000
    patients_compaction_lag_ms: int = 730 * 24 * 3600 * 1000  # clinical.patients: compact only records older

    # --- worker ------------------------------------------------------------------
    app_id: str = "vitalstream"
    worker_port: int = 6066
    metrics_port: int = 9108
    table_store: str = "rocksdb://"
    allowed_lateness_ms: int = 3_600_000
    flush_max_rows: int = 5_000  # lake (bronze/silver/offline) flush: whichever comes first
    flush_max_seconds: float = 2.0
    session_timeout_s: float = 10.0  # a killed worker's partitions move on after this long
    # Wait for caught-up topics before ordering past them (agents/ordering.py). At least the fetch's max wait: a
    # topic counts as caught up by the highwater its last fetch reported, and a partition left out of the fetch in
    # flight (it still had records buffered) is fetched one wait later; a shorter grace could order past its records.
    merge_grace_ms: int = 25
    merge_max_idle_ms: int = 30_000  # wait at most this long for a lagging topic
    # Release a record without the grace once the empty topics' highwaters are as fresh as its own fetch (about
    # halves p50 latency). Off by default: it covers records that reached the broker before the record, while the
    # grace also covers those a producer sends a little after it (batches of other partitions lingering). Turn
    # it on when producers send each patient's records in timestamp order. See docs/pipeline.md ("Order").
    merge_fresh_highwaters: bool = False
    fetch_stall_s: float = 6.0  # a lagging partition that delivers nothing this long is sought again (at most
    # a third of the merge's max idle, so the merge never gives up on it first; agents/clinical.py)
    online_flush_ms: int = 5  # Redis write interval when caught up (coalesces a patient's vectors)
    online_flush_backlog_ms: int = 5_000  # ... and while catching up on a backlog (records older than this)
    # A fetch returns when fetch_min_bytes are waiting or after fetch_max_wait_ms (app.py). Faust hardcodes a
    # 1.5 s wait, which added up to 1.5 s of latency; a minimum of one byte meant a fetch per record or two
    # at live rates, each decoded in Python. 64 KiB or 25 ms: few fetches, at most 25 ms added (5 ms halved p50
    # latency at 500/s again, but a fetch's request and response are encoded and decoded in Python per partition:
    # 200 fetches/s cost the worker ~0.2 cores; docs/benchmarks.md, session 10).
    fetch_min_bytes: int = 65_536
    fetch_max_wait_ms: int = 25
    batch_max_events: int = 1_000  # micro-batch of the agent: at most this many records
    batch_max_seconds: float = 0.025  # baseline only: how long Faust's noack_take fills a micro-batch
    # Benchmark baseline only (bench/stream_throughput.py --faust-baseline): Faust's own per-record delivery
    # (four tasks per record, then a Faust stream) and per-key table writes, instead of the worker's inline
    # delivery into its inbox and batched changelog writes.
    faust_per_record_paths: bool = False
    # Python's cyclic GC scans young objects every 700 allocations; a worker allocates tens per event, and each
    # scan also walks the survivors (patients' windows). Collect young objects every this many allocations
    # instead (0: Python's default). See docs/pipeline.md ("Garbage collection").
    gc_gen0_threshold: int = 50_000
    # How long a thread may hold the GIL while another waits for it (Python's default: 5 ms). The worker's event
    # loop shares the GIL with the lake writer's thread; at 1 ms it waits less each time it wakes. See
    # docs/pipeline.md ("The GIL's switch interval"). 0 leaves Python's default.
    gil_switch_interval_ms: float = 1.0
    worker_data_dir: Path | None = None  # RocksDB tables; default {stack_dir}/worker-data

    # --- training and the model registry ----------------------------------------
    model_name: str = "adverse_event_24h"  # registered model name in MLflow
    promotion_min_improvement: float = 0.0  # production moves when candidate AUROC > production's + this
    datasets_days: int = 90  # `vitalstream train` default range: the last N days of the offline store

    # --- API ---------------------------------------------------------------------
    api_port: int = 8000
    api_keys: list[SecretStr] = Field(default_factory=list)

    @model_validator(mode="after")
    def _derive_urls(self) -> "Settings":
        h = self.host
        if self.kafka_bootstrap is None:
            self.kafka_bootstrap = f"{h}:{self.kafka_port}"
        if self.redis_url is None:
            self.redis_url = f"redis://{h}:{self.redis_port}/0"
        if self.postgres_dsn is None:
            self.postgres_dsn = self.postgres_url(self.postgres_db)
        if self.s3_endpoint_url is None and self.lake_uri.startswith("s3://"):
            self.s3_endpoint_url = f"http://{h}:{self.s3_port}"
        if self.mlflow_tracking_uri is None:
            self.mlflow_tracking_uri = f"http://{h}:{self.mlflow_port}"
        if self.worker_data_dir is None:
            self.worker_data_dir = self.stack_dir / "worker-data"
        if self.mlflow_artifact_uri is None:
            self.mlflow_artifact_uri = self.lake_uri.rstrip("/") + "/mlflow"
        return self

    def postgres_url(self, database: str) -> str:
        pw = self.postgres_password.get_secret_value()
        return f"postgresql://{self.postgres_user}:{pw}@{self.host}:{self.postgres_port}/{database}"

    @property
    def lake_bucket(self) -> str | None:
        if not self.lake_uri.startswith("s3://"):
            return None
        return self.lake_uri[len("s3://"):].split("/", 1)[0]

    def s3_env(self) -> dict[str, str]:
        """Environment for tools (boto3, MLflow) that read S3 credentials from env."""
        env = {
            "AWS_ACCESS_KEY_ID": self.s3_access_key_id.get_secret_value(),
            "AWS_SECRET_ACCESS_KEY": self.s3_secret_access_key.get_secret_value(),
            "AWS_DEFAULT_REGION": self.s3_region,
        }
        if self.s3_endpoint_url:
            env["MLFLOW_S3_ENDPOINT_URL"] = self.s3_endpoint_url
            env["AWS_ENDPOINT_URL_S3"] = self.s3_endpoint_url
        return env


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
