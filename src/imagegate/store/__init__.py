"""The store: job and image history (SQLAlchemy + Alembic) and content-addressed PNG files."""

from imagegate.store.db import Store
from imagegate.store.pngmeta import infotext, parse_infotext, png_with_metadata, read_metadata
from imagegate.store.records import EventRecord, ImageRecord, JobRecord

__all__ = [
    "EventRecord",
    "ImageRecord",
    "JobRecord",
    "Store",
    "infotext",
    "parse_infotext",
    "png_with_metadata",
    "read_metadata",
]
