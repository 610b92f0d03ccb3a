"""docker-compose.yml agrees with the code: services, commands, settings, volumes.

No Docker engine is needed. The file is read with PyYAML (anchors and merge keys
resolved); `${VAR:-default}` is filled in from .env.example the way Compose does.
Every `stockpipe ...` command line in it is parsed by the real Typer/click app,
so a renamed command or option fails here, not at `docker compose up`.
"""

from __future__ import annotations

import ast
import copy
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices

try:  # recent Typer builds its commands on a vendored copy of click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older Typer on the real click
    from click import exceptions as click_exceptions

from flows.cli import COMMANDS, INCLUDES, MODULE_EXTRAS, app
from flows.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
VALIDATE = ROOT / "infra" / "ci" / "validate-compose.sh"
STOCKPIPE_IMAGE_DOCKERFILE = "infra/docker/Dockerfile"

EXPECTED_SERVICES = {
    "kafka",
    "kafka-init",
    "minio",
    "minio-init",
    "postgres",
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "producer",
    "recovery-init",
    "stream-0",
    "stream-1",
    "dbt-docs",
    "report",
    "prometheus",
    "node-exporter",
    "grafana",
}
HEALTHCHECKED = {
    "kafka",
    "minio",
    "postgres",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "producer",
    "stream-0",
    "stream-1",
    "dbt-docs",
    "report",
    "prometheus",
    "node-exporter",
    "grafana",
}
# What compose decides for the stockpipe containers over the env_file: their names and
# paths inside the stack, and the metrics port. Every other setting comes from .env.
CONTAINER_FIXED = {
    "KAFKA_BOOTSTRAP_SERVERS",
    "S3_ENDPOINT_URL",
    "STOCKPIPE_LAKE_URL",
    "STOCKPIPE_RECOVERY_DIR",
    "STOCKPIPE_SPOOL_DIR",
    "STOCKPIPE_DBT_TARGET_PATH",
    "STOCKPIPE_OUTAGE_LOG",
    "STOCKPIPE_REPORT_PATH",
    "STOCKPIPE_METRICS_PORT",
    "STOCKPIPE_METRICS_DIR",
}
# Variables a stockpipe-image container may carry besides stockpipe's settings:
# Airflow's own configuration (AIRFLOW__SECTION__KEY) and the init job's
# AIRFLOW_ADMIN_* and AIRFLOW_FERNET_KEY inputs, Bytewax's and Python's runtime switches.
OTHER_ENV_PREFIXES = ("AIRFLOW__", "AIRFLOW_ADMIN_", "BYTEWAX_")
OTHER_ENV_NAMES = {"PYTHONUNBUFFERED", "AIRFLOW_FERNET_KEY"}
SHELL_BREAKS = {";", "&&", "||", "|", "&", "then", "else", "fi", "do", "done"}


def settings_aliases() -> set[str]:
    aliases = set()
    for info in Settings.model_fields.values():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            aliases.update(str(choice) for choice in alias.choices)
        elif alias:
            aliases.add(str(alias))
    return aliases


