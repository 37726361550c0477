"""Test tones: generate a sine as 16-bit PCM, find the dominant frequency and level of audio.

Used by the test suite and the bench scripts to check audio by its content (DESIGN §8).
All work is vectorised with numpy; there is no per-sample Python loop.

Levels are in dBFS as defined by AES17: a full-scale sine (peak 32767) has an RMS level of
0 dBFS, so a sine generated at ``level_dbfs=-12`` is reported back at about -12 dBFS. Other
signals (square waves, noise) are measured the same way, which can read above 0 dBFS.
"""

from __future__ import annotations

import math
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

FULL_SCALE = 32767.0
#: RMS of a full-scale sine: the 0 dBFS reference (AES17).
_REF_RMS = FULL_SCALE / math.sqrt(2.0)
#: Level reported for digital silence (and empty input) instead of minus infinity.
SILENCE_DBFS = -120.0


@dataclass(frozen=True)
class ToneReport:
    """What :func:`analyse` found: the dominant frequency and the RMS level."""

    freq_hz: float
    level_dbfs: float


def _amplitude(level_dbfs: float) -> float:
    amp = FULL_SCALE * 10.0 ** (level_dbfs / 20.0)
    if amp > FULL_SCALE:
        raise ValueError(f"level {level_dbfs} dBFS is above full scale")
    return amp


def sine(
    freq_hz: float, rate: int, samples: int, level_dbfs: float = -12.0, phase: float = 0.0
) -> npt.NDArray[np.int16]:
    """``samples`` samples of a sine starting at ``phase`` (radians), as int16."""
    if rate <= 0:
        raise ValueError("rate must be positive")
    if not 0 <= freq_hz < rate / 2:
        raise ValueError(f"frequency {freq_hz} Hz is not below Nyquist ({rate / 2} Hz)")
    t = np.arange(samples, dtype=np.float64)
    wave_ = _amplitude(level_dbfs) * np.sin(phase + 2.0 * np.pi * freq_hz * t / rate)
    return np.round(wave_).astype(np.int16)


def sine_frames(
    freq_hz: float,
    rate: int,
    frame_ms: int = 20,
    level_dbfs: float = -12.0,
    count: int | None = None,
) -> Iterator[bytes]:
    """Phase-continuous frames of a sine as int16 little-endian PCM bytes.

    Yields ``count`` frames, or forever when ``count`` is None. A frame holds
    ``rate * frame_ms / 1000`` samples (320 bytes for 20 ms at 8000 Hz).
    """
    n = rate * frame_ms // 1000
    if n <= 0:
        raise ValueError("frame is shorter than one sample")
    step = 2.0 * np.pi * freq_hz * n / rate
    phase = 0.0
    produced = 0
    while count is None or produced < count:
        yield sine(freq_hz, rate, n, level_dbfs, phase).astype("<i2").tobytes()
        phase = math.fmod(phase + step, 2.0 * np.pi)
        produced += 1


def write_wav(
    path: str | Path, freq_hz: float, seconds: float, rate: int = 8000, level_dbfs: float = -12.0
) -> Path:
    """Write a mono 16-bit WAV file holding ``seconds`` of a sine; returns the path."""
    path = Path(path)
    pcm = sine(freq_hz, rate, round(seconds * rate), level_dbfs).astype("<i2").tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return path


def read_wav(path: str | Path) -> tuple[bytes, int]:
    """Mono int16 little-endian PCM and the sample rate of a 16-bit WAV file.

    Stereo (or more channels) is mixed down to mono. A file whose header was never
    finalised (the writer was killed mid-recording) is read up to its end anyway.
    """
    raw = Path(path).read_bytes()
    if raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise ValueError(f"{path}: not a RIFF/WAVE file")
    pos = 12
    channels = rate = width = 0
    fmt_tag = 0
    while pos + 8 <= len(raw):
        cid = raw[pos : pos + 4]
        size = int.from_bytes(raw[pos + 4 : pos + 8], "little")
        body = pos + 8
        if cid == b"fmt ":
            fmt_tag = int.from_bytes(raw[body : body + 2], "little")
            channels = int.from_bytes(raw[body + 2 : body + 4], "little")
            rate = int.from_bytes(raw[body + 4 : body + 8], "little")
            width = int.from_bytes(raw[body + 14 : body + 16], "little") // 8
        elif cid == b"data":
            if not rate:
                raise ValueError(f"{path}: data chunk before fmt chunk")
            end = body + size if size and body + size <= len(raw) else len(raw)
            return _to_mono16(raw[body:end], channels, width, fmt_tag, path), rate
        pos = body + size + (size & 1)
    raise ValueError(f"{path}: no data chunk")


