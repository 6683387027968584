"""`ponybot draw`: a local picture with no Discord and no Redis, drawn exactly as `/pony` would
be (caption, defaults, the worker's sampling and upscaling, PNG parameters)."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inference.drawing.sampling import sample_batch
from inference.models.cache import ModelCache
from inference.models.device import choose_placement
from inference.results.post import image_parameters
from ponybot_cli.main import main
from ponybot_core.config import load_config
from ponybot_core.job import Job
from ponybot_request.options import PonyOptions
from ponybot_request.prompting import render_prompt
from ponybot_request.resolution import resolve


def write_config(folder: Path, pipeline_dir: Path, upscaler: Path | None = None) -> Path:
    upscalers = '\ndefault_upscaler = "tiny-x4"\n' if upscaler else ""
    tables = f"""
[[upscalers]]
id = "tiny-x4"
name = "Tiny ESRGAN"
path = "{upscaler}"
""" if upscaler else ""
    path = folder / "config.toml"
    path.write_text(f"""default_model = "tiny"
{upscalers}
[defaults]
steps = 2

[sizes]
square = {{ width = 64, height = 64 }}
portrait = {{ width = 64, height = 96 }}
landscape = {{ width = 96, height = 64 }}

[worker]
device = "cpu"
{tables}
[[models]]
id = "tiny"
name = "Tiny Pony"
path = "{pipeline_dir}"

[models.caption]
score_tag = "scr100"
sfw_negative_tags = ["explicit"]

[[models]]
id = "gone"
name = "Gone Pony"
path = "models/gone"
hub_repo = "AstraliteHeart/pony-diffusion"
""")
    return path


def png(path: Path) -> Image.Image:
    image = Image.open(io.BytesIO(path.read_bytes()))
    image.load()
    return image


def test_draw_writes_what_the_bot_would_post_and_says_what_the_model_saw(
        tiny_pipeline_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config_path = write_config(tmp_path, tiny_pipeline_dir)
    out = tmp_path / "out"

    code = main(["draw", "twilight sparkle, solo", "--seed", "7", "--count", "2",
                 "--out", str(out), "--config", str(config_path)])

    printed = capsys.readouterr()
    assert code == 0, printed.err
    # The caption, as /pony renders it for this model in a channel that is not age-restricted.
    config = load_config(config_path)
    options = PonyOptions.parse(config, tags="twilight sparkle, solo", seed=7, count=2)
    entry = config.model("tiny")
    rendered, _ = render_prompt(options, entry, config, age_restricted=False)
    assert f"prompt:   {rendered.positive}\n" in printed.out
    assert f"negative: {rendered.negative}\n" in printed.out
    assert "sampling" in printed.err and "2/2" in printed.err  # the progress bar
    # The job the worker would have drawn, sampled the worker's way.
    generation = resolve(options, config).generation
    job = Job(application_id=0, interaction_id=0, interaction_token="", guild_id=None,
              channel_id=0, user_id=0, model_id="tiny", tags="twilight sparkle, solo",
              prompt=rendered.positive, negative_prompt=rendered.negative, seed=7, seeded=True,
              steps=generation.steps, cfg=generation.cfg, sampler=generation.sampler,
              width=64, height=64, count=2)
    cache = ModelCache(config, base_dir=tmp_path, placement=choose_placement("cpu"))
    [expected] = sample_batch(asyncio.run(cache.get("tiny")), [job])
    files = sorted(out.glob("*.png"))
    assert [f.name.rsplit("_", 1)[1] for f in files] == ["7.png", "8.png"]
    for file, seed, image in zip(files, [7, 8], expected.images, strict=True):
        assert f"wrote {file}" in printed.out
        drawn = png(file)
        assert drawn.text["parameters"] == image_parameters(job, seed, "Tiny Pony", None)
        assert np.array_equal(np.asarray(drawn.convert("RGB")), np.asarray(image))


def test_draw_upscales_through_the_configured_upscaler(
        tiny_pipeline_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ponybot_testkit.tiny_esrgan import realesrgan_state_dict, save_pth

    upscaler = save_pth(realesrgan_state_dict(), tmp_path / "tiny-x4.pth")
    config_path = write_config(tmp_path, tiny_pipeline_dir, upscaler)

    code = main(["draw", "pony", "--seed", "3", "--upscale", "--out", str(tmp_path / "out"),
                 "--config", str(config_path)])

    assert code == 0, capsys.readouterr().err
    [file] = (tmp_path / "out").glob("*.png")
    drawn = png(file)
    assert file.name.endswith("_3_upscaled.png") and drawn.size == (256, 256)
    assert drawn.text["parameters"].endswith(", Postprocess upscaler: Tiny ESRGAN ×4")


def test_a_missing_model_is_named_with_what_to_do_before_anything_loads(
        tiny_pipeline_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config_path = write_config(tmp_path, tiny_pipeline_dir)

    code = main(["draw", "pony", "--model", "gone", "--out", str(tmp_path / "out"),
                 "--config", str(config_path)])

    assert code == 1
    err = capsys.readouterr().err
    assert f"✘ gone: not found: {tmp_path / 'models/gone'}" in err
    assert "→ run `ponybot models pull gone`" in err
    assert not (tmp_path / "out").exists()


def test_options_are_checked_as_pony_checks_them(
        tiny_pipeline_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config_path = write_config(tmp_path, tiny_pipeline_dir)

    code = main(["draw", "pony", "--steps", "999", "--config", str(config_path)])

    assert code == 2
    assert capsys.readouterr().err.strip() == \
        "✘ `steps` must be between 1 and 60 (you gave 999)."