def env_example() -> dict[str, str]:
    """The uncommented NAME=value lines of .env.example."""
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error} and $$, over a parsed document."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.groups()
        current = env.get(name)
        if op in (":-", "-"):
            return current if current or (op == "-" and current is not None) else arg
        if op in (":?", "?") and not current:
            raise AssertionError(f"${{{name}}} is required by docker-compose.yml: {arg}")
        return current or ""

    return _VAR.sub(one, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    raw = yaml.safe_load(COMPOSE.read_text())
    return interpolate(raw, env_example())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def uses_stockpipe_image(service: dict[str, Any]) -> bool:
    build = service.get("build")
    return isinstance(build, dict) and build.get("dockerfile") == STOCKPIPE_IMAGE_DOCKERFILE


def as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def closure(extras: set[str] | tuple[str, ...]) -> set[str]:
    """The extras, with those they bring (flows.cli.INCLUDES: airflow brings warehouse)."""
    held, todo = set(), list(extras)
    while todo:
        extra = todo.pop()
        if extra not in held:
            held.add(extra)
            todo += INCLUDES.get(extra, ())
    return held


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def stockpipe_command_lines(service: dict[str, Any]) -> list[list[str]]:
    """Every `stockpipe` argv a service runs: its command under the image's
    `stockpipe` entrypoint, or each `stockpipe ...` inside a `sh -c` script."""
    entrypoint = as_list(service.get("entrypoint"))
    command = as_list(service.get("command"))
    if not entrypoint:
        return [command] if command else []
    if entrypoint == ["stockpipe"]:
        return [command]
    script = " ".join(entrypoint[2:] + command) if entrypoint[:2] == ["/bin/sh", "-c"] else ""
    lines = []
    for script_line in script.splitlines():
        lexer = shlex.shlex(script_line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens = list(lexer)
        for i, token in enumerate(tokens):
            if token == "stockpipe" and (i == 0 or tokens[i - 1] in SHELL_BREAKS | {"exec"}):
                args = []
                for arg in tokens[i + 1 :]:
                    if arg in SHELL_BREAKS:
                        break
                    args.append(arg)
                lines.append(args)
    return lines


def check_cli(args: list[str]) -> None:
    """Parse `stockpipe ARGS` with the real click command tree (nothing is invoked)."""
    command = app  # the click group behind `stockpipe`; it loads a command when asked for it
    path = ["stockpipe"]
    while hasattr(command, "list_commands"):  # a group: the next word names a subcommand
        assert args, f"`{' '.join(path)}` needs a subcommand"
        name, args = args[0], args[1:]
        sub = command.get_command(None, name)
        assert sub is not None, f"`{' '.join(path)} {name}`: no such command"
        command, path = sub, [*path, name]
    known = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
    for arg in args:
        if arg.startswith("-") and not re.fullmatch(r"-\d.*", arg):
            assert arg.split("=", 1)[0] in known, (
                f"`{' '.join(path)}` has no option {arg} (known: {sorted(known)})"
            )
    try:
        command.make_context(" ".join(path), list(args))
    except click_exceptions.UsageError as exc:
        raise AssertionError(f"`{' '.join([*path, *args])}`: {exc.format_message()}") from None


def test_expected_services_exist(services: dict[str, Any]) -> None:
    missing = EXPECTED_SERVICES - set(services)
    assert not missing, f"docker-compose.yml lacks services {sorted(missing)}"
    assert services["kafka"]["image"].startswith("apache/kafka:4.")
    assert services["postgres"]["image"].startswith("postgres:")
    assert "minio/minio" in services["minio"]["image"]
    assert "minio/mc" in services["minio-init"]["image"]


def test_every_stockpipe_command_is_real(services: dict[str, Any]) -> None:
    checked = {}
    for name, service in services.items():
        if not uses_stockpipe_image(service):
            continue
        for args in stockpipe_command_lines(service):
            check_cli(args)
            checked.setdefault(name, []).append(args[:1])
    # the parser must have seen the commands that matter, or it checks nothing
    assert checked["producer"] == [["produce"], ["produce"], ["produce"]]
    assert checked["stream-0"] == checked["stream-1"] == [["stream"]]


def test_check_cli_rejects_what_the_cli_rejects() -> None:
    check_cli(["stream", "--process-id", "0", "--addresses", "a:1;b:1"])
    check_cli(["produce", "--source", "sim", "--speed", "60"])
    for bad in (
        ["streams"],
        ["stream", "--process", "0"],
        ["produce", "--source", "bloomberg"],
        ["stream", "--workers", "0"],
        ["kafka"],
    ):
        with pytest.raises(AssertionError):
            check_cli(bad)


def test_stockpipe_services_set_only_known_variables(services: dict[str, Any]) -> None:
    aliases = settings_aliases()
    for name, service in services.items():
        if not uses_stockpipe_image(service):
            continue
        unknown = {
            var
            for var in environment(service)
            if var not in aliases
            and var not in OTHER_ENV_NAMES
            and not var.startswith(OTHER_ENV_PREFIXES)
        }
        assert not unknown, f"{name}: {sorted(unknown)} are not stockpipe settings (typo?)"


def test_stockpipe_services_settings_load(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The environment each container gets is accepted by flows/settings.py as is."""
    monkeypatch.chdir(tmp_path)  # no stray .env
    aliases = settings_aliases()
    for name, service in services.items():
        if not uses_stockpipe_image(service):
            continue
        for var in aliases:
            monkeypatch.delenv(var, raising=False)
        env = {k: v for k, v in environment(service).items() if k in aliases}
        for var, value in env.items():
            monkeypatch.setenv(var, value)
        settings = Settings()
        assert settings.kafka_bootstrap_servers == "kafka:9092", name
        assert settings.lake_url.startswith("s3://"), name
        assert settings.storage_options["endpoint_url"] == "http://minio:9000", name
        assert settings.warehouse == "duckdb:////data/warehouse.duckdb", name
        assert settings.duckdb_path == Path("/data/warehouse.duckdb"), name


def test_every_setting_is_in_env_example() -> None:
    text = ENV_EXAMPLE.read_text()
    # documented lines: `NAME=value`, or `# NAME=value` for a default left commented out
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", text, flags=re.MULTILINE))
    missing = settings_aliases() - documented
    assert not missing, f".env.example does not mention {sorted(missing)}"


def test_env_example_holds_no_secrets() -> None:
    secretish = re.compile(r"(SECRET|PASSWORD|PASSPHRASE|API_KEY|TOKEN|WEBHOOK|FERNET)")
    for name, value in env_example().items():
        if secretish.search(name) and value:
            assert "change-me" in value, f".env.example: {name} must be a change-me placeholder"


def test_env_example_is_a_valid_local_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Copied to .env as it is, it still gives working settings for local runs."""
    for var in settings_aliases():
        monkeypatch.delenv(var, raising=False)
    (tmp_path / ".env").write_text(ENV_EXAMPLE.read_text())
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    assert settings.lake_url == "./data/lake"
    assert settings.kafka_bootstrap_servers == "localhost:9092"


def test_stream_processes_form_one_cluster(services: dict[str, Any]) -> None:
    streams = {n: s for n, s in services.items() if re.fullmatch(r"stream-\d+", n)}
    assert len(streams) >= 2
    ids, address_lists, recovery_volumes = set(), set(), set()
    for name, service in streams.items():
        (args,) = stockpipe_command_lines(service)
        assert args[0] == "stream"
        opts = dict(zip(args[1::2], args[2::2], strict=False))
        process_id = opts.get("--process-id", opts.get("-i"))
        addresses = opts.get("--addresses", opts.get("-a"))
        assert process_id is not None and addresses, f"{name}: needs --process-id and --addresses"
        ids.add(int(process_id))
        address_lists.add(addresses)
        recovery_dir = environment(service)["STOCKPIPE_RECOVERY_DIR"]
        mounts = [v for v in service["volumes"] if v.split(":")[1] == recovery_dir]
        assert mounts, f"{name}: nothing mounted at STOCKPIPE_RECOVERY_DIR={recovery_dir}"
        recovery_volumes.add(mounts[0].split(":")[0])
        after = service.get("depends_on", {})
        assert after.get("kafka-init", {}).get("condition") == "service_completed_successfully"
        assert after.get("recovery-init", {}).get("condition") == "service_completed_successfully"
    assert ids == set(range(len(streams))), f"process ids must be 0..n-1, got {sorted(ids)}"
    assert len(address_lists) == 1, f"every process needs the same --addresses: {address_lists}"
    (addresses,) = address_lists
    hosts = [a.rsplit(":", 1)[0] for a in addresses.split(";")]
    assert hosts == [f"stream-{i}" for i in range(len(streams))], addresses
    # One shared volume: after a restart any process may read any recovery partition.
    assert len(recovery_volumes) == 1, (
        f"stream processes must share one recovery volume: {recovery_volumes}"
    )
    (volume,) = recovery_volumes
    assert "recovery-init" in services
    assert f"{volume}:/recovery" in services["recovery-init"]["volumes"]


def test_healthchecks_and_dependencies(services: dict[str, Any]) -> None:
    for name in HEALTHCHECKED:
        test = services[name].get("healthcheck", {}).get("test")
        assert test, f"{name} has no healthcheck"
    kafka_check = " ".join(as_list(services["kafka"]["healthcheck"]["test"]))
    assert "kafka-broker-api-versions.sh" in kafka_check or "kafka-topics.sh" in kafka_check
    conditions = {"service_healthy", "service_completed_successfully", "service_started"}
    for name, service in services.items():
        for dep, spec in (service.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert spec["condition"] in conditions
            if spec["condition"] == "service_healthy":
                assert services[dep].get("healthcheck"), f"{name} waits for {dep}'s health"
    assert services["airflow-apiserver"]["depends_on"]["airflow-init"] == {
        "condition": "service_completed_successfully"
    }
    assert services["kafka-init"]["depends_on"]["kafka"] == {"condition": "service_healthy"}
    assert services["minio-init"]["depends_on"]["minio"] == {"condition": "service_healthy"}


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    used = set()
    for service in compose["services"].values():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0] if isinstance(mount, str) else mount.get("source")
            if source and not source.startswith((".", "/", "~")):
                used.add(source)
    assert used, "no named volumes"
    assert used <= declared, f"undeclared named volumes: {sorted(used - declared)}"
    assert {"kafka-data", "minio-data", "postgres-data", "stream-recovery"} <= declared


def test_mounted_files_exist(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
    for path in ("infra/airflow/init.sh", STOCKPIPE_IMAGE_DOCKERFILE):
        assert (ROOT / path).is_file(), path


def test_dockerfile_builds_the_stockpipe_cli() -> None:
    text = (ROOT / STOCKPIPE_IMAGE_DOCKERFILE).read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, flags=re.MULTILINE)
    assert "-c constraints.txt" in text
    assert re.search(r"^USER (?!root)\w+", text, flags=re.MULTILINE), "runs as root"
    assert 'ENTRYPOINT ["stockpipe"]' in text
    # the wheel, not an editable tree: nothing in the image reads a checkout
    assert "pip wheel" in text and "pip install --no-deps /wheels/stockpipe-" in text
    assert " -e " not in text
    # what compose runs from /app exists there
    assert "COPY infra/airflow/ infra/airflow/" in text
    assert re.search(r'ln -s .*asset_dir\("dags"\).* /app/dags', text)


def dockerfile() -> str:
    return (ROOT / STOCKPIPE_IMAGE_DOCKERFILE).read_text()


def run_requirements_step(extras: str, out: Path) -> tuple[set[str], set[str]]:
    """The Dockerfile's requirements step, run on pyproject.toml for EXTRAS=extras:
    (the requirement lines it writes, the extras it says the image holds)."""
    script = re.search(r"<<'PY'\n(.*?)\nPY\n", dockerfile(), flags=re.DOTALL).group(1)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "pyproject.toml", out / "pyproject.toml")
    subprocess.run([sys.executable, "-c", script, extras, str(out)], check=True, timeout=60)
    lines = set((out / "requirements.txt").read_text().split("\n")) - {""}
    held = set((out / "extras.txt").read_text().split("\n")) - {""}
    return lines, held


def compose_extras() -> set[str]:
    """The EXTRAS build argument of every stockpipe image docker-compose.yml builds."""
    return {
        str(s["build"].get("args", {}).get("EXTRAS"))
        for s in raw_services().values()
        if uses_stockpipe_image(s)
    }


def default_extras() -> str:
    return re.search(r"^ARG EXTRAS=(\S*)$", dockerfile(), flags=re.MULTILINE).group(1)


@pytest.mark.parametrize("which", ["default", "compose"])
def test_dockerfile_installs_the_requirements_of_its_extras(which: str, tmp_path: Path) -> None:
    """The Dockerfile's requirements step, run on pyproject.toml: the base dependencies
    and those of each extra it names (and of the extras those bring), nothing else;
    for the default EXTRAS and for each image docker-compose.yml builds."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional = project["optional-dependencies"]
    cases = [default_extras()] if which == "default" else sorted(compose_extras())
    assert cases and "" in compose_extras()  # compose builds a base-only image too
    for i, extras in enumerate(cases):
        named = {e for e in extras.split(",") if e}
        got, held = run_requirements_step(extras, tmp_path / str(i))
        want_extras = closure(named)
        want = set(project["dependencies"])
        for extra in want_extras:
            want |= {r for r in optional[extra] if not r.startswith("stockpipe[")}
        assert got == want, extras
        assert held == want_extras, extras
        assert not {r for r in got if r.startswith(("quixstreams", "polars", "pytest", "moto"))}
    if which == "default":  # the default is every extra a deployment runs
        assert held == {"stream", "warehouse", "snowflake", "airflow", "report"}
    else:
        assert run_requirements_step("", tmp_path / "base") == (set(project["dependencies"]), set())


@pytest.mark.system
def test_compose_config_validates() -> None:
    """`docker-compose config` against the Compose schema (CI installs docker-compose first)."""
    if shutil.which("docker-compose") is None:
        pytest.fail(
            "docker-compose is not on PATH: run infra/ci/validate-compose.sh "
            "(it installs Debian's docker-compose and validates docker-compose.yml)"
        )
    result = subprocess.run(
        ["bash", str(VALIDATE)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_system_deps_off_debian_name_what_to_install_and_stop(tmp_path: Path) -> None:
    """Where there is no apt-get (macOS, say), the script installs nothing: it names the
    packages `make test` needs and exits 1; `make demo` never runs it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "cat", "id"):  # what the script runs besides builtins; no apt-get
        (bin_dir / tool).symlink_to(shutil.which(tool))
    done = subprocess.run(
        [str(bin_dir / "bash"), str(ROOT / "infra/ci/install-system-deps.sh")],
        env={"PATH": str(bin_dir)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    for package in ("chromium", "docker-compose"):
        assert f"  {package} " in done.stderr, done.stderr
    assert "make test-fast" in done.stderr
    makefile = (ROOT / "Makefile").read_text()
    demo_prerequisites = re.search(r"^demo: (.*)$", makefile, flags=re.MULTILINE).group(1).split()
    install_prerequisites = re.search(r"^install: (.*)$", makefile, flags=re.MULTILINE).group(1)
    assert "system-deps" not in demo_prerequisites + install_prerequisites.split()
    assert "system-deps" in re.search(r"^test: (.*)$", makefile, flags=re.MULTILINE).group(1)


def raw_services() -> dict[str, Any]:
    """The services as written (anchors resolved, ${...} not interpolated)."""
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_every_setting_in_env_example_reaches_every_stockpipe_service() -> None:
    """One env_file for every stockpipe service; `environment:` overrides only what compose
    must decide, and passes everything else through from .env by interpolation."""
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.M))
    settings = documented & settings_aliases()
    assert len(settings) > 40  # the scan reads the file
    checked = 0
    for name, service in raw_services().items():
        if not uses_stockpipe_image(service):
            continue
        checked += 1
        files = service.get("env_file")
        files = [files] if isinstance(files, str) else files or []
        assert interpolate(files, {}) == [".env"], f"{name} does not read .env: {files}"
        for var, value in environment(service).items():
            if var not in settings or var in CONTAINER_FIXED:
                continue
            # a default of compose's own is fine as long as a value in .env still wins
            assert re.fullmatch(r"\$\{" + var + r"(:?[-?][^}]*)?\}", value), (
                f"{name}: {var}={value!r} hides the value .env gives"
            )
    assert checked >= 8


def test_long_running_services_stop_within_their_grace(services: dict[str, Any]) -> None:
    defaults = Settings.model_fields

    def seconds(text: str) -> float:
        return float(text.rstrip("s"))

    drain = defaults["producer_drain_timeout"].default
    assert seconds(services["producer"]["stop_grace_period"]) > drain + 10
    # the signal stockpipe stops cleanly on, said, not left to an image's STOPSIGNAL
    for name in ("producer", "stream-0", "stream-1"):
        assert services[name]["stop_signal"] == "SIGTERM", name
    epoch = defaults["epoch_interval"].default
    for name in ("stream-0", "stream-1"):
        assert seconds(services[name]["stop_grace_period"]) >= 10 * epoch, name
        assert services[name].get("init") is True, f"{name}: SIGTERM must reach stockpipe"
    assert services["producer"].get("init") is True


def test_the_producer_spools_to_a_volume_its_user_owns(services: dict[str, Any]) -> None:
    producer = services["producer"]
    spool = environment(producer)["STOCKPIPE_SPOOL_DIR"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in producer["volumes"]}
    mount = next((m for m in mounts if spool == m or spool.startswith(m + "/")), None)
    assert mount is not None, f"{spool} is on no volume of the producer"
    assert mounts[mount] in yaml.safe_load(COMPOSE.read_text())["volumes"]  # a named volume
    dockerfile = (ROOT / STOCKPIPE_IMAGE_DOCKERFILE).read_text()
    assert re.search(rf"chown -R stockpipe:stockpipe [^\n]*{re.escape(mount)}\b", dockerfile)


def test_health_and_scrapes_use_each_process_metrics_port(services: dict[str, Any]) -> None:
    base = Settings.model_fields["metrics_port"].default
    assert environment(services["producer"])["STOCKPIPE_METRICS_PORT"] == str(base)
    want = {"producer": base}
    for name, service in services.items():
        m = re.fullmatch(r"stream-(\d+)", name)
        if m:
            command = as_list(service["command"])
            process = int(command[command.index("--process-id") + 1])
            want[name] = base + 1 + process
    for name, port in want.items():
        check = " ".join(as_list(services[name]["healthcheck"]["test"]))
        assert f"localhost:{port}/healthz" in check, (name, check)
    scrape = yaml.safe_load((ROOT / "infra" / "prometheus" / "prometheus.yml").read_text())
    targets = {
        t for job in scrape["scrape_configs"] for c in job["static_configs"] for t in c["targets"]
    }
    assert targets == {f"{name}:{port}" for name, port in want.items()} | {"node-exporter:9100"}


def test_node_exporter_serves_the_textfiles_the_load_and_transform_write(
    services: dict[str, Any],
) -> None:
    exporter = services["node-exporter"]
    args = as_list(exporter["command"])
    # only the textfile collector: the host's own metrics are not stockpipe's business
    assert "--collector.disable-defaults" in args and "--collector.textfile" in args
    [directory] = [
        a.split("=", 1)[1] for a in args if a.startswith("--collector.textfile.directory=")
    ]
    [mount] = exporter["volumes"]
    volume, inside, mode = mount.split(":")
    assert mode == "ro" and directory.startswith(inside + "/")
    for name in (n for n in services if n.startswith("airflow-")):
        assert environment(services[name])["STOCKPIPE_METRICS_DIR"] == directory, name
    # the load and transform tasks run in the scheduler (LocalExecutor), the commands in cli
    for name in ("airflow-scheduler", "cli"):
        service = services[name]
        assert environment(service)["STOCKPIPE_METRICS_DIR"] == directory, name
        mounts = {m.split(":")[1]: m.split(":")[0] for m in service["volumes"]}
        assert mounts.get(inside) == volume, f"{name} writes {directory} to another volume"


def test_every_service_rotates_its_logs_and_pins_its_image(services: dict[str, Any]) -> None:
    for name, service in services.items():
        logging_ = service.get("logging") or {}
        assert logging_.get("options", {}).get("max-size"), f"{name} logs grow without bound"
        image = service.get("image", "")
        if not uses_stockpipe_image(service):
            tag = image.rpartition(":")[2]
            assert re.search(r"\d+\.\d+|RELEASE\.\d{4}-", tag), f"{name}: {image} floats"


def test_the_static_servers_serve_where_the_publish_dag_writes(services: dict[str, Any]) -> None:
    """dbt-docs serves STOCKPIPE_DBT_TARGET_PATH, report the folder of STOCKPIPE_REPORT_PATH,
    on the volume the Airflow tasks (which run stockpipe_publish) write."""
    env = services["airflow-scheduler"]["environment"]
    for name, folder in (
        ("dbt-docs", env["STOCKPIPE_DBT_TARGET_PATH"]),
        ("report", str(Path(env["STOCKPIPE_REPORT_PATH"]).parent)),
    ):
        script = " ".join(services[name]["command"])
        assert f"--directory {folder}" in script, (name, script)
        for service in (name, "airflow-scheduler"):
            mounts = {m.split(":")[1]: m.split(":")[0] for m in services[service]["volumes"]}
            assert mounts.get("/data") == "stockpipe-data", (service, mounts)
        assert folder.startswith("/data/")


def test_every_airflow_process_reads_the_fernet_key_airflow_init_keeps(
    services: dict[str, Any],
) -> None:
    """No key in the environment (an empty one would mean unencrypted secrets): each
    Airflow process runs `cat` on the file airflow-init writes to the airflow-auth volume."""
    init_script = (ROOT / "infra/airflow/init.sh").read_text()
    assert "fernet_key.py" in init_script
    assert init_script.index("fernet_key.py") < init_script.index("airflow db migrate")
    airflow = [
        n for n, s in services.items() if "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" in environment(s)
    ]
    assert {"airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
            "airflow-triggerer"} <= set(airflow)  # fmt: skip
    for name in airflow:
        env = environment(services[name])
        assert "AIRFLOW__CORE__FERNET_KEY" not in env, name
        command = env["AIRFLOW__CORE__FERNET_KEY_CMD"].split()
        assert command[0] == "cat" and len(command) == 2, (name, command)
        mounts = {m.split(":")[1]: m.split(":")[0] for m in services[name]["volumes"]}
        folder = str(Path(command[1]).parent)
        assert mounts.get(folder) == "airflow-auth", (name, mounts)
    assert environment(services["airflow-init"])["AIRFLOW_FERNET_KEY"] == ""  # unset in .env


# --- one image per role: each service's image holds what its command needs --------
DAGS = ROOT / "dags"
ORCHESTRATION = ROOT / "flows" / "transform" / "orchestration.py"
# [bench] (Quix Streams, polars, moto) is the benchmark's: no image holds it.
NO_IMAGE_EXTRAS = {"bench"}


def image_extras(service: dict[str, Any]) -> set[str]:
    """The extras a stockpipe image holds: its EXTRAS build argument, with what they bring."""
    extras = str((service["build"].get("args") or {}).get("EXTRAS", default_extras()))
    return closure({e.strip() for e in extras.split(",") if e.strip()})


def module_commands(module: str) -> set[str]:
    """The stockpipe commands whose code a `flows` module is: the command it is the target
    module of, or else every command of its subpackage (flows.warehouse.loader: load,
    load-outages, fetch-splits). Shared modules (flows.settings, flows.assets) are none."""
    targets = {name: entry.target.partition(":")[0] for name, entry in COMMANDS.items()}
    exact = {name for name, target in targets.items() if target == module}
    if exact:
        return exact
    package = ".".join(module.split(".")[:2])
    return {name for name, target in targets.items() if target.startswith(package + ".")}


def imports(tree: ast.AST) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found


def needs_of_modules(modules: set[str]) -> tuple[set[str], set[str]]:
    """(commands, extras) that importing these modules needs: a `flows` module needs the
    extras of the commands it belongs to, a third-party one the extra of MODULE_EXTRAS."""
    commands, extras = set(), set()
    for module in modules:
        if module.split(".")[0] == "flows":
            commands |= module_commands(module)
        elif module.split(".")[0] in MODULE_EXTRAS:
            extras.add(MODULE_EXTRAS[module.split(".")[0]])
    for name in commands:
        extras |= set(COMMANDS[name].extras)
    return commands, extras


def dag_needs() -> tuple[set[str], set[str]]:
    """(commands, extras) of what the DAG files import and the DAG tasks run: the modules
    imported by dags/*.py and by every flows.transform.orchestration function they call
    (and the functions those call), at module level or inside the tasks."""
    functions = {
        node.name: node
        for node in ast.parse(ORCHESTRATION.read_text()).body
        if isinstance(node, ast.FunctionDef)
    }
    modules, todo, seen = set(), [], set()
    for path in sorted(DAGS.glob("*.py")):
        tree = ast.parse(path.read_text())
        modules |= imports(tree)
        todo += [
            node.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "orchestration"
        ]
    while todo:
        name = todo.pop()
        if name in seen or name not in functions:
            continue
        seen.add(name)
        modules |= imports(functions[name])
        todo += [n.id for n in ast.walk(functions[name]) if isinstance(n, ast.Name)]
    return needs_of_modules(modules)


def service_needs(name: str, service: dict[str, Any], raw: dict[str, Any]) -> set[str]:
    """The extras a stockpipe service's command needs, from its entrypoint and command."""
    entrypoint = as_list(service.get("entrypoint")) or ["stockpipe"]
    command = as_list(service.get("command"))
    needs: set[str] = set()
    if entrypoint == ["stockpipe"] and not command:
        # the ad-hoc service (`docker compose run --rm cli <command>`): any command an
        # image can hold
        for entry in COMMANDS.values():
            if not closure(entry.extras) & NO_IMAGE_EXTRAS:
                needs |= set(entry.extras)
    elif entrypoint == ["airflow"]:
        # every Airflow component loads the DAGs or the plugin; the scheduler runs the tasks
        needs |= {"airflow"} | dag_needs()[1]
    elif entrypoint[:1] == ["bash"] and entrypoint[1].startswith("/app/"):
        # a script of the image (infra/airflow/init.sh): `airflow ...` lines need [airflow]
        script = (ROOT / entrypoint[1].removeprefix("/app/")).read_text()
        code = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("#"))
        assert not re.search(r"^\s*(exec )?stockpipe |python3? -m flows", code, re.M), entrypoint
        if re.search(r"^\s*airflow ", script, flags=re.MULTILINE):
            needs.add("airflow")
    elif entrypoint == ["python", "-c"]:
        needs |= needs_of_modules(imports(ast.parse(" ".join(command))))[1]
    elif entrypoint == ["stockpipe"] or entrypoint == ["/bin/sh", "-c"]:
        lines = stockpipe_command_lines(service)
        script = " ".join(command)
        others = re.findall(r"\bpython3? (-m \S+|-c)", script)
        # a shell script may also serve files (python -m http.server: the standard library)
        assert all(o.startswith("-m ") and not o.startswith("-m flows") for o in others), (
            f"{name}: do not know what {others} needs"
        )
        assert lines or others, f"{name}: runs neither stockpipe nor python"
        for args in lines:
            needs |= set(COMMANDS[args[0]].extras)
    else:
        raise AssertionError(f"{name}: do not know what entrypoint {entrypoint} needs")
    # The warehouse is .env's choice (STOCKPIPE_WAREHOUSE, STOCKPIPE_DBT_TARGET): a service
    # that loads or transforms may be running on Snowflake, so it needs [snowflake] too.
    warehouse = environment(raw[name]).get("STOCKPIPE_WAREHOUSE", "")
    if "warehouse" in needs and warehouse.startswith("${STOCKPIPE_WAREHOUSE"):
        needs.add("snowflake")
    return closure(needs)


