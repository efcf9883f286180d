"""Audio preprocessing: decode, mix down (or keep channels), resample, trim, then features.

Decoding: WAV, FLAC and OGG with soundfile (libsndfile); MP3, M4A and anything else soundfile
cannot read with PyAV (FFmpeg). The channels are mixed down to mono (``channels: 1``) or kept
(``channels: N``: a mono file is repeated, extra channels are dropped); the clip is resampled to
``sample_rate`` with soxr and trimmed to ``max_seconds``. These waveforms are cached on disk
(float16 ``[U, C, S]`` plus lengths), one entry per unique file.

Features are computed per batch from the cached waveforms, so waveform augmentation (noise at
an SNR, gain, time shift) sees the raw signal:

- ``log_mel``: power STFT (centred frames, zero padding at the edges) -> mel filterbank (Slaney
  scale and area normalisation, as librosa's defaults) -> ``10 log10``, floored 80 dB below the
  clip's peak (librosa's ``power_to_db(top_db=80)``);
- ``mfcc``: the orthonormal DCT-II of the log-mel bands, first ``n_mfcc`` coefficients
  (librosa's ``feature.mfcc``);
- ``waveform``: the raw samples cut into windowed frames (one frame per STFT frame).

With ``clip_normalize`` each clip first loses its own mean and std per feature bin (cepstral
mean and variance normalisation, which cancels the recording's gain and channel). Every feature
bin is then normalised with the mean and std of the training split; SpecAugment masks
(Park et al. 2019) zero random time and frequency stripes of training batches.
Shapes: a batch gives ``features [U, C, F, T]`` and ``mask [U, T]`` (True for real frames).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from pydantic import Field, PositiveInt, model_validator

from ..config_base import StrictModel
from ..errors import require
from ..registry import MODALITIES
from ..specs import EncoderSpec
from .files import FileModality, FilePreprocessor, UnreadableFile

if TYPE_CHECKING:
    from ..config import InputConfig

STATS_SAMPLE = 2000  # clips used to estimate the normalisation statistics
TOP_DB = 80.0  # log-mel floor below each clip's peak, as librosa's power_to_db
AMIN = 1e-10  # smallest power before the logarithm


class AudioOptions(StrictModel):
    """Audio preprocessing: decode, mix or keep channels, resample, trim/pad, frame, featurise."""

    sample_rate: PositiveInt = Field(16000, description="resample every file to this rate (Hz)")
    channels: PositiveInt = Field(
        1, description="1 mixes down to mono; N keeps N channels (mono is repeated)")
    max_seconds: float = Field(10.0, gt=0, description="longer clips are trimmed to this")
    features: Literal["log_mel", "mfcc", "waveform"] = "log_mel"
    window: Literal["hann", "hamming", "blackman", "rectangular"] = "hann"
    window_ms: float = Field(25.0, gt=0, description="analysis window length")
    hop_ms: float = Field(10.0, gt=0, description="step between windows")
    n_fft: PositiveInt | None = Field(None, description="FFT size; default: next power of two "
                                      "at or above the window length")
    n_mels: PositiveInt = 64
    n_mfcc: PositiveInt = 20
    fmin: float = Field(0.0, ge=0)
    fmax: float | None = Field(None, gt=0, description="default: half the sample rate")
    normalize: bool = Field(True, description="per-feature mean/std of the training split")
    clip_normalize: bool = Field(
        False, description="first remove each clip's own mean and std per feature over its "
        "frames (cepstral mean and variance normalisation: cancels gain and channel)")
    noise_snr_db: tuple[float, float] | None = Field(
        None, description="augmentation: white noise at an SNR drawn from [LOW, HIGH] dB")
    gain_db: float = Field(0.0, ge=0, description="augmentation: random gain within +-N dB")
    time_shift: float = Field(0.0, ge=0, description="augmentation: shift by up to N seconds")
    time_masks: int = Field(0, ge=0, description="augmentation: SpecAugment time masks")
    time_mask_frames: PositiveInt = Field(10, description="the widest time mask, in frames")
    freq_masks: int = Field(0, ge=0, description="augmentation: SpecAugment frequency masks")
    freq_mask_bins: PositiveInt = Field(8, description="the widest frequency mask, in bins")

    @model_validator(mode="after")
    def _consistent(self) -> AudioOptions:
        if self.hop_ms > self.window_ms:
            raise ValueError(f"hop_ms={self.hop_ms} is longer than window_ms={self.window_ms}; "
                             "frames would skip samples")
        nyquist = self.sample_rate / 2
        if self.fmax is not None and self.fmax > nyquist:
            raise ValueError(f"fmax={self.fmax} is above half the sample rate ({nyquist:g})")
        if self.fmin >= (self.fmax or nyquist):
            raise ValueError(f"fmin={self.fmin} must be below fmax")
        window = int(round(self.window_ms / 1000 * self.sample_rate))
        if self.n_fft is not None and self.n_fft < window:
            raise ValueError(f"n_fft={self.n_fft} is shorter than the {window}-sample window; "
                             "raise n_fft or shorten window_ms")
        if self.noise_snr_db is not None and self.noise_snr_db[0] > self.noise_snr_db[1]:
            raise ValueError("noise_snr_db is [LOW, HIGH] with LOW <= HIGH")
        return self


def read_audio(path: Path) -> tuple[np.ndarray, int]:
    """Decode an audio file to float32 ``[channels, samples]`` and its sample rate.

    Raises:
        UnreadableFile: neither soundfile nor PyAV can decode the file, or it has no samples.
    """
    soundfile = require("soundfile", "audio", "reading audio files")
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        wave = np.ascontiguousarray(data.T)
    except (soundfile.LibsndfileError, RuntimeError, TypeError):
        wave, rate = _read_with_pyav(path)
    if wave.shape[1] == 0:
        raise UnreadableFile("the file holds no audio samples")
    if not np.isfinite(wave).all():
        raise UnreadableFile("the file holds NaN or infinite samples")
    return wave, int(rate)


def _read_with_pyav(path: Path) -> tuple[np.ndarray, int]:
    av = require("av", "video", "reading MP3 / M4A audio")

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise UnreadableFile("no audio stream (not an audio file?)")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="fltp")  # planar float: [channels, n]
            parts = []
            for frame in container.decode(stream):
                parts += [f.to_ndarray() for f in resampler.resample(frame)]
            parts += [f.to_ndarray() for f in resampler.resample(None)]
            rate = stream.rate or stream.codec_context.sample_rate
    except av.FFmpegError as exc:
        raise UnreadableFile(f"not a readable audio file ({exc})") from None
    if not parts:
        raise UnreadableFile("the file holds no audio samples")
    return np.concatenate(parts, axis=1).astype(np.float32), int(rate)


def fit_channels(wave: np.ndarray, channels: int) -> np.ndarray:
    """Mix ``[C, S]`` down to mono (``channels == 1``) or give exactly ``channels`` channels."""
    if channels == 1:
        return wave.mean(axis=0, keepdims=True)
    if wave.shape[0] < channels:
        repeats = math.ceil(channels / wave.shape[0])
        wave = np.tile(wave, (repeats, 1))
    return wave[:channels]


def resample_audio(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Resample ``[C, S]`` from ``rate`` to ``target`` Hz with soxr (high quality)."""
    if rate == target:
        return wave
    soxr = require("soxr", "audio", "resampling audio")
    return np.ascontiguousarray(soxr.resample(wave.T, rate, target, quality="HQ").T)


