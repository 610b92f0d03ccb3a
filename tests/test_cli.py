"""The CLI's front door: help that loads no stage's libraries, and a missing extra named.

Each check runs `stockpipe` in a fresh interpreter, so what it imports is what a
user's shell would import, not what this test session has already loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from flows.cli import COMMANDS, MODULE_EXTRAS

# The libraries of the stages' extras: none of them is needed to print help (the base
# install's settings and Kafka client may be).
HEAVY = sorted(MODULE_EXTRAS) + ["duckdb", "pyarrow", "fsspec", "s3fs", "boto3"]

# Runs the console script's main() with sys.argv, then prints which of HEAVY it loaded;
# with BLOCK set, importing those modules fails as it does when they are not installed.
PROBE = """
import importlib.abc, json, sys
heavy, block, argv = json.loads(sys.argv[1])

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in block:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
sys.argv = ["stockpipe", *argv]
from flows.cli import main
try:
    main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print(json.dumps({"code": code, "loaded": sorted(m for m in heavy if m in sys.modules)}))
"""


def run(argv: list[str], block: list[str] = ()) -> tuple[int, list[str], str, str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps([HEAVY, list(block), argv])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    *output, last = done.stdout.rstrip("\n").split("\n")
    result = json.loads(last)
    return result["code"], result["loaded"], "\n".join(output), done.stderr


def test_top_level_help_lists_every_command_and_loads_no_stage_library() -> None:
    code, loaded, out, _ = run(["--help"])
    assert code == 0
    assert loaded == []
    for name, entry in COMMANDS.items():
        assert name in out
        assert entry.help.split()[0] in out, (name, out)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_commands_help_loads_no_stage_library(command: str) -> None:
    code, loaded, out, _ = run([command, "--help"])
    assert code == 0
    assert f"stockpipe {command}" in out
    assert loaded == [], f"stockpipe {command} --help imported {loaded}"


@pytest.mark.parametrize(
    "argv,block,extra",
    [
        (["report", "--out", "r.html"], ["plotly"], "report"),
        (["stream"], ["bytewax"], "stream"),
        (["transform"], ["dbt"], "warehouse"),
        (["report", "--out", "r.html"], ["duckdb"], "report"),  # [warehouse] brings it too
        (["chaos", "--help"], [], None),  # help needs nothing, even without [bench]
        (["bench", "--ticks", "10"], ["quixstreams", "polars"], "bench"),
    ],
)
def test_a_missing_extra_is_named_with_the_install_command(
    argv: list[str], block: list[str], extra: str | None
) -> None:
    code, _, out, err = run(argv, block)
    if extra is None:
        assert code == 0, err
        return
    assert code == 1, out + err
    assert f"stockpipe {argv[0]} needs the [{extra}] extra" in err, err
    assert f"pip install 'stockpipe[{extra}]'" in err
    assert "Traceback" not in err


def test_a_library_behind_no_extra_is_named_by_the_commands_extras() -> None:
    """`load` without pyarrow (which several extras bring) names the load's own extra."""
    code, _, _, err = run(["load"], ["pyarrow"])
    assert code == 1
    assert "stockpipe load needs the [warehouse] extra (the module 'pyarrow'" in err, err


