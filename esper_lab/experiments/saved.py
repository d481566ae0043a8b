"""A trained policy saved beside its run's telemetry, to play again later (`esper-lab evaluate`).

The file holds plain values only (the agent's tensors, its `PolicyConfig`, the settings it was
trained under as JSON, and the run it came from), so it loads with `torch.load(weights_only=True)`
and cannot run code. It lives in the training run's folder, `<root>/cohort=<c>/run=<id>/policy.pt`:
a rerun of the member, which deletes that folder, takes a stale policy with it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from esper_lab.experiments.settings import Settings
from esper_lab.policy import Agent, PolicyConfig
from esper_lab.telemetry.parts import run_folder

FORMAT = "esper-lab policy"  # what tells a policy file from any other torch file
VERSION = 1
FILE_NAME = "policy.pt"


@dataclass(frozen=True)
class SavedPolicy:
    agent: Agent
    settings: dict[str, Any]  # the values `Settings.build` takes back
    run_id: str  # the training run: the re-evaluation's parent
    cohort: str
    preset: str | None


def policy_path(root: str | Path, cohort: str, run_id: str) -> Path:
    """Where a run's trained policy lives: inside the run's telemetry folder."""
    return run_folder(root, cohort, run_id) / FILE_NAME


def save_policy(path: str | Path, agent: Agent, settings: Settings, run_id: str, cohort: str, preset: str | None = None) -> Path:
    """Write the agent and what rebuilds it atomically (temp file, fsync, `os.replace`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "agent": agent.state_dict(),
        "policy_config": dataclasses.asdict(agent.config),
        "settings": json.dumps(settings.to_dict()),
        "run_id": run_id,
        "cohort": cohort,
        "preset": preset,
    }
    temp = path.with_name(f".{path.name}.tmp")
    with open(temp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)
    return path


def load_policy(path: str | Path) -> SavedPolicy:
    """The saved agent (weights loaded) and its settings; a missing file raises
    FileNotFoundError and any other file ValueError, each naming the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no policy file at {path}")
    try:
        payload = torch.load(path, weights_only=True)
    except Exception as error:  # noqa: BLE001 - a foreign file fails in the unpickler any of many ways (EOFError, KeyError, ...)
        raise ValueError(f"{path} is not an esper-lab policy file (torch.load: {type(error).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not an esper-lab policy file")
    if payload["version"] != VERSION:
        raise ValueError(f"{path} is policy file version {payload['version']}; this esper-lab reads version {VERSION}")
    agent = Agent(PolicyConfig(**payload["policy_config"]))
    agent.load_state_dict(payload["agent"])
    return SavedPolicy(agent, json.loads(payload["settings"]), payload["run_id"], payload["cohort"], payload["preset"])