def load_audio(path: Path, options: AudioOptions) -> np.ndarray:
    """Decode, fit the channels, trim to ``max_seconds`` and resample: float32 ``[C, S]``."""
    wave, rate = read_audio(path)
    wave = fit_channels(wave, options.channels)
    wave = wave[:, : max(1, int(round(options.max_seconds * rate)))]
    wave = resample_audio(wave, rate, options.sample_rate)
    return wave[:, : int(round(options.max_seconds * options.sample_rate))]


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / (200.0 / 3)
    log_part = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, log_part, linear)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * (200.0 / 3)
    log_part = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0))
    return np.where(mel >= 15.0, log_part, linear)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                   fmax: float | None = None) -> np.ndarray:
    """Triangular mel filters ``[n_mels, n_fft // 2 + 1]``, each scaled to unit area (Slaney).

    Filter ``i`` rises from mel point ``i`` to ``i + 1`` and falls to ``i + 2``, where the
    ``n_mels + 2`` points are evenly spaced in mel between ``fmin`` and ``fmax``.
    """
    fmax = sample_rate / 2 if fmax is None else fmax
    bins = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges)
    distance = edges[:, None] - bins[None, :]
    rising = -distance[:-2] / widths[:-1, None]
    falling = distance[2:] / widths[1:, None]
    filters = np.maximum(0.0, np.minimum(rising, falling))
    return filters * (2.0 / (edges[2:] - edges[:-2]))[:, None]


