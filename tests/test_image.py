"""Tests for image preprocessing (mmfuse.modalities.image)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mmfuse.modalities.image as image_module
from mmfuse.config import InputConfig
from mmfuse.data.table import Table
from mmfuse.errors import DataError
from mmfuse.modalities import MISSING
from mmfuse.modalities.image import ImageOptions, ImagePreprocessor, load_image
from mmfuse.specs import EncoderSpec

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test gets its own empty preprocessing cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("MMFUSE_CACHE_DIR", str(cache))
    return cache


@pytest.fixture
def decodes(monkeypatch) -> list[Path]:
    """Records the path of every call to load_image made by the preprocessor."""
    calls: list[Path] = []
    lock = threading.Lock()
    real = image_module.load_image

    def counting(path, options):
        with lock:
            calls.append(Path(path))
        return real(path, options)

    monkeypatch.setattr(image_module, "load_image", counting)
    return calls


def solid(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (8, 8)) -> Path:
    """Write a one-colour RGB PNG of ``size`` (width, height)."""
    Image.new("RGB", size, colour).save(path)
    return path


def preprocessor(**preprocess) -> ImagePreprocessor:
    # pad_crop 0 unless asked: the default cnn encoder's own default is a 6-px shift
    config = InputConfig.model_validate(
        {"name": "image", "type": "image", "preprocess": {"size": 8, "pad_crop": 0,
                                                          **preprocess}})
    return ImagePreprocessor(config)


def table(folder: Path, files: list[str]) -> Table:
    return Table([{"image": f} for f in files], folder.resolve(), str(folder / "t.csv"))


# --- load_image --------------------------------------------------------------------------------


def options(**kwargs) -> ImageOptions:
    return ImageOptions.model_validate({"size": 4, **kwargs})


def test_rgb_image_keeps_its_colour(tmp_path):
    pixels = load_image(solid(tmp_path / "a.png", (10, 20, 30), (4, 4)), options())
    assert pixels.dtype == np.uint8 and pixels.shape == (4, 4, 3)
    assert (pixels == (10, 20, 30)).all()


def test_grey_image_becomes_rgb(tmp_path):
    path = tmp_path / "g.png"
    Image.new("L", (4, 4), 77).save(path)
    pixels = load_image(path, options())
    assert pixels.shape == (4, 4, 3) and (pixels == 77).all()


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_transparent_pixels_become_white(tmp_path, mode):
    img = Image.new("RGBA", (4, 4), (0, 0, 0, 0))  # fully transparent black
    img.paste((200, 200, 200, 255), (0, 0, 2, 4))  # left half: opaque grey
    path = tmp_path / "t.png"
    img.convert(mode).save(path)

    pixels = load_image(path, options())
    assert (pixels[:, 2:] == WHITE).all()
    assert (pixels[:, :2] == (200, 200, 200)).all()


def test_half_transparent_pixels_are_blended_over_white(tmp_path):
    path = tmp_path / "t.png"
    Image.new("RGBA", (4, 4), (0, 0, 0, 128)).save(path)
    pixels = load_image(path, options())
    assert np.abs(pixels.astype(int) - 127).max() <= 1


def test_palette_image_becomes_rgb(tmp_path):
    img = Image.new("P", (4, 4), 1)
    img.putpalette([*RED, *GREEN] + [0] * 762)
    img.putpixel((0, 0), 0)
    path = tmp_path / "p.png"
    img.save(path)

    pixels = load_image(path, options())
    assert tuple(pixels[0, 0]) == RED
    assert tuple(pixels[3, 3]) == GREEN


def test_palette_transparency_becomes_white(tmp_path):
    img = Image.new("P", (4, 4), 1)
    img.putpalette([*RED, *GREEN] + [0] * 762)
    img.putpixel((0, 0), 0)
    path = tmp_path / "p.png"
    img.save(path, transparency=1)

    pixels = load_image(path, options())
    assert tuple(pixels[0, 0]) == RED
    assert tuple(pixels[3, 3]) == WHITE


def test_16_bit_grey_image_is_scaled_to_8_bits(tmp_path):
    path = tmp_path / "g16.png"
    Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")

    pixels = load_image(path, options())
    assert pixels.dtype == np.uint8 and pixels.shape == (4, 4, 3)
    assert np.abs(pixels.astype(int) - 128).max() <= 1  # mid-grey stays mid-grey


def test_jpeg_is_decoded(tmp_path):
    path = tmp_path / "a.jpg"
    Image.new("RGB", (4, 4), (0, 0, 200)).save(path, quality=95)
    pixels = load_image(path, options())
    assert np.abs(pixels.astype(int) - (0, 0, 200)).max() <= 3


def test_resize_to_height_and_width(tmp_path):
    pixels = load_image(solid(tmp_path / "a.png", BLUE, (17, 9)), options(size=(6, 10)))
    assert pixels.shape == (6, 10, 3)
    assert (pixels == BLUE).all()


def test_centre_crop_after_resize(tmp_path):
    img = Image.new("RGB", (8, 8), BLUE)
    img.paste(RED, (2, 2, 6, 6))  # the centre 4x4
    path = tmp_path / "c.png"
    img.save(path)

    pixels = load_image(path, options(size=8, crop=4))
    assert pixels.shape == (4, 4, 3)
    assert (pixels == RED).all()
    uncropped = load_image(path, options(size=8))
    assert (uncropped[0, 0] == BLUE).all()


# --- ImagePreprocessor ---------------------------------------------------------------------------


def test_each_unique_file_is_decoded_once(tmp_path, decodes):
    for name, colour in (("a.png", RED), ("b.png", GREEN), ("c.png", BLUE)):
        solid(tmp_path / name, colour)
    data = table(tmp_path, ["a.png", "b.png", "a.png", "c.png", "a.png", "b.png"])

    column = preprocessor().fit_encode(data)

    assert sorted(p.name for p in decodes) == ["a.png", "b.png", "c.png"]
    assert column.items.shape == (3, 8, 8, 3) and column.items.dtype == np.uint8
    assert column.index.tolist() == [0, 1, 0, 2, 0, 1]
    assert (column.items[0] == RED).all() and (column.items[2] == BLUE).all()
    assert column.sharing == 2.0


def test_second_encode_hits_the_disk_cache(tmp_path, decodes, private_cache):
    solid(tmp_path / "a.png", RED)
    solid(tmp_path / "b.png", GREEN)
    data = table(tmp_path, ["a.png", "b.png"])
    first = preprocessor().fit_encode(data)
    assert len(decodes) == 2
    assert list(private_cache.glob("image-*.npy")), "nothing was written to the cache"

    decodes.clear()
    second = preprocessor().fit_encode(data)

    assert decodes == []
    np.testing.assert_array_equal(np.asarray(second.items), np.asarray(first.items))


def test_cache_disabled_decodes_again(tmp_path, decodes):
    solid(tmp_path / "a.png", RED)
    data = table(tmp_path, ["a.png"])
    prep = preprocessor()
    prep.use_cache = False
    prep.encode(data)
    prep.encode(data)
    assert len(decodes) == 2


def test_changed_file_invalidates_the_cache(tmp_path, decodes):
    path = solid(tmp_path / "a.png", RED)
    solid(tmp_path / "b.png", GREEN)
    data = table(tmp_path, ["a.png", "b.png"])
    preprocessor().encode(data)
    before = path.stat().st_mtime_ns

    solid(path, BLUE)
    os.utime(path, ns=(before + 2_000_000_000, before + 2_000_000_000))  # coarse-mtime file systems
    decodes.clear()
    column = preprocessor().encode(data)

    assert len(decodes) >= 1
    assert (column.items[0] == BLUE).all()


def test_changed_settings_make_a_new_cache_entry(tmp_path, decodes):
    solid(tmp_path / "a.png", RED)
    data = table(tmp_path, ["a.png"])
    preprocessor(size=8).encode(data)
    decodes.clear()
    column = preprocessor(size=4).encode(data)
    assert len(decodes) == 1
    assert column.items.shape == (1, 4, 4, 3)


def test_corrupt_file_names_row_and_path(tmp_path):
    solid(tmp_path / "good.png", RED)
    (tmp_path / "x.png").write_bytes(b"\x89PNG garbage, not an image at all")
    data = table(tmp_path, ["good.png", "good.png", "x.png"])

    with pytest.raises(DataError) as info:
        preprocessor().fit_encode(data)
    message = str(info.value)
    assert "row 3" in message and "'x.png'" in message
    assert "'image'" in message
    assert "good.png" not in message


def test_missing_file_names_row_and_path(tmp_path):
    solid(tmp_path / "good.png", RED)
    data = table(tmp_path, ["good.png", "gone.png"])

    with pytest.raises(DataError) as info:
        preprocessor().fit_encode(data)
    message = str(info.value)
    assert "row 2" in message and "'gone.png'" in message and "not found" in message


def test_empty_cell_is_a_missing_image(tmp_path):
    solid(tmp_path / "a.png", RED)
    prep = preprocessor(normalize=False)
    column = prep.fit_encode(table(tmp_path, ["a.png", " ", "a.png"]))
    assert column.index.tolist() == [0, MISSING, 0]
    out = prep.batch(column, column.index[[1, 2]], False, torch.Generator())
    assert out["pixels"].shape[0] == 1 and out["index"].tolist() == [MISSING, 0]
    alone = prep.batch(column, column.index[[1]], False, torch.Generator())
    assert list(alone) == ["index"] and alone["index"].tolist() == [MISSING]


def test_a_column_without_any_image_is_an_error(tmp_path):
    with pytest.raises(DataError, match="empty in every row"):
        preprocessor().fit_encode(table(tmp_path, [" ", ""]))


def test_failed_decode_is_not_cached(tmp_path, decodes):
    path = tmp_path / "x.png"
    path.write_bytes(b"garbage")
    data = table(tmp_path, ["x.png"])
    with pytest.raises(DataError):
        preprocessor().encode(data)
    solid(path, RED)
    column = preprocessor().encode(data)
    assert (column.items[0] == RED).all()


def test_normalisation_statistics_come_from_training_images(tmp_path):
    solid(tmp_path / "red.png", RED)
    solid(tmp_path / "blue.png", BLUE)
    prep = preprocessor()

    prep.fit_encode(table(tmp_path, ["red.png", "blue.png"]))

    np.testing.assert_allclose(prep.mean, [0.5, 0.0, 0.5])
    np.testing.assert_allclose(prep.std, [0.5, 1e-3, 0.5])  # std is floored at 1e-3
    assert prep.state() == {"mean": prep.mean, "std": prep.std}


def test_encode_does_not_refit_statistics(tmp_path):
    solid(tmp_path / "red.png", RED)
    solid(tmp_path / "blue.png", BLUE)
    prep = preprocessor()
    prep.fit_encode(table(tmp_path, ["red.png", "blue.png"]))
    prep.encode(table(tmp_path, ["red.png"]))
    np.testing.assert_allclose(prep.mean, [0.5, 0.0, 0.5])


def test_no_normalisation_keeps_identity_statistics(tmp_path):
    solid(tmp_path / "red.png", RED)
    prep = preprocessor(normalize=False)
    column = prep.fit_encode(table(tmp_path, ["red.png"]))
    assert prep.mean == [0.0, 0.0, 0.0] and prep.std == [1.0, 1.0, 1.0]
    pixels = prep.tensors(column.items, False, torch.Generator())["pixels"]
    assert torch.equal(pixels[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))


def test_tensors_shape_dtype_and_values(tmp_path):
    solid(tmp_path / "red.png", RED)
    solid(tmp_path / "blue.png", BLUE)
    prep = preprocessor()
    column = prep.fit_encode(table(tmp_path, ["red.png", "blue.png"]))

    pixels = prep.tensors(column.items, False, torch.Generator().manual_seed(0))["pixels"]

    assert pixels.shape == (2, 3, 8, 8) and pixels.dtype == torch.float32
    torch.testing.assert_close(pixels[0, :, 3, 3], torch.tensor([1.0, 0.0, -1.0]))
    torch.testing.assert_close(pixels[1, :, 3, 3], torch.tensor([-1.0, 0.0, 1.0]))


def test_batch_gathers_unique_items_and_row_index(tmp_path):
    solid(tmp_path / "a.png", RED)
    solid(tmp_path / "b.png", GREEN)
    prep = preprocessor(normalize=False)
    column = prep.fit_encode(table(tmp_path, ["a.png", "b.png", "a.png", "b.png"]))

    out = prep.batch(column, column.index[[2, 0, 3]], False, torch.Generator())

    assert out["pixels"].shape == (2, 3, 8, 8)
    assert out["index"].dtype == torch.int64
    rows = out["pixels"][out["index"]]
    assert torch.equal(rows[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.equal(rows[1, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.equal(rows[2, :, 0, 0], torch.tensor([0.0, 1.0, 0.0]))


def test_spec_reports_the_final_size():
    assert preprocessor().spec() == EncoderSpec("image", channels=3, size=(8, 8))
    assert preprocessor(size=(8, 12), crop=(4, 6)).spec().size == (4, 6)


def half_and_half(path: Path) -> Path:
    img = Image.new("RGB", (8, 8), RED)
    img.paste(BLUE, (4, 0, 8, 8))
    img.save(path)
    return path


def test_augmentation_is_off_unless_asked_for(tmp_path):
    half_and_half(tmp_path / "a.png")
    prep = preprocessor()
    column = prep.fit_encode(table(tmp_path, ["a.png"]))
    train = prep.tensors(column.items, True, torch.Generator().manual_seed(0))["pixels"]
    evaluate = prep.tensors(column.items, False, torch.Generator().manual_seed(0))["pixels"]
    assert torch.equal(train, evaluate)


def test_horizontal_flip_applies_in_training_only(tmp_path):
    half_and_half(tmp_path / "a.png")
    prep = preprocessor(normalize=False, flip_horizontal=1.0)
    column = prep.fit_encode(table(tmp_path, ["a.png"]))
    train = prep.tensors(column.items, True, torch.Generator().manual_seed(0))["pixels"]
    evaluate = prep.tensors(column.items, False, torch.Generator().manual_seed(0))["pixels"]
    assert torch.equal(train, evaluate.flip(-1))
    assert not torch.equal(train, evaluate)


def test_pad_crop_keeps_the_shape(tmp_path):
    half_and_half(tmp_path / "a.png")
    prep = preprocessor(pad_crop=2)
    column = prep.fit_encode(table(tmp_path, ["a.png"]))
    out = prep.tensors(column.items, True, torch.Generator().manual_seed(0))["pixels"]
    assert out.shape == (1, 3, 8, 8)
