"""The local stack's error paths: missing prerequisites name their fix, failed services name their log."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from vitalstream.settings import Settings
from vitalstream.stack import manager
from vitalstream.stack.process import StackError
from vitalstream.stack.services import Kafka, Redis, Service


def test_missing_java_names_the_package(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no java, no mvn
    with pytest.raises(StackError, match="Java 17\\+ not found: apt-get install openjdk-17-jre-headless"):
        Kafka(Settings(stack_dir=tmp_path)).check_prerequisites()


def test_old_java_is_refused(monkeypatch, tmp_path):
    fake = tmp_path / "java"
    fake.write_text('#!/bin/sh\necho \'openjdk version "11.0.2" 2019-01-15\' >&2\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    with pytest.raises(StackError, match="Java 17\\+ is 11"):
        Kafka(Settings(stack_dir=tmp_path / "s")).check_prerequisites()


def test_missing_redis_names_the_package(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(StackError, match="redis-server not found: apt-get install redis-server"):
        Redis(Settings(stack_dir=tmp_path)).check_prerequisites()


class _ExitsAtOnce(Service):
    """A service whose process dies on start, like a server failing on a bad config."""

    name = "broken"
    start_timeout_s = 10

    @property
    def url(self) -> str:
        return "tcp://127.0.0.1:1"

    def healthy(self) -> bool:
        return False

    def start(self) -> None:
        from vitalstream.stack.process import spawn

        spawn(["sh", "-c", "echo 'FATAL: bad config' >&2; exit 3"], log_path=self.log_path, pid_file=self.pid_file)


def test_failed_service_is_named_with_its_log(tmp_path):
    service = _ExitsAtOnce(Settings(stack_dir=tmp_path))
    with pytest.raises(StackError) as err:
        manager._bring_up(service, log=lambda *_: None)
    message = str(err.value)
    assert "broken failed to start" in message
    assert str(service.log_path) in message
    assert "FATAL: bad config" in message  # the log's tail, so the cause is on screen


def test_url_settings_follow_ports_and_env(monkeypatch):
    monkeypatch.setenv("VITALSTREAM_REDIS_PORT", "7001")
    monkeypatch.setenv("VITALSTREAM_POSTGRES_DSN", "postgresql://u:p@db.example:5432/x")
    s = Settings()
    assert s.redis_url == "redis://127.0.0.1:7001/0"
    assert s.postgres_dsn == "postgresql://u:p@db.example:5432/x"
    assert s.kafka_bootstrap == "127.0.0.1:9092"
    assert s.mlflow_artifact_uri == s.lake_uri + "/mlflow"


def test_external_service_is_used_not_started(stack):
    """A service already answering at its URL is adopted: nothing is spawned for it."""
    from vitalstream.stack.services import Redis as RedisService

    service = RedisService(stack.model_copy(update={"stack_dir": Path("/nonexistent-stack-dir")}))
    status = manager._bring_up(service, log=lambda *_: None)
    assert status.healthy and not status.managed
    assert not service.pid_file.exists()
