"""config.toml: validated at start, errors name the key, secrets only from the environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ponybot_core.config import ConfigError, ModelFormat, Secrets, config_path, load_config
from tests.translunar_reference import METADATA_PARAMS, TAG_SEPARATOR

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


def test_the_shipped_config_lists_the_seed_models_under_their_file_names():
    config = load_config(REPO / "config.toml")
    formats = {m.id: m.resolved_format() for m in config.models}
    assert formats == {
        "pony-diffusion": ModelFormat.DIFFUSERS,
        "v1": ModelFormat.CKPT,
        "v1-287k": ModelFormat.CKPT,
        "v2": ModelFormat.CKPT,
        "v4": ModelFormat.SAFETENSORS,
        "v5": ModelFormat.SAFETENSORS,
        "v6-xl": ModelFormat.SAFETENSORS,
    }
    assert config.default_model == "pony-diffusion"
    # The files as Lun's post names them (LunNova/Blog @ 86d6c66), so dropping one in works;
    # V5's and V6 XL's as civitai serves them (config.toml's [F]), V4's ours (its card has none).
    assert {m.id: m.path.name for m in config.models if m.id != "pony-diffusion"} == {
        "v1": "sd1.4 finetuned derpibooru safe suggestive e=0007 gs=460000.ckpt",
        "v1-287k": "sd1.4 finetuned derpibooru safe suggestive e=0002 gs=287000.ckpt",
        "v2": "sd1.4 finetuned v2 derpibooru e=0000 gs=026400.ckpt",
        "v4": "pony-diffusion-v4.safetensors",
        "v5": "ponyDiffusionV5_v55.safetensors",
        "v6-xl": "ponyDiffusionV6XL_v6StartWithThisOne.safetensors",
    }


def test_both_v1_checkpoints_have_the_training_configs_caption_rules():
    """config.toml's V1 profile against translunar-diffusion @ 06e6206's data config."""
    config = load_config(REPO / "config.toml")
    v1, v1_early = config.model("v1").caption, config.model("v1-287k").caption
    assert v1 == v1_early
    assert v1.separator == TAG_SEPARATOR and not v1.underscores
    assert v1.replacements == list(METADATA_PARAMS["replacements"].items())
    assert v1.dropped_tags == list(dict.fromkeys(METADATA_PARAMS["non_caption_tags"]))
    assert v1.unseen_tags == METADATA_PARAMS["blacklist_tags"]
    assert v1.score_buckets == [
        n for n in METADATA_PARAMS["score_tags"] if n >= METADATA_PARAMS["abs_min_score"]
    ]
    assert set(v1.ratings) == {"safe", "suggestive", "questionable", "explicit"} - set(
        METADATA_PARAMS["blacklist_tags"]
    )
    # Training ran the rules over the joined caption, the bot runs them per tag: the same as
    # long as no rule reaches across the separator.
    assert not any(TAG_SEPARATOR in old or "," in old for old, _ in v1.replacements)


def test_default_score_tags_are_buckets_images_reached_without_a_bonus():
    # min_score 200 after tag bonuses: scr50-scr150 only tagged images a `solo`/`duo` bonus let
    # in, so they say "low score, one or two characters", not "good picture".
    config = load_config(REPO / "config.toml")
    for model in config.models:
        if model.caption.score_tag:
            assert model.caption.score_tag in {f"scr{n}" for n in model.caption.score_buckets}
            assert int(model.caption.score_tag.removeprefix("scr")) >= METADATA_PARAMS[
                "min_score"], model.id


def test_captions_of_old_configs_are_refused_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"models\.0\.quality_tags"):
        load_config(write(tmp_path, MINIMAL + 'quality_tags = ["scr800"]\n'))


def test_a_replacement_that_could_never_match_is_refused(tmp_path):
    text = MINIMAL + '[models.caption]\nreplacements = [["Twilight Sparkle", "twilight"]]\n'
    with pytest.raises(ConfigError, match=r"models\.0\.caption(.|\n)*lower case"):
        load_config(write(tmp_path, text))


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


@pytest.mark.parametrize("module", ["bot", "inference"])
@pytest.mark.parametrize(("env", "named"), [
    ({"REDIS_URL": "redis://127.0.0.1:1/0"}, "DISCORD_TOKEN is not set"),
    ({"DISCORD_TOKEN": "t"}, "no Redis: set REDIS_URL"),
])
def test_processes_say_which_secret_is_missing(tmp_path, module, env, named):
    path = write(tmp_path, MINIMAL)
    clean = {k: v for k, v in os.environ.items() if k not in ("DISCORD_TOKEN", "REDIS_URL")}
    result = subprocess.run([sys.executable, "-m", module, "--config", str(path)],
                            capture_output=True, text=True, timeout=120, env={**clean, **env})
    assert result.returncode == 2
    assert named in result.stderr
