"""The run directory: an append-only JSON Lines log of evaluated candidates, settings, and the
search state (RNG + population) rewritten atomically after every batch.

Reading a run directory is checked as a whole (:func:`load_settings`, :func:`load_state`,
:func:`check_consistent`): a damaged or edited file, or a state and a log that disagree, is a
:class:`SearchError` naming the file and what is wrong, never a traceback or a silent loss.
"""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path

from .. import atomic
from .settings import SearchError, SearchSettings

log = logging.getLogger(__name__)

LOG_NAME = "candidates.jsonl"
STATE_NAME = "state.json"
SETTINGS_NAME = "settings.json"
GRADIENTS_NAME = "grads.pth"  # the G the candidates are scored with, in the published format

_REPLAY = (
    f"remove {STATE_NAME} to replay the search from its seed (the candidates in {LOG_NAME} are "
    f"reused, the others evaluated again), or start a new --out directory"
)


class RunLog:
    """The files of one run directory. Nothing is created until :meth:`create`."""

    def __init__(self, out_dir: str | Path):
        self.dir = Path(out_dir)
        self.path = self.dir / LOG_NAME

    def create(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)

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
        if not self.path.is_file():
            raise SearchError(f"{self.path} is not a file; a run directory's log must be one")
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
        atomic.write_text(self.dir / name, _dumps(obj))

    def write_json_if_changed(self, name: str, obj) -> None:
        """Writes ``obj`` unless the file already holds exactly that (a resumed run that has
        nothing to do changes nothing)."""
        p = self.dir / name
        text = _dumps(obj)
        try:
            if p.read_text(encoding="utf-8") == text:
                return
        except (OSError, UnicodeDecodeError):
            pass
        atomic.write_text(p, text)

    def read_json(self, name: str):
        """The JSON in ``name``, or None when there is no such file; a file that cannot be read
        or is not JSON is a :class:`SearchError` naming it."""
        p = self.dir / name
        if not p.exists():
            return None
        if not p.is_file():
            raise SearchError(f"{p} is not a file")
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise SearchError(
                f"{p} is damaged: it is not text (byte {e.start}); {_hint(name)}"
            ) from None
        except json.JSONDecodeError as e:
            raise SearchError(
                f"{p} is damaged: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}; "
                f"cut short by a kill or edited by hand?); {_hint(name)}"
            ) from None
        except OSError as e:
            raise SearchError(f"cannot read {p} ({e.strerror or e})") from None


