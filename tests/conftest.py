"""Shared fixtures. Tests marked `stack` use the real local services (brought up once if needed)."""
from __future__ import annotations

import os
import uuid

import pytest
from hypothesis import settings as hypothesis_settings

# CI replays the same examples every run (a red CI blocks landing, so it must not depend on luck);
# local runs explore new random examples each time and report any failing case to pin.
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

from vitalstream.settings import Settings


def pytest_sessionstart(session: pytest.Session) -> None:
    # A compiled module is imported instead of its .py file: an edit not yet built would go untested.
    from vitalstream.compiled import build_statuses, stray_builds

    stale = [module for module, status in build_statuses().items() if status == "stale"]
    if stale:
        pytest.exit(f"{', '.join(stale)}: source changed since the mypyc build; rebuild with "
                    "`pip install --no-deps --no-build-isolation -e .` (or `./dev setup`)", returncode=2)
    stray = stray_builds()
    if stray:
        pytest.exit(f"builds of modules not compiled any more (they would run instead of their sources): "
                    f"{', '.join(map(str, stray))}; delete them", returncode=2)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings()


@pytest.fixture(scope="session")
def stack(settings: Settings) -> Settings:
    """The running local stack; started here when it is not up yet (`.ci/run` starts it first)."""
    from vitalstream.stack import manager

    statuses = manager.status(settings)
    if not all(st.healthy for st in statuses.values()):
        manager.up(settings, log=lambda *_: None)
    return settings


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topic, group, bucket and key names, so tests never collide."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def env(stack, unique, tmp_path):
    """Isolated settings (own topics, group, lake prefix, Redis db) with topics created; stops its workers."""
    import redis

    from streams.topics import ensure_topics
    from tests.harness import WorkerProcess, isolated_settings

    settings = isolated_settings(stack, unique, tmp_path)
    ensure_topics(settings)
    client = redis.Redis.from_url(settings.redis_url)
    client.flushdb()
    workers: list[WorkerProcess] = []
    yield settings, client, workers
    for w in workers:
        w.stop()
