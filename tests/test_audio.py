"""Audio preprocessing (mmfuse.modalities.audio): decoding, resampling, features, augmentation.

The filterbank, log-mel and MFCC code is checked against librosa (a test-only dependency):
the filterbank within 1e-6 absolute, log-mel within 0.01 dB and MFCC within 0.01 (max
absolute difference) on a chirp with noise.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from media import tone, write_audio
from mmfuse.config import InputConfig
from mmfuse.data.table import Table
from mmfuse.errors import DataError
from mmfuse.modalities import MISSING
from mmfuse.modalities.audio import (
    AudioFeatures,
    AudioOptions,
    AudioPreprocessor,
    augment_wave,
    dct_matrix,
    load_audio,
    mel_filterbank,
    read_audio,
    spec_augment,
)
from mmfuse.specs import EncoderSpec


@pytest.fixture(scope="module")
def librosa():
    return pytest.importorskip("librosa")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MMFUSE_CACHE_DIR", str(tmp_path / "cache"))


def preprocessor(**preprocess) -> AudioPreprocessor:
    config = InputConfig(name="audio", type="audio", preprocess=preprocess)
    return AudioPreprocessor(config)


def table(folder, values) -> Table:
    return Table([{"audio": v} for v in values], folder.resolve(), "test.csv")


def chirp(rate: int = 16000, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    rng = np.random.default_rng(0)
    wave = 0.4 * np.sin(2 * np.pi * (200 + 1500 * t) * t) + 0.01 * rng.standard_normal(len(t))
    return wave.astype(np.float32)


# --- parity with librosa ------------------------------------------------------------------------


@pytest.mark.parametrize("rate,n_fft,n_mels,fmin,fmax", [
    (16000, 512, 64, 0.0, None), (22050, 1024, 40, 50.0, 8000.0), (8000, 256, 20, 0.0, 3000.0)])
def test_mel_filterbank_matches_librosa(librosa, rate, n_fft, n_mels, fmin, fmax):
    ours = mel_filterbank(rate, n_fft, n_mels, fmin, fmax)
    theirs = librosa.filters.mel(sr=rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, atol=1e-6, rtol=0)


def test_dct_matches_scipy_orthonormal_dct():
    from scipy.fft import dct

    x = np.random.default_rng(0).standard_normal(40)
    np.testing.assert_allclose(dct_matrix(13, 40) @ x, dct(x, type=2, norm="ortho")[:13],
                               atol=1e-10)


@pytest.mark.parametrize("window", ["hann", "hamming", "blackman"])
def test_log_mel_matches_librosa(librosa, window):
    options = AudioOptions(features="log_mel", n_mels=40, window=window)
    features = AudioFeatures(options)
    wave = chirp()
    ours = features(torch.from_numpy(wave).view(1, 1, -1))[0, 0].numpy()
    mel = librosa.feature.melspectrogram(
        y=wave, sr=16000, n_fft=features.n_fft, hop_length=features.hop,
        win_length=features.win, window=window, n_mels=40, center=True, pad_mode="constant")
    theirs = librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=80.0)
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() < 0.01  # dB


def test_mfcc_matches_librosa(librosa):
    options = AudioOptions(features="mfcc", n_mels=40, n_mfcc=13)
    features = AudioFeatures(options)
    wave = chirp()
    ours = features(torch.from_numpy(wave).view(1, 1, -1))[0, 0].numpy()
    theirs = librosa.feature.mfcc(
        y=wave, sr=16000, n_mfcc=13, n_fft=features.n_fft, hop_length=features.hop,
        win_length=features.win, n_mels=40, center=True, pad_mode="constant")
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() < 0.01


def test_frame_count_follows_centred_framing():
    features = AudioFeatures(AudioOptions())  # 25 ms window, 10 ms hop at 16 kHz
    assert (features.win, features.hop, features.n_fft) == (400, 160, 512)
    wave = torch.zeros(2, 1, 16000)
    for kind, dim in (("log_mel", 64), ("mfcc", 20), ("waveform", 400)):
        out = AudioFeatures(AudioOptions(features=kind))(wave)
        assert out.shape == (2, 1, dim, 101)
    assert features.frames(torch.tensor([16000, 159, 160])).tolist() == [101, 1, 2]


def test_waveform_frames_hold_the_windowed_samples():
    options = AudioOptions(features="waveform", window="rectangular", window_ms=1, hop_ms=1)
    features = AudioFeatures(options)  # 16-sample frames, hop 16
    wave = torch.arange(64, dtype=torch.float32).view(1, 1, 64)
    out = features(wave)[0, 0]  # [16, T]
    # frame t is centred on sample 16 t: it starts 8 samples earlier (zero padding before 0)
    assert out[:, 1].tolist() == list(range(8, 24))
    assert out[:8, 0].tolist() == [0.0] * 8


# --- decoding -------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".ogg", ".mp3", ".m4a"])
def test_every_format_decodes_to_the_same_tone(tmp_path, suffix):
    wave = tone(440, 0.5, 22050, channels=2)
    path = write_audio(tmp_path / f"tone{suffix}", wave, 22050)
    decoded, rate = read_audio(path)
    assert rate == 22050 and decoded.shape[0] == 2
    assert abs(decoded.shape[1] - wave.shape[0]) < 0.1 * 22050  # codecs may add priming
    spectrum = np.abs(np.fft.rfft(decoded[0]))
    peak_hz = np.argmax(spectrum) * rate / decoded.shape[1]
    assert abs(peak_hz - 440) < 10


def test_mixdown_resample_and_trim(tmp_path):
    stereo = write_audio(tmp_path / "s.wav", tone(440, 2.0, 44100, channels=2), 44100)
    mono = load_audio(stereo, AudioOptions(sample_rate=16000, max_seconds=1.5))
    assert mono.shape == (1, 24000)
    kept = load_audio(stereo, AudioOptions(sample_rate=8000, channels=2))
    assert kept.shape == (2, 16000)
    single = write_audio(tmp_path / "m.wav", tone(440, 1.0, 22050), 22050)
    upmixed = load_audio(single, AudioOptions(channels=2))
    assert upmixed.shape == (2, 16000)
    np.testing.assert_array_equal(upmixed[0], upmixed[1])


def test_resampling_keeps_the_pitch(tmp_path):
    path = write_audio(tmp_path / "t.wav", tone(1000, 1.0, 44100), 44100)
    wave = load_audio(path, AudioOptions(sample_rate=8000))[0]
    peak_hz = np.argmax(np.abs(np.fft.rfft(wave))) * 8000 / len(wave)
    assert abs(peak_hz - 1000) < 5


def test_unreadable_and_missing_files_name_their_rows(tmp_path):
    write_audio(tmp_path / "ok.wav", tone(440, 0.2, 16000), 16000)
    (tmp_path / "bad.wav").write_bytes(b"RIFF....not really a wave file")
    (tmp_path / "empty.mp3").write_bytes(b"")
    with pytest.raises(DataError) as info:
        preprocessor().fit_encode(table(tmp_path, ["ok.wav", "bad.wav", "empty.mp3"]))
    message = str(info.value)
    assert "2 unreadable audio file(s)" in message
    assert "row 2: 'bad.wav'" in message and "row 3: 'empty.mp3'" in message
    with pytest.raises(DataError, match="row 2: 'gone.wav': file not found"):
        preprocessor().fit_encode(table(tmp_path, ["ok.wav", "gone.wav"]))


# --- the preprocessor ----------------------------------------------------------------------------


def test_mixed_rates_and_channels_in_one_column(tmp_path):
    write_audio(tmp_path / "a.wav", tone(300, 1.0, 44100, channels=2), 44100)
    write_audio(tmp_path / "b.wav", tone(600, 0.5, 22050), 22050)
    prep = preprocessor(n_mels=32)
    column = prep.fit_encode(table(tmp_path, ["a.wav", "b.wav", "", "a.wav"]))
    assert column.index.tolist() == [0, 1, MISSING, 0]
    waves, lengths = column.items
    assert waves.shape == (2, 1, 16000) and lengths.tolist() == [16000, 8000]
    out = prep.batch(column, column.index, False, torch.Generator())
    assert out["features"].shape == (2, 1, 32, 101)
    assert out["mask"].sum(1).tolist() == [101, 51]
    assert out["index"].tolist() == [0, 1, MISSING, 0]
    assert (out["features"][1, :, :, 51:] == 0).all(), "padding frames are zero"
    assert prep.spec() == EncoderSpec("audio", channels=1, feature_dim=32)


def test_normalisation_uses_training_statistics(tmp_path):
    for i, freq in enumerate((200, 400, 800, 1600)):
        write_audio(tmp_path / f"{i}.wav", tone(freq, 0.5, 16000, noise=0.05, seed=i), 16000)
    prep = preprocessor(n_mels=16)
    column = prep.fit_encode(table(tmp_path, [f"{i}.wav" for i in range(4)]))
    out = prep.batch(column, column.index, False, torch.Generator())
    real = out["features"].permute(0, 3, 1, 2)[out["mask"]].reshape(-1, 16)
    torch.testing.assert_close(real.mean(0), torch.zeros(16), atol=1e-3, rtol=0)
    torch.testing.assert_close(real.std(0, unbiased=False), torch.ones(16), atol=1e-2, rtol=0)
    restored = preprocessor(n_mels=16)
    restored.load_state(prep.state())
    again = restored.batch(restored.encode(table(tmp_path, ["0.wav"])), np.array([0]), False,
                           torch.Generator())
    torch.testing.assert_close(again["features"][0], out["features"][0])


def test_augmentation_is_off_by_default_and_seeded_when_on(tmp_path):
    write_audio(tmp_path / "a.wav", tone(440, 0.5, 16000), 16000)
    plain = preprocessor()
    column = plain.fit_encode(table(tmp_path, ["a.wav"]))
    eval_out = plain.batch(column, column.index, False, torch.Generator())
    train_out = plain.batch(column, column.index, True, torch.Generator().manual_seed(1))
    torch.testing.assert_close(train_out["features"], eval_out["features"])

    noisy = preprocessor(noise_snr_db=[0, 5], gain_db=6, time_shift=0.1, time_masks=2,
                         freq_masks=2)
    noisy.load_state(plain.state())
    a = noisy.batch(column, column.index, True, torch.Generator().manual_seed(1))
    b = noisy.batch(column, column.index, True, torch.Generator().manual_seed(1))
    c = noisy.batch(column, column.index, True, torch.Generator().manual_seed(2))
    torch.testing.assert_close(a["features"], b["features"])
    assert not torch.allclose(a["features"], c["features"])
    assert not torch.allclose(a["features"], eval_out["features"])


def test_noise_is_added_at_the_asked_snr():
    options = AudioOptions(noise_snr_db=[10, 10])
    wave = torch.from_numpy(tone(440, 1.0, 16000)[:, 0]).view(1, 1, -1)
    noisy = augment_wave(wave, torch.tensor([16000]), options, torch.Generator().manual_seed(0))
    noise = noisy - wave
    snr = 10 * torch.log10(wave.square().mean() / noise.square().mean())
    assert abs(float(snr) - 10.0) < 0.3


def test_time_shift_moves_the_signal_and_keeps_the_length():
    options = AudioOptions(time_shift=0.05)
    wave = torch.zeros(1, 1, 1600)
    wave[0, 0, 800] = 1.0
    shifted = augment_wave(wave, torch.tensor([1600]), options, torch.Generator().manual_seed(3))
    assert shifted.shape == wave.shape and shifted.sum() == 1.0
    assert abs(int(shifted[0, 0].argmax()) - 800) <= 800


def test_spec_augment_zeroes_stripes():
    options = AudioOptions(time_masks=1, time_mask_frames=5, freq_masks=1, freq_mask_bins=4)
    features = torch.ones(8, 1, 16, 50)
    out = spec_augment(features, options, torch.Generator().manual_seed(0))
    zero_frames = (out == 0).all(dim=2).squeeze(1).sum(1)
    zero_bins = (out == 0).all(dim=3).squeeze(1).sum(1)
    assert (zero_frames <= 5).all() and (zero_bins <= 4).all()
    assert zero_frames.sum() > 0 and zero_bins.sum() > 0


@pytest.mark.parametrize("bad,fix", [
    ({"hop_ms": 40}, "hop_ms=40.0 is longer than window_ms"),
    ({"fmax": 9000}, "above half the sample rate"),
    ({"n_fft": 128}, "shorter than the 400-sample window"),
    ({"features": "spectrum"}, "log_mel"),
])
def test_bad_audio_options_are_config_errors(bad, fix):
    from mmfuse.config import load_config
    from mmfuse.errors import ConfigError

    config = {"inputs": [{"name": "a", "type": "audio", "preprocess": bad}],
              "outputs": [{"name": "y", "type": "category"}]}
    with pytest.raises(ConfigError, match=fix):
        load_config(config)


def test_clip_normalisation_cancels_gain(tmp_path):
    write_audio(tmp_path / "loud.wav", tone(440, 0.5, 16000, amplitude=0.8, noise=0.05), 16000)
    write_audio(tmp_path / "soft.wav", tone(440, 0.5, 16000, amplitude=0.08, noise=0.005), 16000)
    prep = preprocessor(n_mels=16, clip_normalize=True, normalize=False)
    column = prep.fit_encode(table(tmp_path, ["loud.wav", "soft.wav"]))
    out = prep.batch(column, column.index, False, torch.Generator())["features"]
    torch.testing.assert_close(out[0], out[1], atol=0.05, rtol=0)
    torch.testing.assert_close(out[0].mean(-1), torch.zeros(1, 16), atol=1e-4, rtol=0)
