"""Telemetry (Nissa/Karn): the Parquet flight recorder and the DuckDB store over it."""

from esper_lab.telemetry.recorder import Recorder
from esper_lab.telemetry.schema import SCHEMA_VERSION, SCHEMAS, TABLES
from esper_lab.telemetry.store import CorruptPart, Store

__all__ = ["SCHEMAS", "SCHEMA_VERSION", "TABLES", "CorruptPart", "Recorder", "Store"]
