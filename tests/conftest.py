"""Shared fixtures. Tests marked `stack` use the real local services (brought up once if needed)."""
from __future__ import annotations

import uuid

import pytest

from vitalstream.settings import Settings


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
