"""The deploy people already know, checked without Docker or systemd: the light bot install
holds everything the bot side imports and nothing of torch's; `deploy/compose.yaml` is valid
against the compose specification's own JSON schema (vendored: `deploy/compose-spec.json`) and
keeps its promises (Redis with AOF and a password from a secret, never published; one GPU per
worker; no root); both images install through `deploy/install.sh`, the script CI runs; the
secrets reach the processes through files, never argv; the systemd units start what the README
says. Nothing is built or installed here (CI's bench/light_install.py does the install)."""

from __future__ import annotations

import ast
import configparser
import contextlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from redis import Redis
from redis.exceptions import AuthenticationError, ConnectionError, ResponseError

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))

# What the bot host runs: the bot (its cogs are loaded by name, so each is an entry point) and
# the `ponybot` command (`up --workers 0`, `check`, `models`).
BOT_SIDE_ENTRY_POINTS = ("bot.__main__", "ponybot_cli.main",
                         *(f"cogs.{p.stem}" for p in sorted((ROOT / "cogs").glob("*.py"))
                           if p.stem != "__init__"))
OUR_PACKAGES = ("bot", "cogs", "inference", "ponybot_core", "ponybot_request", "ponybot_cli")
# The CUDA wheels the issue is about (5.8 GB with torch's nvidia-* dependencies).
WORKER_ONLY = ("torch", "torchvision", "diffusers", "transformers", "accelerate", "spandrel")


# -- the light install ---------------------------------------------------------------------

def _module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _runtime_imports(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: module level, inside `if`/`try` too, but
    not under `if TYPE_CHECKING:` and not inside a function (a lazy import is the function's
    business: the worker-only ones live there)."""
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If):
            if "TYPE_CHECKING" not in ast.unparse(node.test):
                found += _runtime_imports(node.body) + _runtime_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, *(h.body for h in node.handlers), node.orelse,
                          node.finalbody):
                found += _runtime_imports(block)
    return found


def third_party_imports_of(entry_points: tuple[str, ...]) -> dict[str, str]:
    """Every third-party top-level module that importing `entry_points` imports, following our
    own modules (and their parent packages) transitively: {module: first importer}."""
    seen: set[str] = set()
    todo = list(entry_points)
    found: dict[str, str] = {}
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parents run first
        path = _module_file(name)
        if path is None:
            continue
        package = parts if path.name == "__init__.py" else parts[:-1]
        for node in _runtime_imports(ast.parse(path.read_text(encoding="utf-8")).body):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    base = ".".join([*package[:len(package) - node.level + 1],
                                     *([base] if base else [])])
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            for target in targets:
                top = target.split(".")[0]
                if top in OUR_PACKAGES:
                    if _module_file(target) is not None:
                        todo.append(target)
                elif top and top not in sys.stdlib_module_names and top != "__future__":
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def _requirements(names: list[str]) -> list[Requirement]:
    return [Requirement(text) for text in names]


def installed_closure(requirements: list[Requirement]) -> set[str]:
    """The distributions `pip install` of `requirements` brings (no extras of theirs), read
    from the metadata of what is installed here (the dev environment has them all)."""
    environment = {**default_environment(), "extra": ""}
    todo = [r for r in requirements if r.marker is None or r.marker.evaluate(environment)]
    closure: set[str] = set()
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in closure:
            continue
        closure.add(name)
        for text in importlib.metadata.requires(requirement.name) or []:
            nested = Requirement(text)
            if nested.marker is None or nested.marker.evaluate(environment):
                todo.append(nested)
    return closure


def base_closure() -> set[str]:
    return installed_closure(_requirements(PYPROJECT["project"]["dependencies"]))


def test_the_light_install_brings_nothing_of_torch_or_diffusers():
    assert sorted(set(base_closure()) & {canonicalize_name(n) for n in WORKER_ONLY}) == []


def test_everything_the_bot_side_imports_comes_with_the_light_install():
    imports = third_party_imports_of(BOT_SIDE_ENTRY_POINTS)
    providers = importlib.metadata.packages_distributions()
    closure = base_closure()
    missing = {module: importer for module, importer in imports.items()
               if not {canonicalize_name(d) for d in providers.get(module, [module])} & closure}
    assert imports, "the import walk found nothing: the entry points moved"
    assert missing == {}, f"imported on the bot side but not in the base dependencies: {missing}"


def test_the_import_walk_sees_a_worker_import_when_there_is_one():
    # The check above is only as good as its walk: inference.worker imports torch at once.
    assert "torch" in third_party_imports_of(("inference.worker",))
    assert "torch" not in third_party_imports_of(("ponybot_cli.doctor",))  # lazily, in a function


def test_every_data_file_of_our_packages_ships_in_the_installed_package():
    # The images and the light install are not editable installs: a config, tokenizer or Lua
    # file that package-data leaves out is missing there only (the SD 2.x / SDXL configs were).
    package_data = PYPROJECT["tool"]["setuptools"]["package-data"]
    missing = []
    for package in OUR_PACKAGES:
        for path in sorted((ROOT / package).rglob("*")):
            if not path.is_file() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts:
                continue
            inside = path.relative_to(ROOT / package)
            if not any(inside.full_match(pattern) if hasattr(inside, "full_match")
                       else _glob_match(inside, pattern)
                       for pattern in package_data.get(package, [])):
                missing.append(str(path.relative_to(ROOT)))
    assert missing == [], f"not in [tool.setuptools.package-data]: {missing}"


def _glob_match(path: Path, pattern: str) -> bool:
    """setuptools' `**` glob on Python 3.11 (no Path.full_match): `**` spans folders."""
    regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
    return re.fullmatch(regex.replace(r"\*", "[^/]*"), path.as_posix()) is not None


def test_the_worker_extra_brings_the_worker_and_dev_brings_everything_the_tests_need():
    extras = PYPROJECT["project"]["optional-dependencies"]
    worker = installed_closure(_requirements(extras["worker"]))
    assert {canonicalize_name(n) for n in WORKER_ONLY} <= worker
    dev_names = {canonicalize_name(Requirement(text).name) for text in extras["dev"]}
    assert "ponybot" in dev_names, "dev must install the worker extra (the tests draw pictures)"
    assert "ponybot[worker]" in {text.replace(" ", "") for text in extras["dev"]}


# -- compose ---------------------------------------------------------------------------------

COMPOSE = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
SCHEMA = json.loads((DEPLOY / "compose-spec.json").read_text(encoding="utf-8"))


def schema_errors(document: object) -> list[str]:
    validator = jsonschema.Draft7Validator(SCHEMA)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(document)]


