"""Where telemetry lives on disk and how parts get there without ever being seen half-written.

Layout: `<root>/cohort=<c>/run=<id>/<table>/part-<n>.parquet`. Readers glob `*.parquet`, so a
part is written under a hidden `.part-<n>.parquet.tmp` name and renamed into place.

A path, once written, never changes: a reader that listed a part reads what was listed, or finds
it gone (and lists again), never other bytes under the same name. So every rewrite takes a new
part number: the run manifest (`runs/part-<n>.parquet`, the highest is current), a truncated part
on resume, and the merged part of a compaction.

A run writes many small parts (one per flush, so a crash loses little); DuckDB pays per file, so
a closed run's parts are compacted into one part per table. Compaction writes the merged part
into a hidden sibling folder and swaps folders with two renames: a reader sees the old parts or
the merged one, never both; only a crash between the two renames can hide (never corrupt or
duplicate) that table of that run, and its rows are then still in `.<table>.old/`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from esper_lab import checks

ROW_GROUP_ROWS = 256 * 1024  # compacted row groups: large enough that per-group overhead is noise
# zstd: about as fast to write as snappy here, and smaller files; every data page carries a CRC,
# so a reader finds a corrupt page even when the footer is intact
WRITE_OPTIONS = {"compression": "zstd", "write_page_checksum": True}


def run_folder(root: str | Path, cohort: str, run_id: str) -> Path:
    """A run's folder; both names become folder names, so both must pass `checks.name`."""
    return Path(root) / f"cohort={checks.name('cohort', cohort)}" / f"run={checks.name('run_id', run_id)}"


def part_number(path: Path) -> int:
    return int(path.stem.removeprefix("part-"))


def write_part(path: Path, table: pa.Table) -> None:
    """Write under a hidden temporary name, then rename: the part appears whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, temporary, row_group_size=ROW_GROUP_ROWS, **WRITE_OPTIONS)
    os.replace(temporary, path)


def numbered_parts(folder: Path) -> list[Path]:
    return sorted(folder.glob("part-*.parquet"), key=part_number)


def next_part(folder: Path) -> Path:
    parts = numbered_parts(folder)
    return folder / f"part-{part_number(parts[-1]) + 1 if parts else 0}.parquet"


def replace_single_part(folder: Path, table: pa.Table) -> Path:
    """Write `table` as the folder's newest part, then drop the older ones (a manifest's update)."""
    old = numbered_parts(folder)
    path = next_part(folder)
    write_part(path, table)
    for part in old:
        part.unlink(missing_ok=True)
    return path


def latest_part(folder: Path) -> Path | None:
    parts = numbered_parts(folder)
    return parts[-1] if parts else None


def compact_table(folder: Path) -> None:
    """Merge one table folder's parts, in part order, into a single new part."""
    parts = numbered_parts(folder)
    if len(parts) < 2:
        return
    staging = folder.with_name(f".{folder.name}.compacting")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    pending, rows = [], 0
    merged = staging / f"part-{part_number(parts[-1]) + 1}.parquet"
    try:
        with pq.ParquetWriter(merged, pq.read_schema(parts[0]), **WRITE_OPTIONS) as writer:
            for part in parts:
                table = pq.ParquetFile(part).read()
                pending.append(table)
                rows += table.num_rows
                if rows >= ROW_GROUP_ROWS or part is parts[-1]:
                    writer.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP_ROWS)
                    pending, rows = [], 0
    except OSError:  # a full disk, say: the parts stay as they are, the half-merged copy goes
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = folder.with_name(f".{folder.name}.old")
    os.rename(folder, old)
    os.rename(staging, folder)
    shutil.rmtree(old)


def compact_run(folder: Path, tables: tuple[str, ...]) -> None:
    for table in tables:
        if (folder / table).is_dir():
            compact_table(folder / table)


def truncate_table(folder: Path, column: str, keep_below: int) -> int:
    """Drop the rows whose `column` is >= `keep_below` from one table folder: a part that loses
    rows is replaced by a new part with the rest (or just removed); return the next part number."""
    for part in numbered_parts(folder):
        table = pq.read_table(part)
        kept = table.filter(pc.less(table[column], keep_below))
        if kept.num_rows < table.num_rows:
            if kept.num_rows:
                write_part(next_part(folder), kept)
            part.unlink()
    return part_number(next_part(folder))
