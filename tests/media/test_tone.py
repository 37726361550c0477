"""The tone generator and detector that the audio tests rely on."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from bridge.media import tone


@pytest.mark.parametrize("rate", [8000, 16000, 48000])
@pytest.mark.parametrize("freq", [440.0, 800.0, 1000.0, 1234.5])
def test_generated_tone_is_analysed_back(rate: int, freq: float) -> None:
    pcm = b"".join(tone.sine_frames(freq, rate, frame_ms=20, level_dbfs=-12.0, count=25))
    report = tone.analyse(pcm, rate)
    assert abs(report.freq_hz - freq) < 1.0
    assert abs(report.level_dbfs - -12.0) < 0.2
    assert tone.detect(pcm, rate, freq)


def test_frames_have_the_right_size_and_are_phase_continuous() -> None:
    frames = list(tone.sine_frames(1000, 8000, frame_ms=20, count=3))
    assert [len(f) for f in frames] == [320, 320, 320]
    joined = np.frombuffer(b"".join(frames), dtype="<i2")
    whole = tone.sine(1000, 8000, 480, -12.0)
    assert np.max(np.abs(joined.astype(int) - whole.astype(int))) <= 1


def test_frames_run_forever_without_count() -> None:
    gen = tone.sine_frames(1000, 16000)
    for _ in range(200):
        assert len(next(gen)) == 640


def test_level_follows_the_request() -> None:
    for level in (-3.0, -20.0, -40.0):
        pcm = tone.sine(1000, 8000, 8000, level).tobytes()
        assert abs(tone.analyse(pcm, 8000).level_dbfs - level) < 0.2
    with pytest.raises(ValueError):
        tone.sine(1000, 8000, 10, 1.0)


def test_detect_rejects_silence_wrong_frequency_and_quiet_tones() -> None:
    assert not tone.detect(bytes(16000), 8000, 1000)
    assert not tone.detect(b"", 8000, 1000)
    assert tone.analyse(bytes(16000), 8000) == tone.ToneReport(0.0, tone.SILENCE_DBFS)
    pcm = tone.sine(800, 8000, 8000).tobytes()
    assert not tone.detect(pcm, 8000, 1000)
    assert tone.detect(pcm, 8000, 800)
    quiet = tone.sine(1000, 8000, 8000, -55.0).tobytes()
    assert not tone.detect(quiet, 8000, 1000)
    assert tone.detect(quiet, 8000, 1000, min_dbfs=-60)


def test_tone_in_noise_is_found() -> None:
    rng = np.random.default_rng(1)
    x = tone.sine(1000, 8000, 8000, -20.0).astype(np.float64) + rng.normal(0, 300, 8000)
    pcm = np.clip(x, -32768, 32767).astype("<i2").tobytes()
    assert tone.detect(pcm, 8000, 1000, tol_hz=5)


def test_wav_round_trip_and_stereo_is_mixed_down(tmp_path: Path) -> None:
    path = tone.write_wav(tmp_path / "t.wav", 800, 0.5, 8000, -12.0)
    pcm, rate = tone.read_wav(path)
    assert rate == 8000 and len(pcm) == 8000
    assert tone.detect(pcm, rate, 800, tol_hz=2)

    mono = tone.sine(600, 16000, 1600, -6.0)
    stereo = np.stack([mono, mono], axis=1).astype("<i2").tobytes()
    with wave.open(str(tmp_path / "s.wav"), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(stereo)
    pcm2, rate2 = tone.read_wav(tmp_path / "s.wav")
    assert rate2 == 16000 and pcm2 == mono.astype("<i2").tobytes()


def test_wav_whose_header_was_not_finalised_is_read_to_the_end(tmp_path: Path) -> None:
    path = tone.write_wav(tmp_path / "t.wav", 1000, 0.25, 8000)
    raw = bytearray(path.read_bytes())
    raw[40:44] = (0).to_bytes(4, "little")  # data size 0, as a killed writer leaves it
    path.write_bytes(bytes(raw))
    pcm, _ = tone.read_wav(path)
    assert len(pcm) == 4000


def test_ulaw_round_trip_keeps_the_tone() -> None:
    pcm = tone.sine(1000, 8000, 8000, -12.0).tobytes()
    ulaw = tone.pcm_to_ulaw(pcm)
    assert len(ulaw) == 8000
    back = tone.ulaw_to_pcm(ulaw)
    report = tone.analyse(back, 8000)
    assert abs(report.freq_hz - 1000) < 1 and abs(report.level_dbfs + 12) < 0.5
    assert tone.pcm_to_ulaw(bytes(2)) == b"\xff"