def _to_mono16(data: bytes, channels: int, width: int, fmt_tag: int, path: str | Path) -> bytes:
    # 1 = PCM, 0xFFFE = WAVE_FORMAT_EXTENSIBLE (assumed PCM here)
    if fmt_tag not in (1, 0xFFFE) or width != 2 or channels < 1:
        raise ValueError(f"{path}: only 16-bit PCM WAV is supported")
    frame = 2 * channels
    samples = np.frombuffer(data[: len(data) - len(data) % frame], dtype="<i2")
    if channels == 1:
        return samples.tobytes()
    mixed = samples.reshape(-1, channels).astype(np.int32).mean(axis=1)
    return np.round(mixed).astype("<i2").tobytes()


def _samples(pcm: bytes) -> npt.NDArray[np.float64]:
    usable = len(pcm) - len(pcm) % 2
    return np.frombuffer(pcm[:usable], dtype="<i2").astype(np.float64)


def level_dbfs(pcm: bytes) -> float:
    """RMS level of int16 PCM in dBFS (AES17); :data:`SILENCE_DBFS` for silence."""
    x = _samples(pcm)
    if x.size == 0:
        return SILENCE_DBFS
    rms = float(np.sqrt(np.mean(x * x)))
    if rms <= 0.0:
        return SILENCE_DBFS
    return max(SILENCE_DBFS, 20.0 * math.log10(rms / _REF_RMS))


def analyse(pcm: bytes, rate: int) -> ToneReport:
    """Dominant frequency (FFT peak, refined by parabolic interpolation) and RMS level.

    The DC offset is removed and a Hann window applied before the FFT; the parabola is
    fitted to the log magnitudes of the peak bin and its neighbours, which puts a pure
    tone within a small fraction of a bin. Silence or empty input reports 0 Hz.
    """
    x = _samples(pcm)
    level = level_dbfs(pcm)
    if x.size < 4 or level <= SILENCE_DBFS:
        return ToneReport(0.0, level)
    x = x - x.mean()
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    spectrum[0] = 0.0
    k = int(np.argmax(spectrum))
    if spectrum[k] <= 0.0:
        return ToneReport(0.0, level)
    offset = 0.0
    if 0 < k < spectrum.size - 1:
        a, b, c = np.log(np.maximum(spectrum[k - 1 : k + 2], 1e-12))
        denom = a - 2.0 * b + c
        if denom < 0.0:
            offset = float(np.clip(0.5 * (a - c) / denom, -0.5, 0.5))
    return ToneReport((k + offset) * rate / x.size, level)


def detect(
    pcm: bytes, rate: int, freq_hz: float, tol_hz: float = 20.0, min_dbfs: float = -40.0
) -> bool:
    """True when ``pcm`` is dominated by a tone within ``tol_hz`` of ``freq_hz`` that is at
    least ``min_dbfs`` loud. Silence, noise-free wrong tones and quiet tones give False."""
    report = analyse(pcm, rate)
    return report.level_dbfs >= min_dbfs and abs(report.freq_hz - freq_hz) <= tol_hz


def pcm_to_ulaw(pcm: bytes) -> bytes:
    """G.711 µ-law encoding of int16 PCM (e.g. raw payload files for sipp's rtp_stream)."""
    x = _samples(pcm).astype(np.int32)
    sign = np.where(x < 0, 0x80, 0x00)
    mag = np.minimum(np.abs(x), 32635) + 0x84
    exponent = np.floor(np.log2(mag)).astype(np.int32) - 7
    mantissa = (mag >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()


def ulaw_to_pcm(ulaw: bytes) -> bytes:
    """G.711 µ-law decoding to int16 little-endian PCM."""
    u = ~np.frombuffer(ulaw, dtype=np.uint8).astype(np.int32) & 0xFF
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    mag = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(u & 0x80, -mag, mag).astype("<i2").tobytes()
