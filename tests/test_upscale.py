"""Upscalers load through spandrel from the files real deployments use, tile without seams, and
refuse anything that is not an image upscaler with a message naming the file."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from inference.results.upscale import (
    UpscaleError,
    Upscaler,
    UpscalerCache,
    _choose_dtype,
    load_upscaler,
    tile_spans,
)
from ponybot_core.config import UpscalerEntry
from ponybot_testkit.tiny_esrgan import (
    TINY_RRDB_RECEPTIVE_RADIUS,
    TinyUpscalers,
    build_tiny_upscalers,
    save_pth,
    save_safetensors,
)

CPU = torch.device("cpu")



@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyUpscalers:
    return build_tiny_upscalers(tmp_path_factory.mktemp("upscalers"))


def entry(path: Path, **overrides: object) -> UpscalerEntry:
    return UpscalerEntry(id="tiny", name="Tiny ESRGAN", path=path, **overrides)  # type: ignore[arg-type]


def load(path: Path, **overrides: object) -> Upscaler:
    return load_upscaler(entry(path, **overrides), base_dir=path.parent, device=CPU,
                         dtype=torch.float32)


def random_image(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    channels = len(mode)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), np.uint8)
    return Image.fromarray(pixels, mode)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


# --- loading -----------------------------------------------------------------------------------


def test_realesrgan_pth_loads_and_upscales_64_to_256(tiny: TinyUpscalers) -> None:
    upscaler = load(tiny.realesrgan_pth)

    result = upscaler.upscale(random_image(64, 64))

    assert upscaler.scale == 4
    assert upscaler.descriptor.architecture.id == "ESRGAN"
    assert result.size == (256, 256) and result.mode == "RGB"
    assert pixels(result).std() > 10  # a picture, not a clamped flat field


def test_safetensors_and_the_original_esrgan_layout_give_the_same_pixels(
        tiny: TinyUpscalers) -> None:
    image = random_image(32, 24, seed=1)
    reference = pixels(load(tiny.realesrgan_pth).upscale(image))

    for path in (tiny.realesrgan_safetensors, tiny.esrgan_pth):
        result = load(path).upscale(image)
        assert result.size == (128, 96)
        assert np.array_equal(pixels(result), reference), path.name


def test_compact_net_loads_and_upscales(tiny: TinyUpscalers) -> None:
    upscaler = load(tiny.compact_pth)

    assert upscaler.descriptor.architecture.id == "Compact"
    assert upscaler.upscale(random_image(40, 24)).size == (160, 96)


def test_relative_paths_resolve_against_base_dir(tiny: TinyUpscalers) -> None:
    relative = UpscalerEntry(id="tiny", name="Tiny", path=Path(tiny.realesrgan_pth.name))

    upscaler = load_upscaler(relative, base_dir=tiny.realesrgan_pth.parent, device="cpu",
                             dtype=torch.float16)

    assert upscaler.path == tiny.realesrgan_pth
    assert upscaler.dtype == torch.float32  # fp16 is for GPUs; CPUs run fp32


def test_gpus_get_half_precision_where_the_architecture_supports_it(
        tiny: TinyUpscalers) -> None:
    descriptor = load(tiny.realesrgan_pth).descriptor
    cuda = torch.device("cuda")

    assert _choose_dtype(descriptor, cuda, torch.float16) == torch.float16
    assert _choose_dtype(descriptor, CPU, torch.float16) == torch.float32
    descriptor.supports_half = False
    assert _choose_dtype(descriptor, cuda, torch.float16) == torch.float32


def test_alpha_is_resized_alongside(tiny: TinyUpscalers) -> None:
    result = load(tiny.compact_pth).upscale(random_image(16, 16, mode="RGBA"))

    assert result.mode == "RGBA" and result.size == (64, 64)


# --- tiling ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("length", "tile", "overlap", "multiple_of"), [
    (96, 56, 40, 1), (513, 256, 16, 1), (512, 256, 16, 1), (1000, 192, 33, 4), (300, 64, 0, 1),
    (64, 256, 16, 1), (257, 256, 16, 4), (100, 0, 16, 1),
])
def test_tiles_cover_each_pixel_once_with_half_the_overlap_as_context(
        length: int, tile: int, overlap: int, multiple_of: int) -> None:
    spans = tile_spans(length, tile, overlap, multiple_of)

    assert spans[0].keep_start == 0 and spans[-1].keep_end == length
    for before, after in itertools.pairwise(spans):
        assert before.keep_end == after.keep_start
    for span in spans:
        assert span.start % multiple_of == 0
        assert 0 <= span.start <= span.keep_start < span.keep_end <= span.end <= length
        if tile:
            assert span.end - span.start < tile + multiple_of
        if span.start > 0:
            assert span.keep_start - span.start >= overlap // 2
        if span.end < length:
            assert span.end - span.keep_end >= overlap // 2


def test_tiled_equals_untiled_when_the_receptive_field_fits_in_half_the_overlap(
        tiny: TinyUpscalers) -> None:
    # Seams are cropped, not blended: with >= receptive-field px of context on each side of a
    # seam every kept pixel is computed from exactly the inputs the whole-image pass uses. The
    # only difference left is float rounding, which can move a value across an 8-bit boundary.
    overlap = 2 * TINY_RRDB_RECEPTIVE_RADIUS + 2
    image = random_image(100, 70, seed=2)  # 3 x 2 tiles of 64 px
    whole = pixels(load(tiny.realesrgan_pth, tile=0).upscale(image))

    tiled = pixels(load(tiny.realesrgan_pth, tile=64, tile_overlap=overlap).upscale(image))

    difference = np.abs(tiled - whole)
    assert difference.max() <= 1
    assert (difference == 0).mean() > 0.999


def test_the_tiling_comparison_sees_seams_when_the_overlap_is_too_small(
        tiny: TinyUpscalers) -> None:
    # The test above is not vacuous: with 2 px of context the seams are visible.
    image = random_image(48, 40, seed=2)
    whole = pixels(load(tiny.realesrgan_pth, tile=0).upscale(image))

    tiled = pixels(load(tiny.realesrgan_pth, tile=24, tile_overlap=4).upscale(image))

    assert np.abs(tiled - whole).max() > 1


# --- refusals ----------------------------------------------------------------------------------


def test_a_restoration_model_is_not_an_upscaler(tiny: TinyUpscalers) -> None:
    with pytest.raises(UpscaleError) as error:
        load(tiny.restoration_pth)

    message = str(error.value)
    assert str(tiny.restoration_pth) in message
    assert "RealESRGAN Compact Restoration model at 1x, not an upscaler" in message


def test_an_unknown_network_is_refused(tmp_path: Path) -> None:
    path = save_safetensors({"encoder.weight": torch.zeros(4, 4)}, tmp_path / "what.safetensors")

    with pytest.raises(UpscaleError, match="spandrel does not recognise this network") as error:
        load(path)

    assert str(path) in str(error.value) and "encoder.weight" in str(error.value)


@pytest.mark.parametrize(("name", "expected"), [
    ("garbage.pth", "not a readable PyTorch file"),
    ("garbage.safetensors", "not a readable safetensors file"),
])
def test_a_garbage_file_is_refused(tmp_path: Path, name: str, expected: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"this is not a network" * 10)

    with pytest.raises(UpscaleError, match=expected) as error:
        load(path)

    assert str(path) in str(error.value)


class _Reduces:
    """Pickles as a call to a global function: what weights_only refuses."""

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (os.getcwd, ())


def test_a_pth_with_pickled_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sneaky.pth"
    torch.save({"params_ema": {"conv_first.weight": torch.zeros(1)}, "extra": _Reduces()}, path)

    with pytest.raises(UpscaleError, match="refused to load: the file holds pickled Python"):
        load(path)


def test_a_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "models" / "RealESRGAN_x4plus.pth"

    with pytest.raises(UpscaleError, match="file not found") as error:
        load(missing)

    assert str(missing) in str(error.value)


def test_an_unsupported_file_type_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "net.onnx"
    path.write_bytes(b"onnx")

    with pytest.raises(UpscaleError, match=r"unsupported file type '\.onnx'"):
        load(path)


def test_an_overlap_as_large_as_the_tile_is_refused(tiny: TinyUpscalers) -> None:
    with pytest.raises(UpscaleError, match="tile_overlap"):
        load(tiny.realesrgan_pth, tile=32, tile_overlap=32)


# --- cache -------------------------------------------------------------------------------------


def test_the_cache_keeps_upscalers_by_id_and_drops_the_least_recent(
        tiny: TinyUpscalers, tmp_path: Path) -> None:
    cache = UpscalerCache(base_dir=tmp_path, device="cpu", dtype=torch.float32, max_loaded=2)
    a = UpscalerEntry(id="a", name="A", path=tiny.realesrgan_pth)
    b = UpscalerEntry(id="b", name="B", path=tiny.compact_pth)
    c = UpscalerEntry(id="c", name="C", path=tiny.realesrgan_safetensors)

    first = cache.get(a)
    assert cache.get(a) is first
    cache.get(b)
    cache.get(a)
    cache.get(c)
    assert cache.loaded() == ["a", "c"]  # b was the least recently used

    retiled = cache.get(a.model_copy(update={"tile": 128}))
    assert retiled is not first and retiled.tile == 128  # a changed entry is reloaded


def test_pth_without_the_params_ema_wrapper_loads(tmp_path: Path, tiny: TinyUpscalers) -> None:
    state = torch.load(tiny.realesrgan_pth, weights_only=True)["params_ema"]
    path = save_pth(state, tmp_path / "bare.pth", params_ema=False)

    assert load(path).scale == 4