def image_problems(services: dict[str, Any], raw: dict[str, Any]) -> list[str]:
    """What is wrong with the image of each stockpipe service: an extra its command needs
    that the image lacks, or a smaller image of the file that would do."""
    images: dict[str, set[str]] = {}
    for service in services.values():
        if uses_stockpipe_image(service):
            images.setdefault(service["image"], image_extras(service))
    problems = []
    for name, service in services.items():
        if not uses_stockpipe_image(service):
            continue
        needs, held = service_needs(name, service, raw), image_extras(service)
        if needs - held:
            problems.append(f"{name}: {service['image']} lacks {sorted(needs - held)}")
        smaller = sorted(i for i, e in images.items() if needs <= e < held)
        if smaller:
            problems.append(f"{name}: {service['image']} is more than it needs ({smaller} do)")
    return problems


def test_the_dag_tasks_need_what_their_commands_need() -> None:
    commands, extras = dag_needs()
    # what the three DAGs run: the load, the reference tables, dbt, the report, the backfill
    assert {"load", "load-outages", "fetch-splits", "transform", "report",
            "backfill-outages"} <= commands  # fmt: skip
    assert not {"stream", "demo", "bench", "chaos"} & commands
    assert extras == {"airflow", "warehouse", "report"}
    assert module_commands("flows.warehouse.splits") == {"fetch-splits"}
    assert module_commands("flows.stream.recovery") == {"stream"}
    assert module_commands("flows.settings") == set()


