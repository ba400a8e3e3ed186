"""A SIGKILLed search must not leave its worker processes behind (each holds a model)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(d.name))
    return out


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's bookkeeping is left


def _is_worker(pid: int) -> bool:
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def test_sigkill_of_the_search_ends_its_workers(tmp_path):
    out = tmp_path / "s"
    small = "--nsamples 4 --grad_samples 2 --seqlen 64 --heldout_windows 2 --heldout_seqlen 64"
    cmd = [sys.executable, "-m", "pzshell", "search", "--model", "tiny", *small.split()]
    cmd += ["--population", "8", "--budget", "100000", "--batch", "8", "--workers", "2"]
    cmd += ["--no-cache", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        log = out / "candidates.jsonl"
        deadline = time.time() + 180
        workers: list[int] = []
        while time.time() < deadline:
            workers = [c for c in _children(proc.pid) if _is_worker(c)]
            if len(workers) >= 2 and log.exists() and log.read_text().count("\n") >= 2:
                break
            assert proc.poll() is None, "the search ended early"
            time.sleep(0.2)
        else:
            pytest.fail("the search's two workers never got going")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        deadline = time.time() + 20
        while time.time() < deadline and any(_running(w) for w in workers):
            time.sleep(0.2)
        alive = [w for w in workers if _running(w)]
        assert not alive, f"worker processes {alive} outlived the search"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