def dct_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Orthonormal DCT-II ``[n_out, n_in]``: row k is ``cos(pi k (2n + 1) / 2N)``, scaled."""
    n = np.arange(n_in)
    basis = np.cos(np.pi / n_in * (n[None, :] + 0.5) * np.arange(n_out)[:, None])
    basis *= np.sqrt(2.0 / n_in)
    basis[0] /= np.sqrt(2.0)
    return basis


def make_window(kind: str, length: int) -> torch.Tensor:
    """A periodic analysis window (as ``scipy.signal.get_window``)."""
    if kind == "rectangular":
        return torch.ones(length)
    make = {"hann": torch.hann_window, "hamming": torch.hamming_window,
            "blackman": torch.blackman_window}[kind]
    return make(length, periodic=True, dtype=torch.float64).float()


class AudioFeatures:
    """Waveforms ``[B, C, S]`` -> features ``[B, C, F, T]`` per the options (no learning)."""

    def __init__(self, options: AudioOptions) -> None:
        self.options = options
        rate = options.sample_rate
        self.win = max(1, int(round(options.window_ms / 1000 * rate)))
        self.hop = max(1, int(round(options.hop_ms / 1000 * rate)))
        self.n_fft = options.n_fft or 1 << (self.win - 1).bit_length()  # checked by the config
        self.window = make_window(options.window, self.win)
        self.mel = torch.from_numpy(mel_filterbank(rate, self.n_fft, options.n_mels,
                                                   options.fmin, options.fmax)).float()
        self.dct = torch.from_numpy(dct_matrix(options.n_mfcc, options.n_mels)).float()

    @property
    def dim(self) -> int:
        """F, the number of features per frame."""
        return {"log_mel": self.options.n_mels, "mfcc": self.options.n_mfcc,
                "waveform": self.win}[self.options.features]

    def frames(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames of a clip of each length (centred framing: one frame per hop, plus one)."""
        return 1 + lengths // self.hop

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        batch, channels, samples = wave.shape
        flat = wave.reshape(batch * channels, samples)
        if self.options.features == "waveform":
            pad = self.win // 2
            padded = torch.nn.functional.pad(flat, (pad, pad + self.win))
            count = 1 + samples // self.hop
            frames = padded.unfold(1, self.win, self.hop)[:, :count] * self.window
            out = frames.transpose(1, 2)
        else:
            out = self.log_mel(flat)
            if self.options.features == "mfcc":
                out = torch.einsum("km,bmt->bkt", self.dct, out)
        return out.reshape(batch, channels, *out.shape[1:])

    def power(self, flat: torch.Tensor) -> torch.Tensor:
        """Power spectrogram ``[N, n_fft // 2 + 1, T]`` of waveforms ``[N, S]``."""
        spec = torch.stft(flat, self.n_fft, self.hop, self.win, self.window, center=True,
                          pad_mode="constant", return_complex=True)
        return spec.real.square() + spec.imag.square()

    def log_mel(self, flat: torch.Tensor) -> torch.Tensor:
        """Log-mel energies in dB ``[N, n_mels, T]``, floored TOP_DB below each clip's peak."""
        mel = torch.einsum("mf,nft->nmt", self.mel, self.power(flat))
        db = 10.0 * torch.log10(mel.clamp(min=AMIN))
        peak = db.amax(dim=(1, 2), keepdim=True)
        return torch.maximum(db, peak - TOP_DB)