def test_every_stockpipe_service_runs_the_smallest_image_with_what_it_needs(
    services: dict[str, Any],
) -> None:
    raw = raw_services()
    assert image_problems(services, raw) == []
    needs = {n: service_needs(n, s, raw) for n, s in services.items() if uses_stockpipe_image(s)}
    # the scan sees what each command needs, or the check above proves nothing
    assert needs["producer"] == needs["dbt-docs"] == needs["report"] == set()
    assert needs["stream-0"] == needs["stream-1"] == needs["recovery-init"] == {"stream"}
    assert needs["airflow-scheduler"] == {"airflow", "warehouse", "snowflake", "report"}
    assert needs["airflow-init"] == {"airflow", "warehouse"}
    assert needs["cli"] == {"stream", "warehouse", "snowflake", "airflow", "report"}
    images = {s["image"]: image_extras(s) for s in services.values() if uses_stockpipe_image(s)}
    assert images == {
        "stockpipe-base:local": set(),
        "stockpipe-stream:local": {"stream"},
        "stockpipe-airflow:local": {"warehouse", "snowflake", "airflow", "report"},
        "stockpipe-full:local": {"stream", "warehouse", "snowflake", "airflow", "report"},
    }
    assert not any(e & NO_IMAGE_EXTRAS for e in images.values())