def test_the_compose_file_is_valid_against_the_compose_specifications_schema():
    assert schema_errors(COMPOSE) == []


@pytest.mark.parametrize("break_it", [
    lambda c: c["services"]["worker-0"]["deploy"]["resources"]["reservations"].update(
        devices="gpu"),
    lambda c: c["services"]["redis"].update(restart_policy="always"),
    lambda c: c["secrets"]["redis_password"].update(path="./secrets/redis_password"),
])
def test_the_schema_check_refuses_a_compose_file_docker_would_refuse(break_it):
    broken = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    break_it(broken)
    assert schema_errors(broken) != []


def workers() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in COMPOSE["services"].items()
            if s.get("build", {}).get("target") == "worker"}


def test_redis_keeps_an_aof_and_takes_its_password_from_a_secret_and_no_port_is_published():
    redis = COMPOSE["services"]["redis"]
    command = redis["command"]
    config = (DEPLOY / COMPOSE["configs"]["redis_conf"]["file"]).read_text(encoding="utf-8")

    assert "appendonly yes" in config.splitlines()
    assert command[:2] == ["sh", "/etc/ponybot/redis-start.sh"]
    assert "/run/secrets/redis_password" in command and "redis_password" in redis["secrets"]
    assert COMPOSE["secrets"]["redis_password"] == {"file": "./secrets/redis_password"}
    assert {name: s.get("ports") for name, s in COMPOSE["services"].items()
            if s.get("ports")} == {}
    # No password in the file: the URL names the host only, the healthcheck uses REDISCLI_AUTH.
    for name, service in COMPOSE["services"].items():
        for value in (service.get("environment") or {}).values():
            assert "@" not in str(value), name
    assert "REDISCLI_AUTH=" in redis["healthcheck"]["test"][1]
    assert " -a " not in redis["healthcheck"]["test"][1]


