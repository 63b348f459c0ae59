"""The wire format of every timestamp: ISO-8601 UTC with milliseconds, e.g. 2026-11-26T09:55:23.123Z."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS

# Hot path (simulator, online store): avoid a datetime per record.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DAY_PREFIX: dict[int, str] = {}


def iso_ms(ms: int) -> str:
    """Epoch ms -> '2026-11-26T09:55:23.123Z'."""
    day, rem = divmod(ms, 86_400_000)
    prefix = _DAY_PREFIX.get(day)
    if prefix is None:
        prefix = _DAY_PREFIX[day] = (_EPOCH + timedelta(days=day)).strftime("%Y-%m-%dT")
    h, rem = divmod(rem, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, milli = divmod(rem, 1000)
    return f"{prefix}{h:02d}:{m:02d}:{s:02d}.{milli:03d}Z"


