"""The picture check's files and warnings, without torch: what `ponybot models`, `ponybot
check` and the worker's start say about the classifier ([safety] in config.toml)."""

from __future__ import annotations

from pathlib import Path

from ponybot_core.config import Config, SafetyConfig, resolve_path

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def required_files(config: SafetyConfig) -> list[str]:
    """The files a classifier folder must hold."""
    return [CONFIG_FILE, WEIGHTS_FILE, config.labels_file]


def classifier_problem(config: SafetyConfig, base_dir: Path) -> str | None:
    """None when the configured classifier's files are all there (or none is configured);
    else what is missing, and what it means."""
    if config.path is None:
        return None
    folder = resolve_path(config.path, base_dir)
    missing = [name for name in required_files(config) if not (folder / name).is_file()]
    if not missing:
        return None
    return (f"picture check classifier {folder}: missing {', '.join(missing)}; pictures for "
            "channels that are not age-restricted are withheld until it is there (`ponybot "
            "models pull safety`)")


def unchecked_nsfw_models(config: Config) -> list[str]:
    """Models whose card says they draw NSFW, on a bot with no picture check."""
    if config.safety.path is not None:
        return []
    return [m.id for m in config.models if m.draws_nsfw]


def unchecked_warning(config: Config) -> str | None:
    models = unchecked_nsfw_models(config)
    if not models:
        return None
    return (f"no picture check ([safety] path unset) and model(s) {', '.join(models)} can draw "
            "NSFW: outside age-restricted channels only the prompt keeps their pictures safe")
