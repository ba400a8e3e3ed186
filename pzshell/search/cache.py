"""A persistent fitness cache shared across runs (sqlite, in the user cache directory).

Key: (canonical rank key, context), where the context hashes the model fingerprint, the
calibration text, sparsity, sparsity type and every fitness setting. A pruning rule is never
evaluated twice in the same context.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from ..paths import cache_dir


class FitnessCache:
    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else cache_dir() / "fitness.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS fitness (context TEXT, key TEXT, result TEXT, "
            "PRIMARY KEY (context, key))"
        )
        self._db.commit()

    def get(self, context: str, key: str) -> dict | None:
        row = self._db.execute(
            "SELECT result FROM fitness WHERE context = ? AND key = ?", (context, key)
        ).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, context: str, key: str, result: dict) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO fitness VALUES (?, ?, ?)", (context, key, json.dumps(result))
        )
        self._db.commit()

    def close(self) -> None:
        self._db.close()