def _dumps(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def _hint(name: str) -> str:
    if name == STATE_NAME:
        return _REPLAY
    if name == SETTINGS_NAME:
        return "restore it or start a new --out directory"
    return "restore it or remove it"


def check_run_dir(out_dir: str | Path, *, resume: bool) -> None:
    """Refuses a run directory that is not one: a regular file, a missing directory to resume,
    or a place where nothing can be written. Writes nothing that stays."""
    d = Path(out_dir)
    if resume:
        if not d.exists():
            raise SearchError(f"cannot resume {d}: no such directory")
        if not d.is_dir():
            raise SearchError(f"cannot resume {d}: it is a file, not a search directory")
        if not (d / SETTINGS_NAME).exists():
            raise SearchError(f"{d} is not a search directory (no {SETTINGS_NAME})")
    why = atomic.why_not_writable(d, is_dir=True)
    if why:
        raise SearchError(f"cannot use {d} as a search directory: {why}")


def load_settings(out_dir: str | Path) -> tuple[SearchSettings, dict]:
    """The settings a run directory was started with (checked against their digest), and its
    run options (backend, workers, device, cache, ...; ``{}`` for older directories)."""
    rl = RunLog(out_dir)
    p = rl.dir / SETTINGS_NAME
    saved = rl.read_json(SETTINGS_NAME)
    if saved is None:
        raise SearchError(f"{rl.dir} is not a search directory (no {SETTINGS_NAME})")
    try:
        if not isinstance(saved, dict):
            raise ValueError(f"it holds a JSON {type(saved).__name__}, not an object")
        settings = SearchSettings.from_dict(saved.get("settings"))
    except (TypeError, ValueError) as e:
        raise SearchError(
            f"{p} is not a search's settings ({e}); restore it or start a new --out directory"
        ) from None
    try:
        settings.validate()
    except SearchError as e:
        raise SearchError(
            f"{p} holds settings that cannot run ({e}); a search cannot continue with them: "
            f"start a new --out directory with valid settings"
        ) from None
    digest = saved.get("digest")
    if digest is not None and digest != settings.digest():
        raise SearchError(
            f"{p} was edited after the search started (its settings no longer match the "
            f"digest stored with them); a search cannot mix two settings: restore the file or "
            f"start a new --out directory"
        )
    options = saved.get("options")
    return settings, options if isinstance(options, dict) else {}


_STATE_INTS = ("batch", "evaluations", "cache_hits", "next_id")


def load_state(out_dir: str | Path) -> dict | None:
    """The saved search state, checked for shape (a damaged file is an error naming it)."""
    rl = RunLog(out_dir)
    state = rl.read_json(STATE_NAME)
    if state is None:
        return None
    p = rl.dir / STATE_NAME
    try:
        if not isinstance(state, dict):
            raise ValueError(f"it holds a JSON {type(state).__name__}, not an object")
        for k in _STATE_INTS:
            v = state.get(k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"'{k}' is {v!r}, not a count")
        pop = state.get("population")
        if not isinstance(pop, list) or not all(isinstance(i, int) for i in pop):
            raise ValueError("'population' is not a list of candidate ids")
        rng = state.get("rng")
        if not isinstance(rng, list) or len(rng) != 3 or not isinstance(rng[1], list):
            raise ValueError("'rng' is not a random generator's state")
        try:
            random.Random().setstate((rng[0], tuple(rng[1]), rng[2]))
        except (TypeError, ValueError) as e:
            raise ValueError(f"'rng' is not a random generator's state ({e})") from None
    except ValueError as e:
        raise SearchError(f"{p} is damaged ({e}); {_REPLAY}") from None
    return state


def check_consistent(out_dir: str | Path, state: dict, records: list[dict], digest: str) -> None:
    """Refuses a state that the log or the settings do not back: the state was saved after
    every candidate of its completed batches was in the log (fsynced), so a candidate it counts
    that the log lacks was lost (a log cut short, emptied or replaced); and a settings digest
    other than the state's means ``settings.json`` changed under the run. A half-written last
    line belongs to the batch the state has not completed, so it is never counted here."""
    d = Path(out_dir)
    if state.get("settings_digest") not in (None, digest):
        raise SearchError(
            f"cannot resume {d}: {d / SETTINGS_NAME} is not the settings this search ran with "
            f"(their digest differs from the one in {STATE_NAME}); a search cannot mix two "
            f"settings: restore {SETTINGS_NAME} or start a new --out directory"
        )
    done = state["batch"]
    have = {r.get("id") for r in records if r.get("stage") != "final" and r.get("batch", 0) < done}
    expected = set(range(state["next_id"])) | set(state["population"])
    missing = sorted(expected - have)
    if not missing:
        return
    log_path = d / LOG_NAME
    if not log_path.exists():
        what = f"{log_path} is missing"
    elif not records:
        what = f"{log_path} is empty"
    else:
        shown = ", ".join(map(str, missing[:8])) + (", ..." if len(missing) > 8 else "")
        what = f"{log_path} lacks {len(missing)} of them (ids {shown}): it was cut or replaced"
    raise SearchError(
        f"cannot resume {d}: {d / STATE_NAME} records {state['next_id']} candidates "
        f"({state['evaluations']} evaluations) in {done} batches, but {what}. Resuming would lose "
        f"those evaluations for good; {_REPLAY}"
    )
