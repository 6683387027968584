"""The picture check's parts (inference/safety): the classifier as the worker loads it, the
verdict it gives, what a server's choice makes of a job, the warnings where there is no check,
and `ponybot draw --check-pictures`. End to end through Discord:
tests/test_picture_check_end_to_end.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from bot.guild_settings import from_hash
from bot.safety_settings import SAFETY_FIELD, SafetyChoice
from inference.safety.checking import PictureChecker
from inference.safety.classifier import ClassifierUnavailable, load_classifier
from inference.safety.files import classifier_problem, unchecked_warning
from ponybot_cli.doctor import check_picture_check
from ponybot_cli.main import main
from ponybot_core.config import Config, LoadedConfig, SafetyConfig
from ponybot_core.job import Flagged, Job
from ponybot_testkit.tiny_classifier import FLAG_ALL, FLAG_NONE, save_tiny_classifier
from ponybot_testkit.world import make_job

CPU = torch.device("cpu")
GREYS = [Image.new("RGB", (64, 64), (v, v, v)) for v in (20, 120, 200, 240)]


def checker(folder: Path) -> PictureChecker:
    return PictureChecker(SafetyConfig(path=folder), base_dir=folder.parent, device=CPU)


def test_the_verdict_follows_the_classifier_and_the_threshold(tmp_path: Path) -> None:
    folder = save_tiny_classifier(tmp_path / "c", brighter_than=0.0)
    classifier = load_classifier(SafetyConfig(path=folder), folder, CPU, torch.float32)
    assert [v.flagged for v in classifier.classify(GREYS)] == [False, False, True, True]
    assert [v.rating for v in classifier.classify(GREYS)] == ["safe", "safe", "explicit",
                                                              "explicit"]
    # A threshold above what the classifier says flags nothing: it trades misses for alarms.
    lenient = load_classifier(SafetyConfig(path=folder, threshold=0.99), folder, CPU,
                              torch.float32)
    assert not any(v.flagged for v in lenient.classify(GREYS))


def test_batches_give_the_same_verdicts_as_one_picture_at_a_time(tmp_path: Path) -> None:
    folder = save_tiny_classifier(tmp_path / "c", brighter_than=0.0)
    one = load_classifier(SafetyConfig(path=folder, batch_size=1), folder, CPU, torch.float32)
    four = load_classifier(SafetyConfig(path=folder, batch_size=4), folder, CPU, torch.float32)
    assert [v.score for v in one.classify(GREYS)] == pytest.approx(
        [v.score for v in four.classify(GREYS)], abs=1e-5)


def test_a_classifier_whose_labels_do_not_match_its_outputs_is_refused_by_name(
        tmp_path: Path) -> None:
    folder = save_tiny_classifier(tmp_path / "c")
    (folder / "selected_tags.csv").write_text("tag_id,name,category,count\n0,general,9,1\n")
    with pytest.raises(ClassifierUnavailable, match=r"outputs and selected_tags\.csv 1 labels"):
        load_classifier(SafetyConfig(path=folder), folder, CPU, torch.float32)


def test_a_damaged_classifier_withholds_every_picture_it_should_have_checked(
        tmp_path: Path) -> None:
    folder = save_tiny_classifier(tmp_path / "c", brighter_than=FLAG_NONE)
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    checked = checker(folder).check(make_job(count=4), list(GREYS))
    assert checked.withheld == frozenset(range(4))
    assert all(a.size == b.size and a is not b for a, b in zip(checked.images, GREYS,
                                                                strict=True))
    assert checked.record.startswith("withheld all 4: check unavailable")


def test_a_missing_classifier_is_named_with_what_to_do(tmp_path: Path) -> None:
    problem = classifier_problem(SafetyConfig(path=Path("gone")), tmp_path)
    assert problem is not None and "ponybot models pull safety" in problem
    checked = checker(tmp_path / "gone").check(make_job(), [GREYS[0]])
    assert checked.withheld == {0}


def test_age_restricted_channels_skip_the_check_unless_the_server_asks() -> None:
    assert SafetyChoice().picture_check(age_restricted=True).check is False
    assert SafetyChoice().picture_check(age_restricted=False).check is True
    asked = SafetyChoice(check_age_restricted=True)
    assert asked.picture_check(age_restricted=True).check is True
    # Redirect with no channel left is withhold.
    assert SafetyChoice(flagged=Flagged.REDIRECT).picture_check(
        age_restricted=False).flagged is Flagged.WITHHOLD


def test_a_job_from_an_older_bot_is_checked_and_withheld(tmp_path: Path) -> None:
    stored = json.loads(make_job().to_json())
    del stored["picture_check"]
    job = Job.from_json(json.dumps(stored))
    assert job.picture_check.check and job.picture_check.flagged is Flagged.WITHHOLD
    folder = save_tiny_classifier(tmp_path / "c", brighter_than=FLAG_ALL)
    assert checker(folder).check(job, [GREYS[0]]).withheld == {0}


def test_an_unreadable_server_choice_counts_as_the_strict_default() -> None:
    settings = from_hash({SAFETY_FIELD: "{not json"}, 1)
    assert settings.safety == SafetyChoice()


def test_no_check_and_a_model_that_draws_nsfw_is_warned_about(
        settings: LoadedConfig) -> None:
    raw = settings.config.model_dump()
    raw["models"][0]["draws_nsfw"] = True
    loaded = settings.model_copy(update={"config": Config.model_validate(raw)})
    warning = unchecked_warning(loaded.config)
    assert warning is not None and "tiny" in warning
    finding = check_picture_check(loaded)
    assert finding is not None and finding.status == "warn" and "tiny" in finding.detail
    assert unchecked_warning(settings.config) is None


async def test_model_info_warns_when_a_model_draws_nsfw_and_nothing_checks(
        fake, redis, settings: LoadedConfig) -> None:
    from ponybot_testkit.world import CHANNEL_ID, GUILD_ID, USER_ID, running_bot

    raw = settings.config.model_dump()
    raw["models"][0]["draws_nsfw"] = True
    loaded = settings.model_copy(update={"config": Config.model_validate(raw)})
    async with running_bot(loaded, fake):
        itx = await fake.invoke("model info", {"model": "tiny"}, guild_id=GUILD_ID,
                                channel_id=CHANNEL_ID, user_id=USER_ID)
        await itx.wait_response(timeout=5)
        assert "can draw NSFW pictures, and this bot has no picture check" in \
            itx.original.content
        itx = await fake.invoke("model info", {"model": "tiny-v2"}, guild_id=GUILD_ID,
                                channel_id=CHANNEL_ID, user_id=USER_ID)
        await itx.wait_response(timeout=5)
        assert "no picture check" not in itx.original.content


def test_draw_check_pictures_writes_a_flagged_picture_as_its_placeholder(
        tiny_pipeline_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.test_cli_draw import write_config

    config_path = write_config(tmp_path, tiny_pipeline_dir)
    save_tiny_classifier(tmp_path / "classifier", brighter_than=FLAG_ALL)
    config_path.write_text(config_path.read_text().replace(
        "[worker]", '[safety]\npath = "classifier"\n\n[worker]'))
    out = tmp_path / "out"
    assert main(["draw", "pony", "--seed", "7", "--out", str(out), "--config",
                 str(config_path)]) == 0
    assert [p.name.endswith("_withheld.png") for p in out.glob("*.png")] == [False]
    assert main(["draw", "pony", "--seed", "7", "--check-pictures", "--out", str(out),
                 "--config", str(config_path)]) == 0
    assert sorted(p.name.endswith("_withheld.png") for p in out.glob("*.png")) == [False, True]
    assert "withheld 1" in capsys.readouterr().out


def test_ponybot_check_names_a_missing_classifier_and_passes_a_present_one(
        settings: LoadedConfig, tmp_path: Path) -> None:
    def with_path(path: Path) -> LoadedConfig:
        raw = settings.config.model_dump()
        raw["safety"] = {"path": str(path)}
        return settings.model_copy(update={"config": Config.model_validate(raw)})

    missing = check_picture_check(with_path(tmp_path / "gone"))
    assert missing is not None and missing.status == "warn"
    assert missing.fix == "ponybot models pull safety"
    present = check_picture_check(with_path(save_tiny_classifier(tmp_path / "c")))
    assert present is not None and present.status == "ok"
    assert check_picture_check(settings) is None  # no check, and nothing that needs one


def test_ponybot_models_shows_whether_the_classifier_is_there(
        tiny_pipeline_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.test_cli_draw import write_config

    config_path = write_config(tmp_path, tiny_pipeline_dir)
    config_path.write_text(config_path.read_text().replace(
        "[worker]", '[safety]\npath = "classifier"\n\n[worker]'))
    main(["models", "--config", str(config_path)])
    assert "missing config.json, model.safetensors, selected_tags.csv" in capsys.readouterr().out
    save_tiny_classifier(tmp_path / "classifier")
    main(["models", "--config", str(config_path)])
    assert "picture check: classifier — present" in capsys.readouterr().out


def test_a_classifier_whose_scores_are_not_numbers_withholds_the_picture(
        tmp_path: Path) -> None:
    # NaN outputs (as an fp16 overflow in the trunk gives) are a failed check, never "safe".
    from safetensors.torch import load_file, save_file

    folder = save_tiny_classifier(tmp_path / "c", brighter_than=FLAG_ALL)
    weights = load_file(str(folder / "model.safetensors"))
    weights["patch_embed.proj.bias"][:] = float("nan")
    save_file(weights, str(folder / "model.safetensors"))
    checked = checker(folder).check(make_job(), [GREYS[0], GREYS[3]])
    assert checked.withheld == {0, 1}
    assert checked.record.startswith("withheld all 2: check unavailable")
    assert "not a number" in checked.record


def test_the_classifier_runs_in_float32_whatever_the_worker_draws_in(tmp_path: Path) -> None:
    folder = save_tiny_classifier(tmp_path / "c", brighter_than=FLAG_ALL)
    classifier = checker(folder).classifier()
    assert {p.dtype for p in classifier.model.parameters()} == {torch.float32}
    assert classifier.inputs([GREYS[0]]).dtype == torch.float32


def test_a_job_with_a_picture_check_is_refused_by_a_worker_that_predates_it() -> None:
    # A worker from before the picture check reads jobs of schema version 1 only and ignores
    # fields it does not know: the new job must not pass as version 1.
    from typing import Literal

    from pydantic import BaseModel, ConfigDict, ValidationError

    class OldWorkersJob(BaseModel):  # ponybot_core/job.py before the picture check
        model_config = ConfigDict(frozen=True, extra="ignore")
        schema_version: Literal[1] = 1

    stored = make_job().to_json()
    with pytest.raises(ValidationError):
        OldWorkersJob.model_validate_json(stored)
    # This worker reads both: a version-1 job (no picture check: an older bot's) is checked.
    old = json.loads(stored)
    del old["picture_check"]
    old["schema_version"] = 1
    job = Job.from_json(json.dumps(old))
    assert job.picture_check.check and job.picture_check.flagged is Flagged.WITHHOLD
    assert Job.from_json(stored).schema_version == 2