@pytest.mark.parametrize(
    ("name", "onto", "problem"),
    [
        ("stream-0", "producer", "stockpipe-base:local lacks ['stream']"),
        ("recovery-init", "producer", "stockpipe-base:local lacks ['stream']"),
        ("airflow-scheduler", "stream-0", "lacks ['airflow', 'report', 'snowflake', 'warehouse']"),
        ("cli", "airflow-scheduler", "stockpipe-airflow:local lacks ['stream']"),
        ("producer", "stream-0", "stockpipe-stream:local is more than it needs"),
        ("report", "cli", "stockpipe-full:local is more than it needs"),
        ("airflow-triggerer", "cli", "stockpipe-full:local is more than it needs"),
    ],
)
def test_a_service_on_the_wrong_image_is_caught(
    services: dict[str, Any], name: str, onto: str, problem: str
) -> None:
    moved = copy.deepcopy(services)
    moved[name]["image"], moved[name]["build"] = services[onto]["image"], services[onto]["build"]
    problems = image_problems(moved, raw_services())
    assert [p for p in problems if p.startswith(f"{name}: ")] and problem in " ".join(problems)


def test_each_image_name_is_one_extras_set_and_can_be_renamed(services: dict[str, Any]) -> None:
    """A name builds one set of extras (never two builds racing for one tag), and every
    image takes ${STOCKPIPE_IMAGE_PREFIX} and ${STOCKPIPE_IMAGE_TAG} from .env."""
    extras_of: dict[str, set[str]] = {}
    for name, service in raw_services().items():
        if not uses_stockpipe_image(service):
            continue
        image, args = service["image"], service["build"]["args"]
        extras_of.setdefault(image, set()).add(args["EXTRAS"])
        assert re.fullmatch(
            r"\$\{STOCKPIPE_IMAGE_PREFIX:-stockpipe\}-[a-z]+:\$\{STOCKPIPE_IMAGE_TAG:-local\}",
            image,
        ), (name, image)
        assert service["build"]["context"] == "." and set(args) == {"EXTRAS"}, name
    assert all(len(e) == 1 for e in extras_of.values()), extras_of
    assert len({frozenset(e) for e in extras_of.values()}) == len(extras_of)
    declared = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    )
    for (extras,) in extras_of.values():
        assert {e for e in extras.split(",") if e} <= declared - NO_IMAGE_EXTRAS, extras
    env = {
        "STOCKPIPE_IMAGE_PREFIX": "registry.example.com/team/stockpipe",
        "STOCKPIPE_IMAGE_TAG": "1.4.0",
    }
    renamed = interpolate(raw_services(), {**env_example(), **env})
    assert renamed["stream-0"]["image"] == "registry.example.com/team/stockpipe-stream:1.4.0"


