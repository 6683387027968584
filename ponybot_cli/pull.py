"""`ponybot models pull ID`: put a configured model where config.toml says it is.

A model with `hub_repo` in config.toml is downloaded from the Hugging Face hub with
`huggingface_hub` into the model's `path`: only the files `StableDiffusionPipeline` loads
(model_index.json, scheduler, tokenizer, and the weights of unet, vae and text_encoder: one
format each, safetensors preferred; never the safety checker or a full-precision checkpoint
also kept in the repository), with progress bars. An interrupted pull is run again: finished
files are kept (huggingface_hub's metadata in `<path>/.cache/huggingface`), a dropped connection
resumes where it stopped. A model without `hub_repo` is fetched by hand: this prints its exact
file name, its `download_url` and where it goes.

`ponybot models pull safety` fetches the picture check's classifier ([safety]: `hub_repo` into
`path`): only the files it loads (config.json, model.safetensors, the labels file).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from inference.models.inventory import check_model, human_size
from inference.safety.files import classifier_problem, required_files
from ponybot_cli.config_loading import load_or_explain
from ponybot_core.config import ModelEntry, ModelFormat, SafetyConfig, resolve_path

# Pipeline components loaded with weights, and those that are only configuration.
_WEIGHTED = ("unet", "vae", "text_encoder")
_CONFIG_ONLY = ("scheduler", "tokenizer")


class PullError(Exception):
    """The pull cannot go on; `str(error)` says why and what to do."""


def add_parser(actions: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    pull = actions.add_parser("pull", parents=[parent], help="download a model into its path",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    pull.add_argument("model_id", help="a model id from config.toml, or `safety` for the "
                                       "picture check's classifier")
    pull.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    loaded = load_or_explain(args.config)
    if loaded is None:
        return 2
    if args.model_id == SAFETY_ID and SAFETY_ID not in {m.id for m in loaded.config.models}:
        return pull_classifier(loaded.config.safety, loaded.path.parent)
    try:
        entry = loaded.config.model(args.model_id)
    except KeyError:
        known = ", ".join(m.id for m in loaded.config.models)
        print(f"unknown model {args.model_id!r}; configured models: {known}", file=sys.stderr)
        return 2
    base_dir = loaded.path.parent
    if entry.hub_repo is None:
        return explain_manual_download(entry, base_dir)
    target = resolve_path(entry.path, base_dir)
    try:
        pull_from_hub(entry, target)
    except PullError as exc:
        print(f"✘ {entry.id}: {exc}", file=sys.stderr)
        return 1
    check = check_model(entry, base_dir)
    if not check.usable:
        print(f"✘ {entry.id}: downloaded, but {check.problem}", file=sys.stderr)
        return 1
    print(f"✔ {entry.id}: {target} ({human_size(check.size_bytes)}) is ready; "
          f"`ponybot draw \"pony, solo\" --model {entry.id}` tries it")
    return 0


SAFETY_ID = "safety"


def pull_classifier(safety: SafetyConfig, base_dir: Path) -> int:
    """The picture check's classifier from `[safety] hub_repo` into its `path`."""
    from huggingface_hub import constants, snapshot_download

    if safety.path is None or safety.hub_repo is None:
        print("✘ safety: [safety] needs `path` and `hub_repo` in config.toml to be pulled",
              file=sys.stderr)
        return 2
    target = resolve_path(safety.path, base_dir)
    if classifier_problem(safety, base_dir) is None:
        print(f"✔ safety: {target} is already there.")
        return 0
    if constants.HF_HUB_OFFLINE:
        print("✘ safety: HF_HUB_OFFLINE is set, so nothing can be downloaded: unset it (and "
              "TRANSFORMERS_OFFLINE) for this command.", file=sys.stderr)
        return 1
    revision = safety.revision or "main"
    print(f"safety: {', '.join(required_files(safety))} from {constants.ENDPOINT}/"
          f"{safety.hub_repo} at {revision} into {target}", flush=True)
    try:
        snapshot_download(safety.hub_repo, revision=revision, local_dir=target,
                          allow_patterns=required_files(safety))
    except Exception as exc:
        print(f"✘ safety: could not download {safety.hub_repo}@{revision}: {exc}. Run the "
              "same command again to resume.", file=sys.stderr)
        return 1
    if problem := classifier_problem(safety, base_dir):
        print(f"✘ safety: downloaded, but {problem}", file=sys.stderr)
        return 1
    print(f"✔ safety: {target} is ready; the worker checks pictures with it.")
    return 0


