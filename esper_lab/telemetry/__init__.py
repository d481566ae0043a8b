"""Telemetry (Nissa/Karn): the Parquet flight recorder, the DuckDB store over it, and replay."""

from esper_lab.telemetry.recorder import Recorder
from esper_lab.telemetry.replay import ReplayResult, branch, replay
from esper_lab.telemetry.schema import HEADS, SCHEMA_VERSION, SCHEMAS, TABLES
from esper_lab.telemetry.store import CorruptPart, Store

__all__ = ["HEADS", "SCHEMAS", "SCHEMA_VERSION", "TABLES", "CorruptPart", "Recorder", "ReplayResult", "Store", "branch", "replay"]