def final_run_step() -> str:
    """The last stage's RUN that installs the wheel, as the shell gets it."""
    steps = re.findall(r"^RUN ((?:.*\\\n)*.*)$", dockerfile(), flags=re.MULTILINE)
    (step,) = [s for s in steps if "/wheels/stockpipe-" in s]
    return step.replace("\\\n", "")


def run_final_step(extras: str, tmp_path: Path) -> list[str]:
    """The final RUN under sh with every command it runs stubbed (each logs its argv),
    in a directory holding the extras.txt the requirements step writes for EXTRAS."""
    _, held = run_requirements_step(extras, tmp_path / "src")
    work, stubs, log = tmp_path / "app", tmp_path / "bin", tmp_path / "ran.log"
    work.mkdir()
    stubs.mkdir()
    shutil.copy(tmp_path / "src" / "extras.txt", work / "extras.txt")
    for tool in ("pip", "stockpipe", "python", "ln", "mkdir", "chown", "rm"):
        (stubs / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\n')
        (stubs / tool).chmod(0o755)
    grep = Path(shutil.which("grep")).parent
    done = subprocess.run(
        ["sh", "-c", final_run_step()],
        cwd=work,
        env={"PATH": f"{stubs}{os.pathsep}{grep}"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return log.read_text().splitlines()


@pytest.mark.parametrize(
    ("extras", "dags", "manifest"),
    [
        ("", False, None),
        ("stream", False, None),
        ("warehouse", False, None),  # dbt, but no Airflow to read a manifest
        ("warehouse,airflow", True, "manifest"),  # no snowflake adapter: the default target
        ("warehouse,snowflake,airflow,report", True, "manifest --all-targets"),
        ("stream,warehouse,snowflake,airflow,report", True, "manifest --all-targets"),
    ],
)
def test_the_dockerfile_runs_the_steps_of_the_extras_the_image_holds(
    extras: str, dags: bool, manifest: str | None, tmp_path: Path
) -> None:
    """Every image checks its install (pip check, stockpipe --help) and makes its volume
    directories; the DAG folder and the dbt manifests only where [airflow] is."""
    ran = run_final_step(extras, tmp_path)
    assert ran[:3] == [
        "pip install --no-deps /wheels/stockpipe-*.whl",
        "pip check",
        "rm -rf /wheels",
    ]
    assert "stockpipe --help" in ran
    assert ran[-2:] == [
        "mkdir -p /data /recovery /opt/airflow/logs /opt/airflow/auth",
        "chown -R stockpipe:stockpipe /data /recovery /opt/airflow",
    ]
    assert any(r.startswith("ln -s") and r.endswith(" /app/dags") for r in ran) is dags
    manifests = [r for r in ran if "flows.transform.orchestration" in r]
    want = [f"python -m flows.transform.orchestration {manifest}"] if manifest else []
    assert manifests == want
    # a manifest is made by dbt: whatever brings [airflow] brings [warehouse]
    assert "warehouse" in closure({"airflow"})


def test_compose_builds_every_image_the_dockerfile_documents() -> None:
    """The Dockerfile's header lists the images compose builds, with their EXTRAS."""
    header = dockerfile().split("\nARG EXTRAS")[0]
    for name, service in raw_services().items():
        if uses_stockpipe_image(service):
            image = service["image"].split("}", 1)[1].split(":")[0]  # -stream
            extras = service["build"]["args"]["EXTRAS"]
            assert re.search(rf"stockpipe{image} +EXTRAS=\"?{extras}\"?\s", header), (name, image)
