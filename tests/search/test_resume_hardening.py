"""A run directory that was cut, emptied, edited or damaged is refused with a clear message;
a finished run stays finished; a resumed run keeps the original's run options; nothing is
created for settings that cannot run."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest

from pzshell.cli import main
from pzshell.search import Search, SearchError
from pzshell.search.backends import InProcessBackend
from pzshell.search.events import CandidateDone, SearchFinished
from pzshell.search.runlog import RunLog

from .test_search import settings, trajectory

TINY = [
    "--model",
    "tiny",
    "--nsamples",
    "4",
    "--grad_samples",
    "2",
    "--seqlen",
    "64",
    "--heldout_windows",
    "2",
    "--heldout_seqlen",
    "64",
    "--cheap_windows",
    "1",
    "--cheap_seqlen",
    "32",
    "--population",
    "8",
    "--batch",
    "4",
    "--seed",
    "3",
]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PZSHELL_CACHE", str(tmp_path / "cache"))


def cli(*args) -> list[str]:
    return ["search", *TINY, *map(str, args)]


def stopped_run(out, after: int = 10, **kw):
    """A search stopped after ``after`` candidates: state.json at batch 1 (8 candidates)."""
    s = Search(settings(final_top=0, **kw), out, threads=1)
    n = [0]

    def on(ev):
        if isinstance(ev, CandidateDone):
            n[0] += 1
            if n[0] == after:
                s.stop()

    s.on_event = on
    s.run()
    state = json.loads((out / "state.json").read_text())
    assert state["batch"] == 1 and state["next_id"] == 8
    return state


def no_spin(limit: int = 200):
    """An event handler that fails a run going round in circles (it used to spin forever)."""
    n = [0]

    def on(ev):
        n[0] += 1
        if n[0] > limit:
            raise RuntimeError(f"more than {limit} events: the resumed run is spinning")

    return on


def snapshot(d) -> dict:
    return {
        p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(d.iterdir())
    }


# ---- 1. a state whose log is missing or empty ----------------------------------------------------
@pytest.mark.parametrize("damage", ["missing", "empty"])
def test_state_without_its_log_is_refused(tmp_path, damage):
    out = tmp_path / "r"
    stopped_run(out)
    log = out / "candidates.jsonl"
    if damage == "missing":
        log.unlink()
    else:
        log.write_text("")
    with pytest.raises(SearchError, match=f"candidates.jsonl is {damage}") as e:
        Search(
            settings(final_top=0, time_limit=5), out, threads=1, resume=True, on_event=no_spin()
        ).run()
    assert "state.json records 8 candidates" in str(e.value)
    assert "remove state.json" in str(e.value)


# ---- 2. a log cut short ------------------------------------------------------------------------
def test_log_cut_short_is_refused_and_replay_recovers(tmp_path):
    out = tmp_path / "r"
    stopped_run(out)
    log = out / "candidates.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:5]))
    # candidates are logged when known (a proxy reject before a full evaluation), not by id
    cut = sorted(json.loads(line)["id"] for line in lines[5:] if json.loads(line)["id"] < 8)
    ids = ", ".join(map(str, cut))
    with pytest.raises(SearchError, match=rf"lacks {len(cut)} of them \(ids {ids}\)"):
        Search(settings(final_top=0), out, threads=1, resume=True, on_event=no_spin()).run()
    # the way out the message gives: without state.json the run replays from its seed
    (out / "state.json").unlink()
    Search(settings(final_top=0), out, threads=1, resume=True).run()
    Search(settings(final_top=0), tmp_path / "ref", threads=1).run()
    assert trajectory(out) == trajectory(tmp_path / "ref")


def test_half_written_last_line_is_still_tolerated(tmp_path):
    out = tmp_path / "r"
    stopped_run(out)  # 10 candidates logged; two belong to the batch the state has not completed
    log = out / "candidates.jsonl"
    data = log.read_bytes()
    last = data.rstrip(b"\n").rfind(b"\n") + 1
    log.write_bytes(data[: last + (len(data) - last) // 2])  # killed while writing id 9
    Search(settings(final_top=0), out, threads=1, resume=True).run()
    Search(settings(final_top=0), tmp_path / "ref", threads=1).run()
    assert trajectory(out) == trajectory(tmp_path / "ref")


# ---- 3. settings edited under a run ------------------------------------------------------------
def test_edited_settings_json_is_refused(tmp_path, capsys):
    out = tmp_path / "r"
    stopped_run(out)
    path = out / "settings.json"
    saved = json.loads(path.read_text())
    saved["settings"]["seed"] = saved["settings"]["fitness"]["seed"] = 99
    saved["settings"]["fitness"]["sparsity_ratio"] = 0.7
    path.write_text(json.dumps(saved))
    before = snapshot(out)
    assert main(["search", "--resume", str(out)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{path} was edited" in err
    assert snapshot(out) == before


def test_settings_json_of_another_run_is_refused(tmp_path):
    out = tmp_path / "r"
    stopped_run(out)
    other = tmp_path / "o"
    stopped_run(other, seed=4)
    shutil.copy(other / "settings.json", out / "settings.json")  # consistent in itself
    with pytest.raises(SearchError, match="settings.json is not the settings this search ran"):
        Search(settings(final_top=0, seed=4), out, threads=1, resume=True)


# ---- 4. the final stage ------------------------------------------------------------------------
def finals_in(out, reference: bool = False) -> list[str]:
    """The finals logged in ``out`` (with ``reference``: the reference rule's final too)."""
    return [
        r["canonical"]
        for r in RunLog(out).read()[0]
        if r["stage"] == "final" and (reference or not r.get("reference"))
    ]


def test_resume_of_a_finished_run_changes_nothing(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(cli("--budget", 12, "--final-top", 2, "--no-cache", "--out", out)) == 0
    capsys.readouterr()
    before = snapshot(out)
    assert len(finals_in(out)) == 2
    assert len(finals_in(out, reference=True)) in (2, 3)  # the reference's, unless a finalist
    assert main(["search", "--resume", str(out)]) == 0
    text = " ".join(capsys.readouterr().err.split())
    assert "already finished" in text and "nothing to do" in text
    events = []
    fin = Search(settings(budget=12), out, threads=1, resume=True, on_event=events.append).run()
    assert fin.already_finished and len(fin.finals) == 2 and fin.evaluations == 12
    assert not any(isinstance(e, CandidateDone) for e in events)
    assert snapshot(out) == before


@pytest.mark.parametrize("when", ["during", "after"])
def test_interrupted_final_stage_continues_where_it_stopped(tmp_path, when):
    out = tmp_path / "r"

    def killer(ev):
        if when == "during" and isinstance(ev, CandidateDone) and ev.record["stage"] == "final":
            raise KeyboardInterrupt
        if when == "after" and isinstance(ev, SearchFinished):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Search(settings(budget=12), out, threads=1, on_event=killer).run()
    logged = finals_in(out, reference=True)
    if when == "during":
        assert len(logged) == 1
    else:  # the two finals and the reference's own (here not among them)
        assert len(finals_in(out)) == 2 and len(logged) == 3
    events = []
    fin = Search(settings(budget=12), out, threads=1, resume=True, on_event=events.append).run()
    recomputed = [
        e.record["canonical"]
        for e in events
        if isinstance(e, CandidateDone) and e.record["stage"] == "final"
    ]
    assert not set(recomputed) & set(logged)  # finals already logged are not recomputed
    every = finals_in(out, reference=True)
    assert len(recomputed) == len(every) - len(logged) and len(every) == len(set(every)) == 3
    assert sorted(finals_in(out)) == sorted(f["canonical"] for f in fin.finals)
    assert len(finals_in(out)) == 2  # no duplicate rows
    assert Search(settings(budget=12), out, threads=1, resume=True).run().already_finished


# ---- 5. run options survive a resume -----------------------------------------------------------
def test_resume_keeps_the_run_options(tmp_path, monkeypatch):
    import pzshell.cli.search_cmd as search_cmd
    import pzshell.search.cache as cache_mod

    # two workers are asked for; evaluate in this process anyway (the 2 CPUs are shared)
    monkeypatch.setattr(
        Search,
        "_make_backend",
        lambda self: InProcessBackend(self.s.fitness, device=self.device, threads=1),
    )
    made = []
    real_cache = cache_mod.FitnessCache
    monkeypatch.setattr(
        cache_mod, "FitnessCache", lambda *a, **k: made.append(1) or real_cache(*a, **k)
    )
    seen = {}
    real_search = search_cmd.Search

    def spy(*a, **kw):
        seen.clear()
        seen.update(kw)
        return real_search(*a, **kw)

    monkeypatch.setattr(search_cmd, "Search", spy)
    out = tmp_path / "r"
    args = ("--budget", 8, "--final-top", 0, "--no-cache", "--workers", 2, "--out", out)
    assert main(cli(*args)) == 0
    options = json.loads((out / "settings.json").read_text())["options"]
    assert options["cache"] is False and options["workers"] == 2
    assert not made
    assert main(["search", "--resume", str(out), "--budget", "12"]) == 0
    assert not made, "--resume forgot --no-cache"
    assert seen["workers"] == 2 and seen["backend"] == "processes"
    # given again, an option wins
    assert (
        main(["search", "--resume", str(out), "--budget", "16", "--cache", "--workers", "1"]) == 0
    )
    assert made and seen["workers"] == 1 and seen["backend"] == "in-process"
    assert json.loads((out / "settings.json").read_text())["options"]["cache"] is True


# ---- 6. nonsense numbers and settings: refused before anything is created ----------------------
@pytest.mark.parametrize(
    "extra,message",
    [
        (["--workers", "0"], "--workers must be at least 1"),
        (["--time-limit", "-1"], "--time-limit must be a positive number"),
        (["--time-limit", "0"], "--time-limit must be a positive number"),
        (["--population", "-2"], "population must be at least 2"),
        (["--budget", "-5"], "budget must be at least 1"),
        (["--batch", "-1"], "batch must be at least 1"),
        (["--sparsity_type", "3:2"], "sparsity type 3:2"),
        (["--sparsity_type", "bogus"], "neither 'unstructured' nor N:M"),
        (["--sparsity_ratio", "1.5"], "--sparsity_ratio must be in"),
        (["--seqlen", "0"], "--seqlen must be at least"),
    ],
)
def test_nonsense_is_refused_before_anything_is_created(tmp_path, capsys, extra, message):
    out = tmp_path / "new"
    assert main(cli("--budget", 8, *extra, "--out", out)) == 2
    assert message in " ".join(capsys.readouterr().err.split())
    assert not out.exists()


def test_directory_with_settings_that_cannot_run_is_refused_every_time(tmp_path, capsys):
    out = tmp_path / "old"
    out.mkdir()
    s = settings().to_dict()
    s["fitness"]["sparsity_type"] = "3:2"  # left by an older pzshell that wrote it first
    (out / "settings.json").write_text(json.dumps({"settings": s}))
    for _ in range(2):
        assert main(["search", "--resume", str(out)]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert "settings.json holds settings that cannot run" in err
        assert "start a new --out directory" in err
    assert sorted(p.name for p in out.iterdir()) == ["settings.json"]


# ---- 7. damaged files, and files where directories belong --------------------------------------
def test_damaged_run_files_and_file_paths_are_clear_errors(tmp_path, capsys):
    good = tmp_path / "good"
    stopped_run(good)
    state = (good / "state.json").read_bytes()

    def damaged(name: str, filename: str, data: bytes):
        d = tmp_path / name
        shutil.copytree(good, d)
        (d / filename).write_bytes(data)
        return d

    cases = [
        (damaged("bytes", "state.json", os.urandom(200) + b"\xff"), "state.json is damaged"),
        (damaged("half", "state.json", state[: len(state) // 2]), "state.json is damaged"),
        (damaged("shape", "state.json", b'{"batch": "x"}'), "state.json is damaged"),
        (damaged("list", "state.json", b"[1, 2]"), "state.json is damaged"),
        (damaged("sjson", "settings.json", b'{"settings": {"pop'), "settings.json is damaged"),
        (damaged("skeys", "settings.json", b'{"settings": {"x": 1}}'), "settings.json is not"),
    ]
    for d, message in cases:
        assert main(["search", "--resume", str(d)]) == 2, d
        err = " ".join(capsys.readouterr().err.split())
        assert message in err and str(d) in err, (d, err)
        assert "Traceback" not in err
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory\n")
    assert main(["search", "--resume", str(a_file)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"cannot resume {a_file}: it is a file" in err
    assert main(cli("--budget", 8, "--out", a_file)) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{a_file} is a file, not a directory" in err
    assert a_file.read_text() == "not a directory\n"
    with pytest.raises(SearchError, match="it is a file"):
        Search(settings(), a_file, resume=True)