def explain_manual_download(entry: ModelEntry, base_dir: Path) -> int:
    """A model that is not on the hub: its exact file name, its link and where it goes."""
    check = check_model(entry, base_dir)
    if check.usable:
        print(f"✔ {entry.id}: {check.path} is already there ({human_size(check.size_bytes)}).")
        return 0
    if entry.download_url:
        link = entry.download_url
        if "mega.nz/" in link:
            link += "\n          (a mega.nz link: open it in a browser, or use MEGA's megacmd)"
    else:
        link = ("none in the config (no `download_url`): get the file where its author "
                "published it")
    print(f"{entry.id} ({entry.name}) is not on the Hugging Face hub, so it is fetched by hand:\n"
          f"  file:   {check.path.name}\n"
          f"  link:   {link}\n"
          f"  put at: {check.path}\n"
          f"Keep the exact file name. Then `ponybot models` shows it ✔.")
    if check.problem and not check.problem.startswith("not found"):
        print(f"Now: {check.problem}")
    return 1


def pull_from_hub(entry: ModelEntry, target: Path) -> None:
    """Download `entry.hub_repo` (at `entry.revision`) into `target`, only what loading needs."""
    # huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE when imported: import it here, late.
    from huggingface_hub import HfApi, constants, snapshot_download

    assert entry.hub_repo is not None
    if constants.HF_HUB_OFFLINE:
        raise PullError("HF_HUB_OFFLINE is set, so nothing can be downloaded: unset it (and "
                        "TRANSFORMERS_OFFLINE) for this command.")
    revision = entry.revision or "main"
    api = HfApi()
    try:
        sizes = {f.path: f.size for f in api.list_repo_tree(entry.hub_repo, revision=revision,
                                                            recursive=True)
                 if hasattr(f, "size")}  # fmt: skip
        if entry.resolved_format() is ModelFormat.DIFFUSERS:
            wanted, local_dir = pipeline_files(list(sizes), entry.hub_repo), target
        else:
            wanted, local_dir = [_single_file(list(sizes), entry.hub_repo, target.name)], \
                target.parent
        total = sum(sizes[f] or 0 for f in wanted)
        print(f"{entry.id}: {len(wanted)} files ({human_size(total)}) from "
              f"{constants.ENDPOINT}/{entry.hub_repo} at {revision} into {local_dir}",
              flush=True)
        snapshot_download(entry.hub_repo, revision=revision, local_dir=local_dir,
                          allow_patterns=wanted)
    except PullError:
        raise
    except Exception as exc:
        # Network errors come as the HTTP client's own types: say what failed, whatever it is.
        raise PullError(f"could not download {entry.hub_repo}@{revision}: {exc}. Run the "
                        f"same command again to resume; finished files are kept.") from exc


def pipeline_files(files: list[str], repo: str) -> list[str]:
    """The files of a diffusers repository that `StableDiffusionPipeline` loads (the safety
    checker and feature extractor are never loaded): configs, tokenizer, scheduler, and one
    weights format per component, safetensors before .bin, full precision before fp16."""
    if "model_index.json" not in files:
        raise PullError(f"{repo} has no model_index.json: it is not a diffusers pipeline. Set "
                        f"`path` to a single .safetensors/.ckpt file name it holds instead.")
    wanted = ["model_index.json"]
    for component in _CONFIG_ONLY:
        found = [f for f in files if f.startswith(f"{component}/")]
        if not found:
            raise PullError(f"{repo} has no {component}/ folder: not an SD pipeline repository")
        wanted += found
    for component in _WEIGHTED:
        names = [f.removeprefix(f"{component}/") for f in files if f.startswith(f"{component}/")]
        if "config.json" not in names:
            raise PullError(f"{repo} has no {component}/config.json: not an SD pipeline")
        weights = _one_weights_format(names)
        if not weights:
            raise PullError(f"{repo} has no weights in {component}/")
        wanted += [f"{component}/{n}" for n in ("config.json", *weights)]
    return wanted


def _one_weights_format(names: list[str]) -> list[str]:
    for variant in ("", r"\.fp16"):
        for ext in ("safetensors", "bin"):
            weights = re.compile(rf"(diffusion_pytorch_model|model|pytorch_model)(-\d+-of-\d+)?"
                                 rf"{variant}\.{ext}(\.index\.json)?")
            chosen = sorted(n for n in names if weights.fullmatch(n))
            if chosen:
                return chosen
    return []


def _single_file(files: list[str], repo: str, name: str) -> str:
    if name not in files:
        raise PullError(f"{repo} has no file {name!r} at its top level (it has "
                        f"{', '.join(f for f in files if '/' not in f)[:300]}); set `path` to "
                        f"one of those names")
    return name
