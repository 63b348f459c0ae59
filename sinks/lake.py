"""The lake: one URI (`file:///path` or `s3://bucket/prefix`) behind one small API.

pyarrow.fs gives the same calls for a local folder and any S3-compatible server
(MinIO, moto), and pyarrow.dataset / pandas / duckdb read what it writes.
Every write is atomic: readers see a whole object or none.
"""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from functools import lru_cache
from datetime import date, datetime, timedelta, timezone
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from streams.timestamps import DAY_MS
from vitalstream.settings import Settings

_DATE_DIR = re.compile(r"date=(\d{4}-\d{2}-\d{2})")


@dataclass(frozen=True)
class LakeObject:
    path: str  # relative to the lake root
    size: int


class Lake:
    def __init__(self, fs: pafs.FileSystem, root: str, uri: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.uri = uri
        self.is_local = isinstance(fs, pafs.LocalFileSystem)

    @classmethod
    def from_settings(cls, settings: Settings, uri: str | None = None) -> "Lake":
        uri = uri or settings.lake_uri
        parts = urlsplit(uri)
        if parts.scheme == "file":
            root = parts.path
            fs = pafs.LocalFileSystem()
            fs.create_dir(root, recursive=True)
            return cls(fs, root, uri)
        if parts.scheme == "s3":
            endpoint = settings.s3_endpoint_url
            kwargs = {}
            if endpoint:
                ep = urlsplit(endpoint)
                kwargs = {"endpoint_override": ep.netloc, "scheme": ep.scheme or "http"}
            fs = pafs.S3FileSystem(
                access_key=settings.s3_access_key_id.get_secret_value(),
                secret_key=settings.s3_secret_access_key.get_secret_value(),
                region=settings.s3_region, allow_bucket_creation=False, **kwargs,
            )
            return cls(fs, f"{parts.netloc}{parts.path}", uri)
        raise ValueError(f"lake URI must be file:///path or s3://bucket/prefix, got {uri!r}")

    def full(self, path: str) -> str:
        return f"{self.root}/{path.lstrip('/')}"

    def put(self, path: str, data: bytes) -> None:
        """Write an object atomically (local: temp file + rename; S3: a single PUT)."""
        target = self.full(path)
        if self.is_local:
            parent = target.rsplit("/", 1)[0]
            self.fs.create_dir(parent, recursive=True)
            tmp = f"{parent}/.tmp-{uuid.uuid4().hex}"
            with self.fs.open_output_stream(tmp) as out:
                out.write(data)
            self.fs.move(tmp, target)
        else:
            with self.fs.open_output_stream(target) as out:
                out.write(data)

    def get(self, path: str) -> bytes:
        with self.fs.open_input_stream(self.full(path)) as inp:
            return inp.read()

    def delete(self, path: str) -> None:
        self.fs.delete_file(self.full(path))

    def list(self, prefix: str) -> list[LakeObject]:
        """Objects below prefix (recursive), skipping temp files; empty when the prefix is absent."""
        base = self.full(prefix).rstrip("/")
        selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        out = []
        for info in self.fs.get_file_info(selector):
            if info.type != pafs.FileType.File or info.base_name.startswith(".tmp-"):
                continue
            out.append(LakeObject(info.path[len(self.root) + 1:], info.size or 0))
        return sorted(out, key=lambda o: o.path)




def utc_day(ts_ms: int) -> str:
    """YYYY-MM-DD (UTC) of an epoch-ms time: the one day-partition rule of the lake (live and replay)."""
    return _day_name(ts_ms // DAY_MS)


@lru_cache(maxsize=4096)
def _day_name(day_number: int) -> str:  # cached: called per row on the sinks' hot path
    return (date(1970, 1, 1) + timedelta(days=day_number)).isoformat()


def partition_date(path: str) -> date | None:
    m = _DATE_DIR.search(path)
    return date.fromisoformat(m.group(1)) if m else None


RETENTION_DAYS: dict[str, int] = {"raw/": 90, "processed/": 730}


def cleanup(lake: Lake, *, today: date | None = None, dry_run: bool = False) -> dict[str, int]:
    """Delete date partitions older than their layer's retention (raw 90 days, processed 2 years)."""
    today = today or datetime.now(timezone.utc).date()
    deleted: dict[str, int] = {}
    for prefix, days in RETENTION_DAYS.items():
        cutoff = today - timedelta(days=days)
        n = 0
        for obj in lake.list(prefix):
            d = partition_date(obj.path)
            if d is not None and d < cutoff:
                if not dry_run:
                    lake.delete(obj.path)
                n += 1
        deleted[prefix] = n
    return deleted
