"""Studies as plug-ins: each study is one folder here that owns its pack files (`*.toml`) and its
exit gates (`gates(pack, evidence) -> list[Gate]` in its `__init__`). A new study is a new folder;
nothing else changes. A pack file outside this folder names its study with `study = "..."`."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

STUDIES_DIR = Path(__file__).parent


def study_names() -> tuple[str, ...]:
    """Every study shipped in the package (a folder with an `__init__.py`)."""
    return tuple(sorted(p.parent.name for p in STUDIES_DIR.glob("*/__init__.py")))


def pack_files() -> dict[str, Path]:
    """Every shipped pack file by pack name (its file name without `.toml`)."""
    return {path.stem: path for path in sorted(STUDIES_DIR.glob("*/*.toml"))}


def study_of(path: Path) -> str | None:
    """The study a shipped pack file belongs to (its folder), or None for a file elsewhere."""
    folder = path.resolve().parent
    return folder.name if folder.parent == STUDIES_DIR.resolve() and folder.name in study_names() else None


def study_gates(study: str) -> Callable:
    """The exit gates a study's report judges (imported only when a report needs them)."""
    return importlib.import_module(f"{__name__}.{study}").gates