class AudioPreprocessor(FilePreprocessor):
    """Paths -> cached waveforms -> per-batch features, normalised with training statistics."""

    kind = "audio"
    dtype = np.float16
    pad_axis = 1  # samples, of [C, S]

    def __init__(self, config: InputConfig) -> None:
        self.name, self.column = config.name, config.column
        self.options = AudioOptions.model_validate(config.preprocess)
        self.features = AudioFeatures(self.options)
        self.mean = [0.0] * self.features.dim
        self.std = [1.0] * self.features.dim

    def spec(self) -> EncoderSpec:
        return EncoderSpec("audio", channels=self.options.channels,
                           feature_dim=self.features.dim)

    def settings(self) -> dict:
        o = self.options
        return {"rate": o.sample_rate, "channels": o.channels, "max_seconds": o.max_seconds}

    def augments(self) -> bool:
        o = self.options
        return bool(o.noise_snr_db or o.gain_db or o.time_shift or o.time_masks or o.freq_masks)

    def item_shape(self) -> tuple[int, ...]:
        o = self.options
        return (o.channels, int(round(o.max_seconds * o.sample_rate)))

    def decode(self, path: Path) -> np.ndarray:
        return load_audio(path, self.options)

    def fit_stats(self, items: tuple[np.ndarray, np.ndarray]) -> None:
        """Each feature bin's mean and std over the real frames of (a sample of) the clips."""
        waves, lengths = items
        step = max(1, len(waves) // STATS_SAMPLE)
        total = torch.zeros(self.features.dim, dtype=torch.float64)
        squares = torch.zeros_like(total)
        count = 0
        for start in range(0, len(waves), 256 * step):
            chosen = np.arange(start, min(len(waves), start + 256 * step), step)
            features, mask = self._features(waves[chosen], lengths[chosen])
            real = mask[:, None, None, :].expand_as(features)
            values = features.transpose(2, 3)[real.transpose(2, 3)].view(-1, features.shape[2])
            total += values.double().sum(0)
            squares += values.double().square().sum(0)
            count += len(values)
        mean = total / max(1, count)
        std = (squares / max(1, count) - mean.square()).clamp(min=0).sqrt().clamp(min=1e-3)
        self.mean, self.std = mean.tolist(), std.tolist()

    def _features(self, waves: np.ndarray, lengths: np.ndarray,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Features ``[U, C, F, T]`` of the longest clip's width, and the frame mask ``[U, T]``."""
        lengths_t = torch.from_numpy(np.asarray(lengths, dtype=np.int64))
        width = int(lengths_t.max())
        wave = torch.from_numpy(np.require(waves[..., :width], requirements=["C", "W"])).float()
        if generator is not None:
            wave = augment_wave(wave, lengths_t, self.options, generator)
        features = self.features(wave)
        frames = self.features.frames(lengths_t)
        mask = torch.arange(features.shape[-1]).unsqueeze(0) < frames.unsqueeze(1)
        if self.options.clip_normalize:
            features = clip_normalize(features, mask)
        return features, mask

    def tensors(self, items: tuple[np.ndarray, np.ndarray], train: bool,
                generator: torch.Generator) -> dict:
        features, mask = self._features(*items, generator if train else None)
        mean = torch.tensor(self.mean).view(1, 1, -1, 1)
        std = torch.tensor(self.std).view(1, 1, -1, 1)
        features = ((features - mean) / std) * mask[:, None, None, :]  # padding frames = 0
        if train:
            features = spec_augment(features, self.options, generator)
        return {"features": features, "mask": mask}


def clip_normalize(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each clip's features ``[U, C, F, T]`` minus their mean over the clip's real frames,
    divided by their std (per channel and feature bin)."""
    weights = mask[:, None, None, :].to(features.dtype)
    count = weights.sum(-1, keepdim=True).clamp(min=1.0)
    mean = (features * weights).sum(-1, keepdim=True) / count
    var = ((features - mean).square() * weights).sum(-1, keepdim=True) / count
    return (features - mean) / (var.sqrt() + 1e-5)


def augment_wave(wave: torch.Tensor, lengths: torch.Tensor, options: AudioOptions,
                 generator: torch.Generator) -> torch.Tensor:
    """Training-time time shift, gain and additive white noise on ``[U, C, S]``."""
    count, _, samples = wave.shape
    real = torch.arange(samples).unsqueeze(0) < lengths.unsqueeze(1)  # [U, S]
    if options.time_shift > 0:
        limit = int(options.time_shift * options.sample_rate)
        shift = torch.randint(-limit, limit + 1, (count, 1), generator=generator)
        source = torch.arange(samples).unsqueeze(0) - shift
        inside = (source >= 0) & (source < lengths.unsqueeze(1))
        moved = wave.gather(2, source.clamp(0, samples - 1).unsqueeze(1).expand_as(wave))
        wave = torch.where(inside.unsqueeze(1), moved, 0.0)
    if options.gain_db > 0:
        gain_db = (torch.rand(count, 1, 1, generator=generator) * 2 - 1) * options.gain_db
        wave = wave * 10 ** (gain_db / 20)
    if options.noise_snr_db is not None:
        low, high = options.noise_snr_db
        snr = low + (high - low) * torch.rand(count, 1, 1, generator=generator)
        weights = real.unsqueeze(1).float()
        power = (wave.square() * weights).sum(-1, keepdim=True) / weights.sum(-1, keepdim=True)
        noise = torch.randn(wave.shape, generator=generator)
        wave = wave + noise * (power / 10 ** (snr / 10)).sqrt() * weights
    return wave


def spec_augment(features: torch.Tensor, options: AudioOptions,
                 generator: torch.Generator) -> torch.Tensor:
    """Zero ``time_masks`` random time stripes and ``freq_masks`` feature stripes per clip."""
    count, _, bins, frames = features.shape
    for axis, masks, widest, size in ((3, options.time_masks, options.time_mask_frames, frames),
                                      (2, options.freq_masks, options.freq_mask_bins, bins)):
        for _ in range(masks):
            width = torch.randint(0, widest + 1, (count, 1), generator=generator)
            start = (torch.rand(count, 1, generator=generator) * (size - width).clamp(min=0)).long()
            position = torch.arange(size).unsqueeze(0)
            stripe = (position >= start) & (position < start + width)  # [U, size]
            shape = (count, 1, 1, size) if axis == 3 else (count, 1, size, 1)
            features = features.masked_fill(stripe.view(shape), 0.0)
    return features


@MODALITIES.register("audio", AudioOptions)
class AudioModality(FileModality):
    """audio: a path to a sound file (WAV, FLAC, OGG, MP3, M4A, ...)."""

    name = "audio"
    preprocessor = AudioPreprocessor
    default_encoder = "audio_cnn"
    variable_axes = {"features": {3: "frames"}, "mask": {1: "frames"}}
    accept = "audio/*"

    def example_items(self, prep: AudioPreprocessor, sizes: list[int],
                      rng: np.random.Generator) -> Any:
        options = prep.options
        seconds = [min(s / 10, options.max_seconds) for s in sizes]
        waves = [rng.standard_normal((options.channels, max(1, int(s * options.sample_rate))))
                 .astype(np.float32) * 0.1 for s in seconds]
        return prep.column_of(waves).items
