"""The telemetry store: DuckDB views over a telemetry root, and the named queries over them.

The views read `<root>/cohort=*/run=*/<table>/*.parquet` with hive partitioning, so `cohort` and
`run` (the folder names) are columns. Enum columns hold integers; `<enum>_names(value, name)`
tables give the names (`op_names`, `stage_names`, ... for every enum in `schema.ENUMS`). The SQL
of every named query lives in `queries` (DESIGN rule 5).

Readers are isolated from each other and from writers:

- a query about one run (`run=...`) reads only that run's files (its own view schema), so a bad
  part or a compaction elsewhere cannot touch it;
- every part is read whole (each data page against its CRC) before a view lists it: a part that
  cannot be read is left out, named in `bad_parts` and in a warning, never a wall for the whole
  root. A part never changes under its name (`parts`), so a part read whole once in this process
  is not read again;
- a part removed between listing and reading (another run's compaction) triggers a fresh listing
  and a retry, not an error;
- `preset` restricts the whole store to the runs of one preset, so one report never mixes them.
"""

from __future__ import annotations

import hashlib
import re
import time
import warnings
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from esper_lab.telemetry.parts import latest_part
from esper_lab.telemetry.queries import Queries
from esper_lab.telemetry.query_base import FINISHED_EPISODES
from esper_lab.telemetry.schema import ENUMS, SCHEMAS, TABLES, TIMING_COLUMNS

READ_RETRIES = 12  # fresh listings after a part vanished under a query (a concurrent compaction)
RETRY_PAUSE = 0.005  # seconds before the first new listing, doubling each time (~20 s in all): a
# compaction's two renames finish in microseconds, or in far longer on a loaded machine
_MISSING_FILE = re.compile(r"No such file|does not exist|Cannot open file|No files found", re.IGNORECASE)


def _verified(path: Path) -> list[str]:
    """The part's columns, once every page of it has been read and checked against its CRC."""
    stat = path.stat()
    key = (path, stat.st_size, stat.st_mtime_ns)
    if key not in _VERIFIED:
        with pq.ParquetFile(path, page_checksum_verification=True) as part:
            _VERIFIED[key] = part.read().schema.names
    return _VERIFIED[key]


_VERIFIED: dict[tuple[Path, int, int], list[str]] = {}  # parts read whole in this process (a part never changes under its name)


class CorruptPart(ValueError):
    """A part file that cannot be read; the message names the file."""


