"""The fault campaign, short: `stockpipe chaos` on ~100k records must find nothing wrong.

It runs its own broker (free port, temporary data dir) and its own S3 endpoint,
so it never touches the session's broker. 3 SIGKILLs of the stream, a broker
stop/start, a 5 s object-store outage and a producer kill/restart with a
re-sent range; every check of the table must be zero / 100 %.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]


def test_chaos_campaign_finds_no_loss_no_duplicate_no_crash(tmp_path: Path) -> None:
    report = tmp_path / "chaos.json"
    done = subprocess.run(
        [
            sys.executable, "-m", "flows.cli", "chaos",
            "--ticks", "100000", "--kills", "3", "--store-outage", "5s", "--rate", "5000",
            "--seed", "11", "--out", str(report), "--workdir", str(tmp_path / "work"),
        ],
        cwd=REPO,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=1200,  # a generous deadline for a hung run, not a speed assertion
        check=False,
    )  # fmt: skip
    assert report.exists(), done.stdout[-5000:] + done.stderr[-5000:]
    result = json.loads(report.read_text())
    checks = {c["check"]: c for c in result["checks"]}
    failed = [c for c in result["checks"] if not c["ok"]]
    assert not failed, (failed, result["crashes"], result["mismatches"], result["events"])
    for name in (
        "lost ticks",
        "duplicated ticks",
        "revisions written twice with different content",
        "rows held more than once in the lake",
        "bar revisions missing below a window's highest",
        "file names written again with other rows",
        "stream crashes",
    ):
        assert checks[name]["figure"] == 0, checks[name]
    assert checks["final bars equal to the batch computation"]["figure"] == "100.0000%"
    info = result["info"]
    assert info["SIGKILLs of the stream (ours)"] >= 3
    assert info["broker restarts"] == 1
    assert info["producer restarts (SIGKILL)"] == 1
    assert info["records re-sent"] > 0
    assert info["object store down (s)"] >= 5
    assert done.returncode == 0, done.stdout[-3000:]
