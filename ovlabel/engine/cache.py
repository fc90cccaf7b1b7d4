"""``cache/``: what the artifact rebuild derived from each image's parts, kept so that a rerun does work in
proportion to what changed, not to the size of the run.

- ``cache/images.parquet``: per labelled image, its paint id (a digest of the run's artifact settings and
  the image's part ids: what its label map and its rows of the dataset files were made from), the file's
  stat when it was hashed (size, mtime, ctime, inode) and its content hash, its size, mask count and
  quality columns;
- ``cache/masks.parquet``: every labelled image's fragment (:mod:`ovlabel.dataset`), in manifest order.

Everything here is derived: an entry is used only when its paint id (or, for the content hash, the file's
stat) still matches, and a missing or damaged cache costs a full rebuild from the parts, nothing else.
A file's content hash is trusted from the cache only while its size, modification and change times
(``ctime`` cannot be set back by a user) and inode are all the same; ``--rehash`` reads every file again.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ovlabel.artifacts import FRAGMENT_SCHEMA, MANIFEST_QUALITY_COLUMNS, RunLayout, read_parquet, write_parquet
from ovlabel.dataset import ROW_GROUP_IMAGES
from ovlabel.io.atomic import atomic_path

IMAGES_SCHEMA = pa.schema(
    [("file", pa.string()), ("paint", pa.string()), ("sha256", pa.string()), ("size", pa.int64()),
     ("mtime_ns", pa.int64()), ("ctime_ns", pa.int64()), ("inode", pa.int64()), ("width", pa.int32()),
     ("height", pa.int32()), ("num_masks", pa.int32())]
    + [(c, pa.float32()) for c in MANIFEST_QUALITY_COLUMNS]
)
MASKS_SCHEMA = pa.schema([("file", pa.string()), ("paint", pa.string())] + list(FRAGMENT_SCHEMA))
STAT_FIELDS = ("size", "mtime_ns", "ctime_ns", "inode")


def file_stat(path: Path) -> tuple[int, int, int, int] | None:
    """The stat fields the cache keys content hashes on (:data:`STAT_FIELDS`, in that order), or None if
    the file cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


class RunCache:
    """The cache of one run directory (read once when the run starts)."""

    def __init__(self, layout: RunLayout):
        self.images_path = layout.cache / "images.parquet"
        self.masks_path = layout.cache / "masks.parquet"
        self.images: dict[str, dict] = {}
        try:
            for row in read_parquet(self.images_path).to_pylist():
                self.images[row["file"]] = row
        except FileNotFoundError:
            pass
        except Exception as exc:  # damaged: it is derived data, so start without it
            print(f"warning: ignoring the damaged cache '{self.images_path}' ({type(exc).__name__}); "
                  f"this run rebuilds it from the parts", file=sys.stderr)
            self.images = {}

    def sha_for(self, file: str, stat: tuple | None) -> str | None:
        """The content hash of ``file`` if its stat (:func:`file_stat`) is the one it was hashed with."""
        row = self.images.get(file)
        if row is None or stat is None or any(row[k] != v for k, v in zip(STAT_FIELDS, stat)):
            return None
        return row["sha256"]

    def image(self, file: str, paint: str) -> dict | None:
        """The entry of ``file`` if it was made from the parts ``paint`` names."""
        row = self.images.get(file)
        return row if row is not None and row["paint"] == paint else None

    def fragments(self) -> "FragmentReader":
        return FragmentReader(self.masks_path)

    def writer(self) -> "CacheWriter":
        return CacheWriter(self)


class FragmentReader:
    """Reads cached fragments in manifest order, one row group at a time (memory bounded by a row group)."""

    def __init__(self, path: Path):
        try:
            self.pf = pq.ParquetFile(path)
            self.next_group = 0
        except Exception:  # missing or damaged: nothing to reuse
            self.pf, self.next_group = None, 0
        self.buf: dict[str, tuple[str, pa.Table]] = {}
        self.last: str | None = None

    def get(self, file: str, paint: str) -> pa.Table | None:
        """The fragment of ``file`` made from ``paint``, or None (compute it from the parts)."""
        while file not in self.buf and self._more(file):
            self._load()
        hit = self.buf.get(file)
        return hit[1] if hit is not None and hit[0] == paint else None

    def _more(self, file: str) -> bool:
        """Whether a later row group may hold ``file`` (the files are in manifest order, sorted)."""
        if self.pf is None or self.next_group >= self.pf.metadata.num_row_groups:
            return False
        return self.last is None or self.last < file

    def _load(self) -> None:
        try:
            table = self.pf.read_row_group(self.next_group)
        except Exception:  # damaged: stop reusing
            self.pf = None
            return
        self.next_group += 1
        self.buf = {}
        files = table.column("file").to_pylist()
        paints = table.column("paint").to_pylist()
        start = 0
        for i in range(1, len(files) + 1):
            if i == len(files) or files[i] != files[start]:
                self.buf[files[start]] = (paints[start], table.slice(start, i - start).drop_columns(["file", "paint"]))
                start = i
        if files:
            self.last = files[-1]


class CacheWriter:
    """Writes a new cache (a context manager): :meth:`add` every labelled image in manifest order."""

    def __init__(self, cache: RunCache):
        self.cache, self.rows, self._pending, self._n = cache, [], [], 0

    def __enter__(self):
        self._ctx, self._images_ctx = atomic_path(self.cache.masks_path), atomic_path(self.cache.images_path)
        self._writer = pq.ParquetWriter(self._ctx.__enter__(), MASKS_SCHEMA, compression="zstd")
        self._images = pq.ParquetWriter(self._images_ctx.__enter__(), IMAGES_SCHEMA, compression="zstd")
        return self

    def add(self, row: dict, frag: pa.Table) -> None:
        """``row``: the image's entry (:data:`IMAGES_SCHEMA` fields); ``frag``: its fragment."""
        self.rows.append(row)
        if frag.num_rows:
            self._pending.append((row["file"], row["paint"], frag))
        self._n += 1
        if self._n % ROW_GROUP_IMAGES == 0:
            self._flush()

    def _flush(self) -> None:
        if self.rows:
            self._images.write_table(pa.Table.from_pylist(self.rows, schema=IMAGES_SCHEMA), row_group_size=1 << 30)
            self.rows = []
        if not self._pending:
            return
        counts = [f.num_rows for _, _, f in self._pending]
        table = pa.concat_tables([f for _, _, f in self._pending])
        table = table.add_column(0, "paint", pa.array(np.repeat([p for _, p, _ in self._pending], counts), pa.string()))
        table = table.add_column(0, "file", pa.array(np.repeat([f for f, _, _ in self._pending], counts), pa.string()))
        self._writer.write_table(table.cast(MASKS_SCHEMA), row_group_size=1 << 30)
        self._pending = []

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self._flush()
        finally:
            self._writer.close()
            self._images.close()
            self._ctx.__exit__(exc_type, exc, tb)
            self._images_ctx.__exit__(exc_type, exc, tb)
        return False


def save_images(cache: RunCache, rows: list[dict]) -> None:
    """Rewrite only ``cache/images.parquet`` (the fragments are unchanged)."""
    write_parquet(cache.images_path, pa.Table.from_pylist(rows, schema=IMAGES_SCHEMA))