def test_exit_codes_tell_a_bad_setting_from_a_service_that_is_down(tmp_path) -> None:
    """2 for a bad setting, 69 (EX_UNAVAILABLE) for a broker nobody runs: scripts can tell."""
    import os
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = {**os.environ, "STOCKPIPE_SPOOL_DIR": str(tmp_path / "spool")}
    command = [sys.executable, "-m", "flows.cli", "produce", "--source", "sim", "--count", "1"]
    down = subprocess.run(
        command,
        env={**base, "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert down.returncode == 69, down.stderr[-1000:]
    assert f"cannot reach Kafka at 127.0.0.1:{port}" in " ".join(down.stderr.split())
    bad = subprocess.run(
        command,
        env={**base, "KAFKA_SECURITY_PROTOCOL": "TLS"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2, bad.stderr[-1000:]
    assert "KAFKA_SECURITY_PROTOCOL='TLS'" in bad.stderr and "Traceback" not in bad.stderr


def test_version_and_log_level_and_json_logs(tmp_path) -> None:
    import os
    from importlib.metadata import version

    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.strip() == f"stockpipe {version('stockpipe')}"
    # a run that logs (the settings check of the stream), at DEBUG and as JSON lines
    env = {
        **os.environ,
        "STOCKPIPE_LOG_FORMAT": "json",
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",  # nothing there: the command stops at once
        "STOCKPIPE_RECOVERY_DIR": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, "-c", "from flows.logs import setup_logging; import logging; "
         "setup_logging(); logging.getLogger('x').debug('deep'); logging.getLogger('x').info('hi')"],
        env={**env, "STOCKPIPE_LOG_LEVEL": "DEBUG"}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert [(d["level"], d["logger"], d["message"]) for d in lines] == [
        ("DEBUG", "x", "deep"),
        ("INFO", "x", "hi"),
    ]
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "--log-level", "warning", "stream", "--exit-when-idle", "1s"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 69
    assert not [line for line in done.stderr.splitlines() if '"level": "INFO"' in line]
    bad = subprocess.run(
        [sys.executable, "-m", "flows.cli", "--log-level", "loud", "status"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and "loud" in bad.stderr


# -- help that shows every default ------------------------------------------------------


def _leaves() -> list[tuple[str, ...]]:
    """Every command line that has options of its own: the root, each command, each
    subcommand of a group (`kafka start`)."""
    from flows.cli import _load

    paths: list[tuple[str, ...]] = [()]
    for name in COMMANDS:
        group = getattr(_load(name), "commands", None)
        paths += [(name, sub) for sub in group] if group else [(name,)]
    return paths


def _command(path: tuple[str, ...]):
    from flows.cli import _load, app

    command = app if not path else _load(path[0])
    for sub in path[1:]:
        command = command.commands[sub]
    return command


def _shown_default(param) -> str | None:
    """What `[default: …]` must say for an option, from its definition (None: a switch,
    off unless given)."""
    from enum import Enum

    if isinstance(param.show_default, str):
        return f"({param.show_default})"  # how Typer shows a default described in words
    if param.is_flag and not param.secondary_opts:
        assert param.default is False, param.opts
        return None
    if param.is_flag:  # --progress/--no-progress
        return (param.opts[0] if param.default else param.secondary_opts[0]).lstrip("-")
    assert param.default not in (None, ""), (
        f"{param.opts}: say what happens without it (show_default='…')"
    )
    return param.default.value if isinstance(param.default, Enum) else str(param.default)


@pytest.mark.parametrize("path", _leaves(), ids=lambda p: " ".join(p) or "stockpipe")
def test_every_options_help_shows_its_default_and_every_bracket(path: tuple[str, ...]) -> None:
    """Rich reads `[...]` in help as markup and drops it: every default, and every bracket
    a help text holds, must reach the screen."""
    import os
    import re

    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", *path, "--help"],
        env={**os.environ, "COLUMNS": "400"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.replace("│", " ").split())
    options = [p for p in _command(path).params if p.param_type_name == "option"]
    if path == ("load",):  # the options are found (the rest holds for every one of them)
        assert {"--batch-files", "--since", "--json"} <= {o for p in options for o in p.opts}
    for param in options:
        want = _shown_default(param)
        if want is not None:
            assert f"[default: {want}]" in text, (param.opts, text)
        for bracket in re.findall(r"\[[^\]]*\]", param.help or ""):
            assert bracket in text, (param.opts, bracket)
    for bracket in re.findall(r"\[[^\]]*\]", _command(path).help or ""):
        assert bracket in text, bracket
