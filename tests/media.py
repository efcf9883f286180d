"""Writers of small real media files for tests: audio in every format, video clips."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def tone(freq: float, seconds: float, rate: int, channels: int = 1, amplitude: float = 0.5,
         noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """A sine tone ``[samples, channels]`` (channel c at ``freq * (1 + c / 10)``), float32."""
    t = np.arange(int(round(seconds * rate))) / rate
    rng = np.random.default_rng(seed)
    parts = [amplitude * np.sin(2 * np.pi * freq * (1 + c / 10) * t) for c in range(channels)]
    wave = np.stack(parts, axis=1) + noise * rng.standard_normal((len(t), channels))
    return wave.astype(np.float32)


def write_audio(path: Path, wave: np.ndarray, rate: int) -> Path:
    """Write ``[samples, channels]`` float audio; the format follows the suffix.

    WAV, FLAC and OGG go through soundfile, MP3 and M4A (AAC) through PyAV.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix in (".wav", ".flac", ".ogg"):
        import soundfile

        subtype = {"wav": "PCM_16", "flac": "PCM_16", "ogg": "VORBIS"}[suffix[1:]]
        soundfile.write(str(path), wave, rate, subtype=subtype)
        return path
    import av

    codec = {".mp3": "libmp3lame", ".m4a": "aac"}[suffix]
    layout = "mono" if wave.shape[1] == 1 else "stereo"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        planar = np.ascontiguousarray(wave.T.astype(np.float32))
        frame = av.AudioFrame.from_ndarray(planar, format="fltp", layout=layout)
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def moving_square(frames: int, height: int, width: int, direction: int,
                  colour: tuple[int, int, int] = (230, 40, 40)) -> np.ndarray:
    """uint8 frames ``[K, H, W, 3]`` of a square that moves right (+1) or left (-1)."""
    side = max(2, min(height, width) // 4)
    out = np.full((frames, height, width, 3), 30, dtype=np.uint8)
    top = (height - side) // 2
    for k in range(frames):
        progress = k / max(1, frames - 1)
        x = int(round((progress if direction > 0 else 1 - progress) * (width - side)))
        out[k, top:top + side, x:x + side] = colour
    return out


def write_video(path: Path, frames: np.ndarray, fps: int = 10) -> Path:
    """Encode uint8 frames ``[K, H, W, 3]``; the container follows the suffix (mp4, webm,
    avi, gif)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    codec, pix = {".mp4": ("mpeg4", "yuv420p"), ".webm": ("libvpx-vp9", "yuv420p"),
                  ".avi": ("mjpeg", "yuvj420p"), ".gif": ("gif", "rgb8")}[path.suffix.lower()]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix
        for array in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path
