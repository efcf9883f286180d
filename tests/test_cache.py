"""The decoded-file cache (mmfuse.data.cache, FilePreprocessor._decode_all): memory-mapped
entries written in chunks while decoding, atomic on failure, padded for variable lengths."""

from __future__ import annotations

import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mmfuse.modalities.files as files_module
from media import moving_square, tone, write_audio, write_video
from mmfuse.config import InputConfig
from mmfuse.data.cache import cache_dir, cached_arrays
from mmfuse.data.table import Table
from mmfuse.modalities.audio import AudioPreprocessor
from mmfuse.modalities.image import ImagePreprocessor, channel_stats
from mmfuse.modalities.video import VideoPreprocessor


def noise_images(folder: Path, count: int, size: int = 8, seed: int = 0) -> list[str]:
    """``count`` PNGs of random pixels (every byte of the decoded cache differs)."""
    rng = np.random.default_rng(seed)
    names = []
    for i in range(count):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
        names.append(f"{i}.png")
    return names


def image_prep(size: int = 8) -> ImagePreprocessor:
    return ImagePreprocessor(InputConfig(name="image", type="image",
                                         preprocess={"size": size}))


def table(folder: Path, column: str, values: list[str]) -> Table:
    return Table([{column: v} for v in values], folder.resolve(), "test.csv")


def entry_files() -> list[str]:
    return sorted(p.name for p in cache_dir().glob("*"))


def unchunked(prep, folder: Path, names: list[str]) -> tuple[np.ndarray, ...]:
    """What the column's arrays must equal: every file decoded, then stacked at once."""
    return prep.stack([prep.decode(folder / name) for name in names])


def test_first_run_returns_read_only_memmaps_and_a_second_run_reads_the_same_bytes(tmp_path):
    names = noise_images(tmp_path, 5)
    data = table(tmp_path, "image", names)

    first = image_prep().encode(data).items
    second = image_prep().encode(data).items

    for items in (first, second):
        assert isinstance(items, np.memmap) and not items.flags.writeable
        assert items.shape == (5, 8, 8, 3) and items.dtype == np.uint8
    assert Path(first.filename) == Path(second.filename)
    np.testing.assert_array_equal(first, unchunked(image_prep(), tmp_path, names)[0])
    np.testing.assert_array_equal(second, first)
    assert [n for n in entry_files() if ".tmp" in n] == []  # no temporary file left behind


def test_an_interrupted_decode_leaves_no_entry_a_later_run_reads(tmp_path, monkeypatch):
    names = noise_images(tmp_path, 12)
    data = table(tmp_path, "image", names)
    monkeypatch.setattr(files_module, "DECODE_CHUNK", 2)
    real = ImagePreprocessor.decode
    calls, crash, lock = [], [True], threading.Lock()

    def decode(self, path):
        with lock:
            calls.append(path)
            if crash[0] and len(calls) == 7:  # in the middle of the fourth chunk
                raise KeyboardInterrupt
        return real(self, path)

    monkeypatch.setattr(ImagePreprocessor, "decode", decode)
    with pytest.raises(KeyboardInterrupt):
        image_prep().encode(data)
    assert entry_files() == []  # neither a count, nor a part, nor a temporary file

    calls.clear()
    crash[0] = False
    items = image_prep().encode(data).items
    assert len(calls) == 12  # everything was decoded again: nothing stale was read
    np.testing.assert_array_equal(items, unchunked(image_prep(), tmp_path, names)[0])


def test_a_half_written_entry_without_its_count_is_not_read(tmp_path):
    names = noise_images(tmp_path, 3)
    data = table(tmp_path, "image", names)
    items = image_prep().encode(data).items
    count = next(cache_dir().glob("*.parts"))
    count.unlink()  # as if the run had stopped before writing the count
    Path(items.filename).write_bytes(b"garbage")

    again = image_prep().encode(data).items
    np.testing.assert_array_equal(again, unchunked(image_prep(), tmp_path, names)[0])


@pytest.mark.parametrize("chunk", [1, 2, 3, 256])
def test_decoding_in_chunks_equals_one_stack_of_every_image(tmp_path, monkeypatch, chunk):
    names = noise_images(tmp_path, 7)
    monkeypatch.setattr(files_module, "DECODE_CHUNK", chunk)
    items = image_prep().encode(table(tmp_path, "image", names)).items
    np.testing.assert_array_equal(items, unchunked(image_prep(), tmp_path, names)[0])


def audio_prep() -> AudioPreprocessor:
    return AudioPreprocessor(InputConfig(name="audio", type="audio",
                                         preprocess={"sample_rate": 8000, "max_seconds": 1.0}))


