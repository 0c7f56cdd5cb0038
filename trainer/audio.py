"""Audio for the asr task: where a row's audio is, how long it is, and its samples at the model's rate.

A row's audio value is one of
- a path (`clips/0001.flac`), relative to the data file for local data (absolute paths as they are);
- an undecoded Hugging Face `Audio` value `{"bytes": ..., "path": ...}` (bytes win when both are set);
- a decoded value `{"array": [...], "sampling_rate": 16000}`, or a bare list of samples when
  `data.audio.sampling_rate` states their rate.
Files and bytes are read with soundfile (libsndfile: WAV, FLAC, OGG/Vorbis, MP3 among others) and
resampled with scipy's polyphase `resample_poly`; torchaudio and torchcodec are never needed. Only the
header is read when samples are built (`probe`), the samples when a batch is collated (`load`), so a
large dataset is never held decoded in memory.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from automodel.catalog.errors import UserError
from automodel.trainer.data import data_relative


@dataclass(frozen=True)
class AudioRef:
    """Where one clip's samples come from (exactly one of path, data, array) and their rate and length."""

    where: str  # "row 3 of data/train.jsonl": named in every error about this clip
    path: str | None = None
    data: bytes | None = None
    array: tuple[float, ...] | None = None
    rate: int = 0
    frames: int = 0  # samples per channel at `rate`

    @property
    def seconds(self) -> float:
        return self.frames / self.rate


def audio_ref(value: Any, *, base_dir: Path | None, where: str, field: str,
              sampling_rate: int | None = None) -> AudioRef:
    """Check a row's audio value and read its header (rate, length); a bad value is a UserError naming
    `where` and `field`."""
    if isinstance(value, str):
        return _probe_file(data_relative(value, base_dir), where, field)
    if isinstance(value, Mapping):
        if value.get("bytes"):
            return _probe_bytes(bytes(value["bytes"]), where, field)
        if value.get("array") is not None:
            return _from_array(value["array"], value.get("sampling_rate") or sampling_rate, where, field)
        if value.get("path"):
            return _probe_file(data_relative(str(value["path"]), base_dir), where, field)
        raise UserError(f"{where}: the audio value has no bytes, path or array (keys: {sorted(value)})",
                        field=field, hint="give a file path, or an HF Audio value with bytes or a path")
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray) and value:
        return _from_array(value, sampling_rate, where, field)
    raise UserError(f"{where}: the audio value is a {type(value).__name__}, not a path, bytes or samples",
                    field=field, hint="give a path such as clips/0001.flac relative to the data file")


def _probe_file(path: str, where: str, field: str) -> AudioRef:
    import soundfile as sf

    if not Path(path).is_file():
        raise UserError(f"{where}: audio file {path} does not exist", field=field,
                        hint="paths are relative to the data file; check the name and the folder")
    try:
        info = sf.info(path)
    except (RuntimeError, sf.LibsndfileError) as err:
        raise UserError(f"{where}: cannot read audio file {path}: {str(err).splitlines()[0]}", field=field,
                        hint="use WAV, FLAC, OGG or MP3 audio (convert others with ffmpeg or sox)") from None
    return _checked(AudioRef(where=where, path=path, rate=int(info.samplerate), frames=int(info.frames)), field)


def _probe_bytes(data: bytes, where: str, field: str) -> AudioRef:
    import soundfile as sf

    try:
        info = sf.info(io.BytesIO(data))
    except (RuntimeError, sf.LibsndfileError) as err:
        raise UserError(f"{where}: cannot decode the audio bytes: {str(err).splitlines()[0]}", field=field,
                        hint="use WAV, FLAC, OGG or MP3 audio") from None
    return _checked(AudioRef(where=where, data=data, rate=int(info.samplerate), frames=int(info.frames)), field)


def _from_array(array: Any, rate: Any, where: str, field: str) -> AudioRef:
    if not rate:
        raise UserError(f"{where}: raw audio samples without a sampling rate", field="data.audio.sampling_rate",
                        hint="store {array, sampling_rate} per row, or set data.audio.sampling_rate to the rate "
                        "of every clip")
    try:
        samples = tuple(float(x) for x in array)
    except (TypeError, ValueError):
        raise UserError(f"{where}: the audio array is not a flat list of numbers (mono samples)", field=field,
                        hint="give mono samples, or a file path") from None
    return _checked(AudioRef(where=where, array=samples, rate=int(rate), frames=len(samples)), field)


def _checked(ref: AudioRef, field: str) -> AudioRef:
    if ref.frames <= 0 or ref.rate <= 0:
        raise UserError(f"{ref.where}: the audio is empty", field=field, hint="remove the row or fix its file")
    return ref


def load(ref: AudioRef, rate: int) -> Any:
    """The clip as mono float32 samples at `rate` (channels averaged, then resampled)."""
    import numpy as np
    import soundfile as sf

    if ref.array is not None:
        samples = np.asarray(ref.array, dtype=np.float32)
    else:
        try:
            samples, _ = sf.read(ref.path if ref.path is not None else io.BytesIO(ref.data or b""),
                                 dtype="float32", always_2d=True)
        except (RuntimeError, sf.LibsndfileError) as err:  # changed or truncated since it was probed
            raise UserError(f"{ref.where}: cannot read audio {ref.path or 'bytes'}: {str(err).splitlines()[0]}",
                            field="data.source", hint="check the file; it was readable when the run started") from None
        samples = samples.mean(axis=1)
    return resample(samples, ref.rate, rate)


def resample(samples: Any, orig: int, target: int) -> Any:
    """`samples` from rate `orig` to `target` with scipy's polyphase filter (a Kaiser-windowed FIR, the
    same kind of anti-aliasing resampler torchaudio and librosa's `polyphase` mode use)."""
    import numpy as np

    if orig == target:
        return np.asarray(samples, dtype=np.float32)
    from scipy.signal import resample_poly

    g = math.gcd(orig, target)
    return resample_poly(np.asarray(samples, dtype=np.float64), target // g, orig // g).astype(np.float32)


def frames_at(ref: AudioRef, rate: int) -> int:
    """The number of samples `load(ref, rate)` returns (resample_poly gives ceil(n * up / down))."""
    if ref.rate == rate:
        return ref.frames
    g = math.gcd(ref.rate, rate)
    return -(-ref.frames * (rate // g) // (ref.rate // g))