class Store(Queries):
    """An in-memory DuckDB connection with one view per telemetry table under `root`."""

    def __init__(self, root: str | Path, preset: str | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"telemetry root {self.root} is not a folder")
        self.preset = preset
        self.con = duckdb.connect()
        for name, cls in ENUMS.items():
            self.con.register(f"{name}_names", pa.table({"value": [int(m) for m in cls], "name": [m.name for m in cls]}))
        self.bad_parts: dict[Path, str] = {}
        self._columns: dict[Path, list[str]] = {}  # each readable part's columns, from its footer
        self._scopes: dict[str, str] = {}  # run id -> its view schema ("main": every run in scope)
        self.refresh()

    # --- what is on disk ----------------------------------------------------------------------
    def run_folders(self, run: str | None = None) -> list[Path]:
        """Run folders in scope (of `preset` when the store has one; of one run when given)."""
        folders = sorted(self.root.glob(f"cohort=*/run={run or '*'}"))
        if self.preset is None:
            return folders
        return [f for f in folders if self._preset_of(f) == self.preset]

    def _preset_of(self, folder: Path) -> str | None:
        manifest = latest_part(folder / "runs")
        try:
            return pq.read_table(manifest, columns=["preset"]).column(0)[0].as_py()
        except FileNotFoundError:
            return self._preset_of(folder)  # replaced by a newer one since it was listed
        except (pa.ArrowException, OSError, IndexError, TypeError) as error:
            self._bad(manifest or folder / "runs", error)
            return None

    def parts(self, table: str | None = None, run: str | None = None) -> list[Path]:
        """Readable parts in scope (hidden temporary files and compaction folders are not parts)."""
        tables = [table] if table else TABLES
        found = [p for folder in self.run_folders(run) for t in tables for p in sorted((folder / t).glob("*.parquet"))]
        return [p for p in found if self._readable(p)]

    def _readable(self, path: Path) -> bool:
        try:
            self._columns[path] = _verified(path)
        except FileNotFoundError:
            return False  # compacted away since it was listed
        except (pa.ArrowException, OSError) as error:
            self._bad(path, error)
            return False
        return True

    def _bad(self, path: Path, error: Exception) -> None:
        if path not in self.bad_parts:
            self.bad_parts[path] = str(error)
            warnings.warn(f"skipping corrupt telemetry part {path}: {error}", stacklevel=3)

    def validate(self) -> int:
        """Check every part (footer and pages); raise `CorruptPart` naming the first unreadable file."""
        parts = self.parts()
        if self.bad_parts:
            path, error = next(iter(self.bad_parts.items()))
            raise CorruptPart(f"corrupt telemetry part {path}: {error}")
        return len(parts)

    # --- views --------------------------------------------------------------------------------
    def refresh(self) -> None:
        """List the parts again and (re)create the views (new runs, finished compactions)."""
        for schema in set(self._scopes.values()) - {"main"}:
            self.con.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        self._scopes = {}
        self._scope(None)

    def _scope(self, run: str | None) -> str:
        """The view schema of one run, or `main` for every run in scope (built on first use)."""
        key = run or ""
        if key not in self._scopes:
            schema = "main" if run is None else "run_" + hashlib.sha1(run.encode()).hexdigest()[:16]
            self.con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            for table in TABLES:
                self._retrying(lambda: self.con.execute(f"CREATE OR REPLACE VIEW {schema}.{table} AS SELECT * FROM {self._source(table, run)}"))
            self.con.execute(f"CREATE OR REPLACE VIEW {schema}.finished_episodes AS {FINISHED_EPISODES.format(schema=schema)}")
            self._scopes[key] = schema
        return self._scopes[key]

    def _retrying(self, action):
        """Run `action`; when a listed part vanished under it (a compaction), or a table folder
        while it was being listed (a compaction swaps the folder with two renames), list again and
        retry."""
        for attempt in range(READ_RETRIES + 1):
            try:
                return action()
            except (duckdb.IOException, FileNotFoundError) as error:
                vanished = isinstance(error, FileNotFoundError) or _MISSING_FILE.search(str(error))
                if attempt == READ_RETRIES or not vanished:
                    raise
                time.sleep(RETRY_PAUSE * 2**attempt)

    def _source(self, table: str, run: str | None) -> str:
        """The table's rows, its parts unioned by name. A column today's schema has and no part
        does (the parts predate it) reads as null, typed, rather than failing every query."""
        files = self.parts(table, run)
        if not files:  # an empty view with the table's schema
            name = f"_empty_{table}"
            empty = SCHEMAS[table].append(pa.field("cohort", pa.string())).append(pa.field("run", pa.string()))
            self.con.register(name, empty.empty_table())
            return name
        listed = ", ".join("'" + str(f).replace("'", "''") + "'" for f in files)
        source = (
            f"read_parquet([{listed}], hive_partitioning = true, union_by_name = true, "
            "hive_types = {'cohort': VARCHAR, 'run': VARCHAR}" + (", filename = true" if table == "runs" else "") + ")"
        )
        if table == "runs":  # a manifest update writes the new part before it removes the old: keep each run's newest
            source = (
                f"(SELECT * EXCLUDE (filename) FROM {source} QUALIFY row_number() OVER (PARTITION BY cohort, run "
                r"ORDER BY CAST(regexp_extract(filename, 'part-(\d+)\.parquet$', 1) AS BIGINT) DESC) = 1)"
            )
        present = {c for f in files for c in self._columns.get(f, ())}
        missing = [f for f in SCHEMAS[table] if f.name not in present]
        if not missing:
            return source
        name = f"_missing_{table}_" + hashlib.sha1(" ".join(f.name for f in missing).encode()).hexdigest()[:8]  # one per column set
        self.con.register(name, pa.schema(missing).empty_table())
        return f"(SELECT * FROM {source} LEFT JOIN {name} ON false)"  # the missing columns, null and typed

    # --- queries ------------------------------------------------------------------------------
    def sql(self, query: str, scope: str | None = None, **params) -> pl.DataFrame:
        """Run one query over every run in scope, or over the files of run `scope` only."""

        def run() -> pl.DataFrame:
            try:
                self.con.execute(f"SET search_path = '{self._scope(scope)},main'")
                return self.con.sql(query, params=params or None).pl()
            except duckdb.IOException:
                self._scopes.pop(scope or "", None)  # its listing is stale: build it again
                raise

        return self._retrying(run)

    def digests(self) -> dict[str, str]:
        """One SHA-256 per recorded table (every table but `runs`, whose rows say when and where)
        over every row in scope, whatever order the rows were written in, without the columns that
        say how fast (`TIMING_COLUMNS`). The same code and seeds give the same digests however the
        work was spread over processes or machines, and a refactor that changes no number keeps them."""
        digests = {}
        for table in TABLES:
            if table == "runs":
                continue
            exclude = f" EXCLUDE ({', '.join(TIMING_COLUMNS[table])})" if table in TIMING_COLUMNS else ""
            rows = self.sql(f"SELECT *{exclude} FROM {table}").rows()
            digests[table] = hashlib.sha256("\n".join(sorted(map(repr, rows))).encode()).hexdigest()
        return digests

    def _query(self, query: str, cohort: str | None, run: str | None, **params) -> pl.DataFrame:
        """Fill `{where}` with the cohort/run filter (hive columns) and run it in the right scope."""
        where = ["true"]
        if cohort is not None:
            where.append("cohort = $cohort")
            params["cohort"] = cohort
        if run is not None:
            where.append("run = $run")
            params["run"] = run
        return self.sql(query.format(where=" AND ".join(where)), scope=run, **params)

    def close(self) -> None:
        """Close and drop the connection: a store still referenced at interpreter exit (a served
        dashboard session's) otherwise makes DuckDB's bindings report leaked objects."""
        self.con.close()
        self.con = None