def test_each_worker_reserves_a_gpu_of_its_own():
    reserved = {}
    for name, service in workers().items():
        [device] = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"], name
        [reserved[name]] = device["device_ids"]
    assert len(reserved) >= 2
    assert len(set(reserved.values())) == len(reserved), reserved


def test_every_service_runs_as_a_user_other_than_root_and_gets_the_secrets_it_needs():
    services = COMPOSE["services"]
    assert str(services["redis"]["user"]).split(":")[0] not in ("0", "root")
    for name in ("bot", *workers()):
        target = services[name]["build"]["target"]
        assert last_user(target) not in ("", "0", "root"), f"{name}: image {target} runs as root"
        assert set(services[name]["secrets"]) == {"discord_token", "redis_password"}
        assert services[name]["environment"]["REDIS_URL"] == "redis://redis:6379/0"
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    for name in ("discord_token", "redis_password"):
        file = COMPOSE["secrets"][name]["file"]
        assert (DEPLOY / file).parent == DEPLOY / "secrets"
    # The secrets folder is never committed, whatever is put in it.
    assert (DEPLOY / "secrets" / ".gitignore").read_text().splitlines()[1:] == ["*", "!.gitignore"]


# -- the images ------------------------------------------------------------------------------

def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """{stage name: [(INSTRUCTION, arguments)]}, continuation lines joined, comments dropped."""
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    logical = re.sub(r"\\\n", " ", "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith("#")))
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for line in logical.splitlines():
        if not line.strip():
            continue
        instruction, _, arguments = line.strip().partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", arguments.strip(), re.IGNORECASE)
            assert match, line
            current = [*stages.get(match.group(1), []), (instruction, arguments)]
            stages[match.group(2) or match.group(1)] = current
        else:
            current.append((instruction, " ".join(arguments.split())))
    return stages


def last_user(target: str) -> str:
    users = [args for instruction, args in dockerfile_stages()[target] if instruction == "USER"]
    return users[-1] if users else ""


@pytest.mark.parametrize("target", ["bot", "worker"])
def test_each_image_installs_through_the_script_ci_runs_and_runs_its_procfile_line(target):
    stage = dockerfile_stages()[target]
    runs = [args for instruction, args in stage if instruction == "RUN"]
    installs = [r for r in runs if "deploy/install.sh" in r]
    procfile = dict(line.split(": ", 1) for line in
                    (ROOT / "Procfile").read_text(encoding="utf-8").splitlines() if line)

    assert len(installs) == 1
    assert re.search(rf"deploy/install\.sh {target} --venv /opt/ponybot/venv\b", installs[0])
    # Nothing else installs anything: what CI runs is all the image gets.
    assert not [r for r in runs if re.search(r"\bpip\b|apt-get|\bconda\b", r)]
    [cmd] = [args for instruction, args in stage if instruction == "CMD"]
    assert " ".join(json.loads(cmd)) == procfile[target]
    assert last_user(target) == "ponybot"


def test_the_images_user_is_not_root_and_the_entrypoint_is_the_one_the_script_installs():
    base = dockerfile_stages()["base"]
    [useradd] = [args for instruction, args in base if instruction == "RUN"]
    [entrypoint] = [args for instruction, args in base if instruction == "ENTRYPOINT"]
    script = (DEPLOY / "install.sh").read_text(encoding="utf-8")

    uid = re.search(r"--uid (\d+)", useradd)
    assert uid and int(uid.group(1)) >= 1000 and "ponybot" in useradd.split()
    assert json.loads(entrypoint) == ["/opt/ponybot/venv/bin/ponybot-entrypoint"]
    assert 'install -m 0755 "$src/deploy/entrypoint.sh" "$venv/bin/ponybot-entrypoint"' in script
    assert "venv=/opt/ponybot/venv" in script


def test_the_build_context_holds_every_package_the_install_needs_and_nothing_secret():
    lines = (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
    let_in = {line[1:] for line in lines if line.startswith("!")}
    packages = set(PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"])

    assert lines[lines.index("*") - 1].startswith("#") and "*" in lines  # all out, then some in
    assert {"pyproject.toml", "README.md", "deploy/install.sh", "deploy/entrypoint.sh"} <= let_in
    assert {p.rstrip("*") for p in packages} - {"ponybot_testkit"} <= let_in
    assert not let_in & {"data", "models", ".env", "deploy/secrets", ".git"}


# -- the secrets: entrypoint and Redis start ---------------------------------------------------

PASSWORD = "0123456789abcdef" * 4


def entrypoint(secrets: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Runs the entrypoint in front of a python that prints what it was given."""
    show = ("import json, os, sys; print(json.dumps({'argv': sys.argv, 'env': {k: os.environ.get(k)"
            " for k in ('DISCORD_TOKEN', 'REDIS_URL')}}))")
    clean = {k: v for k, v in os.environ.items() if k not in ("DISCORD_TOKEN", "REDIS_URL")}
    return subprocess.run(["sh", str(DEPLOY / "entrypoint.sh"), sys.executable, "-c", show],
                          env={**clean, "CREDENTIALS_DIRECTORY": str(secrets), **env},
                          capture_output=True, text=True, timeout=30)


def test_the_entrypoint_puts_the_secret_files_in_the_environment_and_in_no_argv(tmp_path):
    (tmp_path / "discord_token").write_text("the.bot.token\n")
    (tmp_path / "redis_password").write_text(PASSWORD + "\n")

    result = entrypoint(tmp_path, REDIS_URL="redis://redis:6379/0")
    seen = json.loads(result.stdout)

    assert result.returncode == 0, result.stderr
    assert seen["env"] == {"DISCORD_TOKEN": "the.bot.token",
                           "REDIS_URL": f"redis://:{PASSWORD}@redis:6379/0"}
    assert not [a for a in seen["argv"] if PASSWORD in a or "the.bot.token" in a]


def test_the_entrypoint_leaves_what_the_operator_set_alone(tmp_path):
    (tmp_path / "discord_token").write_text("from-the-file")
    (tmp_path / "redis_password").write_text(PASSWORD)

    seen = json.loads(entrypoint(tmp_path, DISCORD_TOKEN="from-env",
                                 REDIS_URL="redis://:own@redis:6379/0").stdout)

    assert seen["env"] == {"DISCORD_TOKEN": "from-env", "REDIS_URL": "redis://:own@redis:6379/0"}


@pytest.mark.parametrize("password", ["", "has space", "p@ss/word", "колбаса"])
def test_a_password_that_would_break_the_url_stops_the_entrypoint_with_exit_2(tmp_path,
                                                                                password):
    (tmp_path / "redis_password").write_text(password)

    result = entrypoint(tmp_path, REDIS_URL="redis://redis:6379/0")

    assert result.returncode == 2 and result.stdout == ""
    assert "redis_password must be URL-safe" in result.stderr
    assert "openssl rand -hex 32" in result.stderr
    assert password.strip() == "" or password not in result.stderr


@contextlib.contextmanager
def started_deploy_redis(tmp_path: Path, conf: Path = DEPLOY / "redis.conf",
                         ) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """redis-server started the way compose and systemd start it: deploy/redis-start.sh with
    `conf` and a password file (plus a free port and a data folder)."""
    from ponybot_cli.redis_server import free_port, redis_server_binary

    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    (tmp_path / "redis_password").write_text(PASSWORD + "\n")
    port = free_port()
    process = subprocess.Popen(
        ["sh", str(DEPLOY / "redis-start.sh"), str(conf),
         str(tmp_path / "redis_password"), str(runtime), "--port", str(port),
         "--dir", str(tmp_path)],
        env={**os.environ, "REDIS_SERVER": redis_server_binary()},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = Redis(port=port, password=PASSWORD, socket_timeout=5)
    try:
        for _ in range(500):  # until it accepts connections (bounded by count)
            try:
                client.ping()
                break
            except ConnectionError:
                assert process.poll() is None, "redis-server exited at start"
                subprocess.run(["sleep", "0.01"], check=True)
        yield process, port, runtime
    finally:
        process.terminate()
        process.wait(timeout=10)
        client.close()


@pytest.fixture
def deploy_redis(tmp_path):
    with started_deploy_redis(tmp_path) as started:
        yield started


def test_the_deploys_redis_wants_its_password_keeps_an_aof_and_refuses_config(deploy_redis):
    process, port, runtime = deploy_redis
    anonymous = Redis(port=port, socket_timeout=5)
    client = Redis(port=port, password=PASSWORD, socket_timeout=5)
    try:
        with pytest.raises(AuthenticationError):
            anonymous.set("x", "1")
        assert client.info("persistence")["aof_enabled"] == 1
        for command in (("CONFIG", "GET", "dir"), ("DEBUG", "SLEEP", "0"), ("MODULE", "LIST")):
            with pytest.raises(ResponseError, match="unknown command"):
                client.execute_command(*command)
    finally:
        anonymous.close()
        client.close()
    cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes()
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    for pid in [process.pid, *map(int, children)]:
        assert PASSWORD.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert b"redis-server" in cmdline or children  # sh exec'd redis-server (or runs it)
    assert (runtime / "redis.conf").stat().st_mode & 0o077 == 0


def test_a_redis_conf_without_a_final_newline_still_gets_its_password(tmp_path):
    # An operator's last line with no newline (a comment) once swallowed `requirepass`: Redis
    # started with no password, on 0.0.0.0 in compose.
    conf = tmp_path / "redis.conf"
    conf.write_text((DEPLOY / "redis.conf").read_text(encoding="utf-8") + "# local tweak")
    with started_deploy_redis(tmp_path, conf) as (_, port, runtime):
        anonymous = Redis(port=port, socket_timeout=5)
        try:
            with pytest.raises(AuthenticationError):
                anonymous.ping()
        finally:
            anonymous.close()
        written = (runtime / "redis.conf").read_text(encoding="utf-8").splitlines()
    assert [line for line in written if line.lower().lstrip().startswith("requirepass")] == [
        f"requirepass {PASSWORD}"]
    assert written[-2:] == ["# local tweak", f"requirepass {PASSWORD}"]


def redis_start(tmp_path: Path, conf: str, password: str) -> subprocess.CompletedProcess[str]:
    """deploy/redis-start.sh with `echo` for redis-server: what it would start, or its refusal."""
    (tmp_path / "redis.conf").write_text(conf)
    (tmp_path / "redis_password").write_text(password)
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700, exist_ok=True)
    return subprocess.run(
        ["sh", str(DEPLOY / "redis-start.sh"), str(tmp_path / "redis.conf"),
         str(tmp_path / "redis_password"), str(runtime)],
        env={**os.environ, "REDIS_SERVER": shutil.which("echo") or "echo"},
        capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("conf", ["requirepass hunter2\n", "  REQUIREPASS hunter2\n",
                                  "port 6379\nrequirepass\n"])
def test_redis_start_refuses_a_config_that_names_a_password_of_its_own(tmp_path, conf):
    # Two requirepass lines: whichever Redis keeps, one of the two passwords is not the secret.
    result = redis_start(tmp_path, conf, PASSWORD + "\n")

    assert result.returncode == 2 and result.stdout == "", result.stdout
    assert "requirepass" in result.stderr and str(tmp_path / "redis.conf") in result.stderr
    assert PASSWORD not in result.stderr


@pytest.mark.parametrize("password", [PASSWORD, PASSWORD + "\n"])
def test_redis_start_takes_a_one_line_password_file_with_or_without_its_newline(tmp_path,
                                                                               password):
    result = redis_start(tmp_path, "appendonly yes", password)

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(tmp_path / "run" / "redis.conf")]
    written = (tmp_path / "run" / "redis.conf").read_text(encoding="utf-8").splitlines()
    assert written[0] == "appendonly yes" and written[-1] == f"requirepass {PASSWORD}"


TWO_LINES = [PASSWORD + "\n# rotated 2026-12-01\n", PASSWORD + "\n\n", PASSWORD + "\nother",
             "\n" + PASSWORD]


@pytest.mark.parametrize("contents", TWO_LINES)
@pytest.mark.parametrize("script", ["redis-start", "entrypoint:redis_password",
                                    "entrypoint:discord_token"])
def test_a_secret_file_of_more_than_one_line_is_refused_naming_the_file(tmp_path, script,
                                                                        contents):
    # One rule in every reader (compose's healthcheck reads the first line as they do): a
    # second line is a mistake to name, not a part to drop or to send.
    if script == "redis-start":
        result = redis_start(tmp_path, "appendonly yes\n", contents)
        file = tmp_path / "redis_password"
    else:
        file = tmp_path / script.split(":")[1]
        file.write_text(contents)
        result = entrypoint(tmp_path, REDIS_URL="redis://redis:6379/0")

    assert result.returncode == 2 and result.stdout == "", result.stdout
    assert f"{file} has more than one line" in result.stderr
    assert PASSWORD not in result.stderr


def compose_healthcheck(service: str, **paths: str) -> list[str]:
    """`service`'s healthcheck as a command line to run here: compose's `$$` unescaped and
    the container's paths replaced by `paths`."""
    test = COMPOSE["services"][service]["healthcheck"]["test"]
    assert test[0] in ("CMD", "CMD-SHELL")
    command = [part.replace("$$", "$") for part in test[1:]]
    for inside, here in paths.items():
        command = [part.replace(inside, here) for part in command]
    return ["sh", "-c", command[0]] if test[0] == "CMD-SHELL" else command


@pytest.mark.parametrize("password", [PASSWORD, PASSWORD + "\n"])
def test_the_redis_healthcheck_sends_the_password_redis_start_read(deploy_redis, tmp_path,
                                                                     password):
    _, port, _ = deploy_redis
    secret = tmp_path / "healthcheck_password"
    secret.write_text(password)
    check = compose_healthcheck("redis", **{"/run/secrets/redis_password": str(secret),
                                            "redis-cli ": f"redis-cli -p {port} "})
    wrong = tmp_path / "wrong_password"
    wrong.write_text("0" * 64 + "\n")
    refused = compose_healthcheck("redis", **{"/run/secrets/redis_password": str(wrong),
                                              "redis-cli ": f"redis-cli -p {port} "})

    assert subprocess.run(check, capture_output=True, timeout=30).returncode == 0
    assert subprocess.run(refused, capture_output=True, timeout=30).returncode != 0


PONYBOT_SERVICES = ("bot", "worker-0", "worker-1")


@pytest.mark.parametrize("service", PONYBOT_SERVICES)
def test_each_ponybot_service_serves_metrics_on_the_compose_network_only(service):
    # Inside a container 127.0.0.1 is the container's own: Prometheus on the project's network
    # could not reach it. 0.0.0.0 there is the compose network, as no port is published.
    config = COMPOSE["services"][service]
    assert config["environment"]["PONYBOT_METRICS_BIND"] == "0.0.0.0"
    assert int(config["environment"]["PONYBOT_METRICS_PORT"]) > 0
    assert "ports" not in config and "network_mode" not in config


@pytest.mark.parametrize("healthy", [True, False])
@pytest.mark.parametrize("service", PONYBOT_SERVICES)
def test_each_ponybot_services_healthcheck_is_its_healthz(service, healthy):
    from ponybot_core.metrics import MetricsServer

    # The images have python (the virtualenv first on PATH) and no curl or wget.
    check = compose_healthcheck(service)
    assert check[0] == "python" and "/opt/ponybot/venv/bin" in dict(
        dockerfile_stages()["base"])["ENV"]
    server = MetricsServer(lambda: (healthy, "checked"))
    port = server.start("127.0.0.1", 0)
    try:
        result = subprocess.run(check, capture_output=True, text=True, timeout=60,
                                env={**os.environ, "PONYBOT_METRICS_PORT": str(port)})
    finally:
        server.close()
    assert (result.returncode == 0) is healthy, result.stderr[-2000:]


# -- systemd -----------------------------------------------------------------------------------

SYSTEMD = DEPLOY / "systemd"


def unit(name: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values]}}: systemd keys repeat (Environment=,
    LoadCredential=), which configparser folds; its parse is the syntax check."""
    text = (SYSTEMD / name).read_text(encoding="utf-8")
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        elif line and not line.startswith("#"):
            key, _, value = line.partition("=")
            current.setdefault(key, []).append(value)
    assert set(sections) == set(parser.sections())
    return sections


def environment(service: dict[str, list[str]]) -> dict[str, str]:
    pairs = [pair for line in service.get("Environment", []) for pair in line.split()]
    return dict(pair.split("=", 1) for pair in pairs)


@pytest.mark.parametrize(("name", "module"), [("ponybot-bot.service", "bot"),
                                              ("ponybot-worker@.service", "inference")])
def test_each_unit_runs_its_process_through_the_entrypoint_with_credentials(name, module):
    service = unit(name)["Service"]

    assert service["ExecStart"] == [
        f"/opt/ponybot/venv/bin/ponybot-entrypoint /opt/ponybot/venv/bin/python -m {module}"]
    assert sorted(c.split(":")[0] for c in service["LoadCredential"]) == [
        "discord_token", "redis_password"]
    assert environment(service)["REDIS_URL"] == "redis://127.0.0.1:6379/0"
    assert service["User"] == ["ponybot"] and service["RestartPreventExitStatus"] == ["2"]
    assert service["Restart"] == ["on-failure"] and service["NoNewPrivileges"] == ["yes"]
    assert unit(name)["Install"]["WantedBy"] == ["multi-user.target"]


def test_a_worker_unit_per_gpu_sees_only_its_own_gpu():
    service = unit("ponybot-worker@.service")["Service"]

    assert environment(service)["CUDA_VISIBLE_DEVICES"] == "%i"
    assert "PrivateDevices" not in service  # it needs /dev/nvidia*
    assert environment(service)["HF_HUB_OFFLINE"] == "1"


def test_the_redis_unit_starts_the_same_script_with_the_password_from_a_credential():
    service = unit("ponybot-redis.service")["Service"]
    [command] = service["ExecStart"]

    assert command.split()[:4] == ["/bin/sh", "/usr/local/lib/ponybot/redis-start.sh",
                                   "/etc/ponybot/redis.conf", "%d/redis_password"]
    assert service["LoadCredential"] == [
        "redis_password:/etc/ponybot/credentials/redis_password"]
    assert service["User"] == ["redis"] and service["RuntimeDirectoryMode"] == ["0700"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_itself_finds_nothing_wrong_in_the_units(tmp_path):
    # Only the programs install.sh puts in place may be missing on a machine that never ran it.
    for path in SYSTEMD.glob("*.service"):
        shutil.copy(path, tmp_path / path.name)
    shutil.copy(SYSTEMD / "ponybot-worker@.service", tmp_path / "ponybot-worker@0.service")
    result = subprocess.run(
        ["systemd-analyze", "verify", *sorted(str(p) for p in tmp_path.glob("*@0.service")),
         str(tmp_path / "ponybot-bot.service"), str(tmp_path / "ponybot-redis.service")],
        capture_output=True, text=True, timeout=60, cwd=tmp_path)
    complaints = [line for line in result.stderr.splitlines()
                  if not re.search(r"Command /opt/ponybot/venv/bin/\S+ is not executable", line)]
    assert complaints == []


# -- the light install's processes -------------------------------------------------------------

def test_ponybot_check_on_a_machine_without_torch_says_so_instead_of_crashing(monkeypatch,
                                                                              tmp_path):
    from ponybot_cli import doctor
    from ponybot_core.config import LoadedConfig, Secrets
    from ponybot_testkit.world import tiny_config

    monkeypatch.setitem(sys.modules, "torch", None)  # as the light install: no torch at all
    loaded = LoadedConfig(config=tiny_config(tmp_path / "tiny"), secrets=Secrets(),
                          path=tmp_path / "config.toml")

    finding = doctor.check_device(loaded)

    assert finding.status == "warn" and finding.topic == "device"
    assert "torch is not installed" in finding.detail
    assert finding.fix and "ponybot[worker]" in finding.fix


def test_a_worker_started_without_torch_stops_with_one_line_and_exit_2(tmp_path):
    # `ponybot up` on the light install starts a worker unless --workers 0: exit 2 makes `up`
    # stop at once with this line, instead of restarting a worker that can never start.
    code = ("import sys; sys.modules['torch'] = None; from inference.__main__ import main; "
            "sys.exit(main(['--config', sys.argv[1]]))")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "config.toml")],
                            capture_output=True, text=True, timeout=120, cwd=ROOT,
                            env={**os.environ, "DISCORD_TOKEN": "x",
                                 "REDIS_URL": "redis://127.0.0.1:1/0"})

    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "worker: torch is not installed (the light bot install): pip install 'ponybot[worker]' "
        "where workers run, or `ponybot up --workers 0` here")
