"""UTC time, and the proto Timestamp conversions every converter needs."""

from __future__ import annotations

from datetime import datetime, timezone

from google.protobuf.timestamp_pb2 import Timestamp


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything stored is UTC.
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def to_timestamp(value: datetime | None, *, whole_seconds: bool = True) -> Timestamp | None:
    """A resource's times to the second; an audit record keeps its microseconds, since the logs of
    several services are merged by them (two changes a second apart or less keep their order)."""
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(as_utc(value).replace(microsecond=0) if whole_seconds else as_utc(value))
    return ts
