"""config.toml: validated at start, errors name the key, secrets only from the environment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from core.config import ConfigError, ModelFormat, Secrets, config_path, load_config

REPO = Path(__file__).resolve().parent.parent
MINIMAL = """
default_model = "m"
[[models]]
id = "m"
name = "M"
path = "models/m"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_the_shipped_config_lists_the_three_seed_models():
    config = load_config(REPO / "config.toml")
    formats = {m.id: m.resolved_format() for m in config.models}
    assert formats == {
        "pony-diffusion": ModelFormat.DIFFUSERS,
        "v1": ModelFormat.CKPT,
        "v2": ModelFormat.CKPT,
    }
    assert config.default_model == "pony-diffusion"


def test_a_minimal_config_gets_the_documented_defaults(tmp_path):
    config = load_config(write(tmp_path, MINIMAL))
    defaults = config.defaults
    assert (defaults.steps, defaults.cfg, defaults.sampler) == (25, 7.5, "ddim")
    assert config.sizes["portrait"].height == 768


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ('[defaults]\nsteps = "many"\n', "defaults.steps"),
        ("[limits]\ncount_max = 0\n", "limits.count_max"),
        ("[defaults]\nstepz = 3\n", "defaults.stepz"),
        ('[worker]\ndevice = "tpu"\n', "worker.device"),
        ("[sizes]\nsquare = { width = 500, height = 512 }\n", "sizes.square.width"),
    ],
)
def test_an_invalid_value_fails_with_a_message_naming_the_key(tmp_path, extra, named):
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, MINIMAL + extra))
    assert named in str(error.value)
    assert str(tmp_path / "config.toml") in str(error.value)


def test_default_model_must_be_configured(tmp_path):
    with pytest.raises(ConfigError, match="default_model"):
        load_config(write(tmp_path, MINIMAL.replace('default_model = "m"', 'default_model = "x"')))


def test_a_token_in_the_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="DISCORD_TOKEN"):
        load_config(write(tmp_path, '[discord]\ntoken = "abc"\n' + MINIMAL))


def test_the_token_comes_from_the_environment_and_never_shows_in_reprs(monkeypatch):
    monkeypatch.setenv("DISCORD_TOKEN", "very-secret")
    secrets = Secrets()
    assert secrets.discord_token is not None
    assert secrets.discord_token.get_secret_value() == "very-secret"
    assert "very-secret" not in repr(secrets) and "very-secret" not in str(secrets)


def test_the_config_path_comes_from_the_flag_then_the_environment_then_the_default(monkeypatch):
    monkeypatch.delenv("PONYBOT_CONFIG", raising=False)
    assert config_path(None) == Path("config.toml")
    monkeypatch.setenv("PONYBOT_CONFIG", "/etc/ponybot.toml")
    assert config_path(None) == Path("/etc/ponybot.toml")
    assert config_path("here.toml") == Path("here.toml")


@pytest.mark.parametrize("module", ["bot", "inference"])
def test_processes_refuse_to_start_on_an_invalid_config(tmp_path, module):
    path = write(tmp_path, MINIMAL + "[defaults]\nsteps = -1\n")
    result = subprocess.run([sys.executable, "-m", module, "--config", str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "defaults.steps" in result.stderr
