"""The run directory: an append-only JSON Lines log of evaluated candidates, settings, and the
search state (RNG + population) rewritten atomically after every batch."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from .. import atomic

log = logging.getLogger(__name__)

LOG_NAME = "candidates.jsonl"
STATE_NAME = "state.json"
SETTINGS_NAME = "settings.json"


class RunLog:
    def __init__(self, out_dir: str | Path):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / LOG_NAME

    def append(self, record: dict) -> None:
        line = json.dumps(record, sort_keys=True)
        with open(self.path, "a+b") as f:
            # a process killed mid-write leaves a line without its newline: close it first, so
            # that the fragment stays one corrupt line instead of swallowing this record
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")
            f.write(line.encode("utf-8") + b"\n")
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> tuple[list[dict], list[str]]:
        """Records in order, and warnings for lines that are corrupt or truncated (skipped)."""
        records, warnings = [], []
        if not self.path.exists():
            return records, warnings
        with open(self.path, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    if not isinstance(rec, dict) or "canonical" not in rec:
                        raise ValueError("not a candidate record")
                    records.append(rec)
                except ValueError as e:
                    warnings.append(f"{self.path}:{lineno}: skipped a corrupt log line ({e})")
        return records, warnings

    def write_json(self, name: str, obj) -> None:
        atomic.write_text(self.dir / name, json.dumps(obj, indent=2, sort_keys=True) + "\n")

    def read_json(self, name: str):
        p = self.dir / name
        if not p.exists():
            return None
        return json.loads(p.read_text(encoding="utf-8"))