@pytest.mark.parametrize("chunk", [2, 256])
def test_audio_is_padded_to_the_longest_clip_with_its_lengths(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(files_module, "DECODE_CHUNK", chunk)
    seconds = [0.5, 0.25, 0.75, 0.125, 0.5]
    names = []
    for i, s in enumerate(seconds):
        write_audio(tmp_path / f"{i}.wav", tone(300 + 50 * i, s, 8000), 8000)
        names.append(f"{i}.wav")
    prep = audio_prep()

    waves, lengths = prep.encode(table(tmp_path, "audio", names)).items

    assert lengths.tolist() == [int(s * 8000) for s in seconds]
    assert waves.shape == (5, 1, 6000) and waves.dtype == np.float16  # the longest, not the cap
    expected_waves, expected_lengths = unchunked(prep, tmp_path, names)
    np.testing.assert_array_equal(waves, expected_waves)
    np.testing.assert_array_equal(lengths, expected_lengths)
    assert not waves[1, :, 2000:].any()  # zero padding after the real samples
    assert len([n for n in entry_files() if n.endswith(".npy")]) == 2  # no scratch left


def test_audio_reaching_the_cap_keeps_the_cap_width(tmp_path):
    write_audio(tmp_path / "long.wav", tone(300, 3.0, 8000), 8000)
    write_audio(tmp_path / "short.wav", tone(500, 0.25, 8000), 8000)
    waves, lengths = audio_prep().encode(table(tmp_path, "audio", ["long.wav", "short.wav"])).items
    assert waves.shape == (2, 1, 8000) and lengths.tolist() == [8000, 2000]


def test_video_clips_with_fewer_frames_are_padded_with_their_lengths(tmp_path, monkeypatch):
    monkeypatch.setattr(files_module, "DECODE_CHUNK", 2)
    names = []
    for i, count in enumerate([6, 3, 5]):
        write_video(tmp_path / f"{i}.mp4", moving_square(count, 16, 16, 1), fps=10)
        names.append(f"{i}.mp4")
    prep = VideoPreprocessor(InputConfig(name="clip", type="video", preprocess={
        "size": 16, "frames": 8, "sampling": "rate", "fps": 10}))

    clips, lengths = prep.encode(table(tmp_path, "clip", names)).items

    assert lengths.tolist() == [6, 3, 5] and clips.shape == (3, 6, 16, 16, 3)
    expected_clips, _ = unchunked(prep, tmp_path, names)
    np.testing.assert_array_equal(clips, expected_clips)
    assert not clips[1, 3:].any()


def test_a_disabled_cache_decodes_into_memory_and_writes_nothing(tmp_path):
    names = noise_images(tmp_path, 3)
    prep = image_prep()
    prep.use_cache = False
    items = prep.encode(table(tmp_path, "image", names)).items
    assert not isinstance(items, np.memmap)
    np.testing.assert_array_equal(items, unchunked(image_prep(), tmp_path, names)[0])
    assert not cache_dir().exists() or entry_files() == []


def test_arrays_built_in_memory_are_stored_and_returned_mapped():
    """A builder that ignores ``allocate`` (the frozen-feature cache) still gets an entry."""
    built = (np.arange(6, dtype=np.float16).reshape(2, 3), np.array([1, 2]))
    first = cached_arrays("test-in-memory", lambda allocate: built)
    second = cached_arrays("test-in-memory", lambda allocate: pytest.fail("built again"))
    for arrays in (first, second):
        assert all(isinstance(a, np.memmap) for a in arrays)
        for got, want in zip(arrays, built, strict=True):
            np.testing.assert_array_equal(got, want)


def test_temporary_files_of_a_killed_build_are_removed_by_the_next(tmp_path):
    """A SIGKILLed decode leaves its temporary files; the next build of that entry removes
    them, but not those of a build still running in another process."""
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)  # a process that has exited
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        folder = cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        orphans = [folder / f"test-orphans.{dead_pid}-0.tmp.npy",
                   folder / f"test-orphans.parts.{dead_pid}-1.tmp"]
        running = folder / f"test-orphans.{live.pid}-0.tmp.npy"
        other = folder / f"test-other.{dead_pid}-0.tmp.npy"  # another entry's: left alone
        for path in (*orphans, running, other):
            path.write_bytes(b"partial")
        cached_arrays("test-orphans", lambda allocate: (np.arange(3),))
        assert not any(p.exists() for p in orphans)
        assert running.exists() and other.exists()
    finally:
        live.kill()
        live.wait()


def test_channel_statistics_in_chunks_equal_those_of_all_pixels():
    pixels = np.random.default_rng(1).integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)
    mean, std = channel_stats(pixels[i:i + 3] for i in range(0, 10, 3))
    flat = pixels.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(mean, flat.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, flat.std(axis=0), rtol=1e-9)


def decoding_peak(folder: Path, count: int, size: int) -> int:
    """The peak of traced allocations (numpy's included) while encoding ``count`` images."""
    names = noise_images(folder, count, size, seed=count)
    data = table(folder, "image", names)
    prep = image_prep(size)
    tracemalloc.start()
    try:
        prep.encode(data)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_of_decoding_is_a_few_images_whatever_the_number_of_files(tmp_path,
                                                                              monkeypatch):
    """Each thread writes the image it decoded into the on-disk array: what is held in memory
    is bounded by the chunk being decoded, not by the column (the former decode-then-stack
    held every image twice)."""
    monkeypatch.setattr(files_module, "DECODE_CHUNK", 4)
    size = 64
    image = size * size * 3
    small, large = tmp_path / "small", tmp_path / "large"
    small.mkdir()
    large.mkdir()
    few, many = decoding_peak(small, 16, size), decoding_peak(large, 128, size)
    assert many < 4 * 4 * image  # under four chunks' worth; the column is 128 images
    per_file = (many - few) / (128 - 16)  # the table's bookkeeping (paths, rows), not pixels
    assert per_file < image / 10, f"{per_file:.0f} bytes more per file"
