"""asr data: audio reading and resampling (trainer/audio.py), Whisper and CTC labels, duration filter, column
mappings and HF Audio columns (trainer/speech.py), and every bad-row error (exit 2, row and file named)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from automodel.catalog.errors import UserError
from automodel.trainer.audio import audio_ref, frames_at, load, resample
from automodel.trainer.tasks import asr
from tests.trainer.asr_assets import asr_config, tone, write_clip, write_models, write_rows


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_models(tmp_path_factory.mktemp("asr_models"))


@pytest.fixture(scope="module")
def processors(models: dict[str, Path]) -> dict[str, Any]:
    return {kind: asr.load_processor(str(path)) for kind, path in models.items()}


def _samples(cfg: Any, processor: Any, validation: bool = False) -> list[Any]:
    return asr.build_samples(cfg.data, processor, validation=validation, seed=0)


def test_resample_keeps_pitch_and_length() -> None:
    """8 kHz -> 16 kHz and 44.1 kHz -> 16 kHz: length is n * up / down and a 440 Hz tone stays at 440 Hz."""
    for rate in (8000, 44100):
        out = resample(tone(1.0, rate), rate, 16000)
        assert len(out) == 16000 and out.dtype == np.float32
        spectrum = np.abs(np.fft.rfft(out))
        assert abs(np.argmax(spectrum) * 16000 / len(out) - 440) <= 1.0
    same = tone(0.5, 16000)
    assert np.array_equal(resample(same, 16000, 16000), same)


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_files_paths_relative_to_the_data_file(tmp_path: Path, suffix: str) -> None:
    write_clip(tmp_path / "clips" / f"a{suffix}", 0.75, rate=22050)
    ref = audio_ref(f"clips/a{suffix}", base_dir=tmp_path, where="row 1", field="data.audio.audio_column")
    assert (ref.rate, ref.frames) == (22050, int(0.75 * 22050))
    samples = load(ref, 16000)
    assert len(samples) == frames_at(ref, 16000) == 12000


def test_stereo_is_averaged_and_bytes_and_arrays_read(tmp_path: Path) -> None:
    import soundfile as sf

    stereo = np.stack([tone(0.5, 16000), np.zeros(8000, np.float32)], axis=1)
    sf.write(tmp_path / "s.wav", stereo, 16000)
    mono = load(audio_ref(str(tmp_path / "s.wav"), base_dir=None, where="r", field="f"), 16000)
    assert np.allclose(mono, stereo[:, 0] / 2, atol=1e-4)
    data = (tmp_path / "s.wav").read_bytes()
    from_bytes = audio_ref({"bytes": data, "path": "ignored.wav"}, base_dir=None, where="r", field="f")
    assert np.array_equal(load(from_bytes, 16000), mono)
    array = audio_ref({"array": [0.0, 0.5, -0.5, 0.25], "sampling_rate": 8000}, base_dir=None, where="r", field="f")
    assert len(load(array, 16000)) == 8
    bare = audio_ref([0.1] * 16, base_dir=None, where="r", field="f", sampling_rate=16000)
    assert bare.seconds == 16 / 16000


def test_whisper_labels_have_the_prefix_and_ignore_it(models: dict[str, Path], processors: dict[str, Any],
                                                      tmp_path: Path) -> None:
    write_clip(tmp_path / "a.flac", 0.5)
    source = write_rows(tmp_path / "train.jsonl", [{"audio": "a.flac", "text": "seven two"}])
    tok = processors["whisper"].tokenizer
    for language, task, expected in (("en", "transcribe", ["<|en|>", "<|transcribe|>"]),
                                     ("german", "translate", ["<|de|>", "<|translate|>"]),
                                     (None, "transcribe", ["<|transcribe|>"])):
        overrides = [f"data.asr_task={task}", f"data.language={language}" if language else "data.language=null"]
        [sample] = _samples(asr_config(models["whisper"], source, tmp_path / "o", *overrides), processors["whisper"])
        prefix = tok.convert_ids_to_tokens(list(sample.decoder_input_ids[: sample.prefix_len]))
        assert prefix == ["<|startoftranscript|>", *expected, "<|notimestamps|>"]
        text_ids = tok("seven two", add_special_tokens=False).input_ids
        assert list(sample.decoder_input_ids[sample.prefix_len :]) == text_ids
        # targets: the transcript and <|endoftext|>, aligned with the decoder input (prefix predictions ignored)
        assert list(sample.labels) == [-100] * (sample.prefix_len - 1) + text_ids + [tok.eos_token_id]
        assert len(sample.labels) == len(sample.decoder_input_ids)
    batch = asr.collate([sample, sample], processors["whisper"])
    assert batch["input_features"].shape == (2, 40, 200)  # 40 mel bins over the 2 s window
    assert int(asr.count_targets(batch)) == 2 * (len(text_ids) + 1)


def test_overlong_transcripts_and_durations_are_dropped_and_counted(models: dict[str, Path], processors: dict[str, Any],
                                                                     tmp_path: Path, capsys) -> None:
    for name, seconds in (("short", 0.1), ("ok", 0.5), ("long", 1.5), ("window", 2.5)):
        write_clip(tmp_path / f"{name}.wav", seconds)
    rows = [{"audio": f"{n}.wav", "text": "one two"} for n in ("short", "ok", "long", "window")]
    rows.append({"audio": "ok.wav", "text": " ".join(["nine"] * 70)})  # > 64 decoder positions of the tiny model
    source = write_rows(tmp_path / "train.jsonl", rows)
    cfg = asr_config(models["whisper"], source, tmp_path / "o", "data.min_seconds=0.2", "data.max_seconds=1.0")
    assert [s.audio.path.rsplit("/", 1)[-1] for s in _samples(cfg, processors["whisper"])] == ["ok.wav"]
    err = capsys.readouterr().err
    assert "dropped 4 of 5 rows" in err and "1 with transcripts over 64 decoder tokens" in err
    assert "1 shorter than data.min_seconds 0.2" in err and "2 longer than data.max_seconds 1.0" in err
    cfg = asr_config(models["whisper"], source, tmp_path / "o", "data.max_seq_len=8")  # a tighter label cap
    assert len(_samples(cfg, processors["whisper"])) == 3  # short, ok, long; window and 70 words dropped
    err = capsys.readouterr().err
    assert "1 longer than Whisper's 2 s window" in err and "1 with transcripts over 8 decoder tokens" in err


def test_ctc_targets_follow_the_vocabulary(models: dict[str, Path], processors: dict[str, Any], tmp_path: Path) -> None:
    write_clip(tmp_path / "a.wav", 1.0, rate=8000)
    source = write_rows(tmp_path / "train.jsonl", [{"clip": {"file": "a.wav"}, "sentence": "Seven  TWO"},
                                                   {"clip": {"file": "a.wav"}, "sentence": " ".join(["x"] * 40)}])
    cfg = asr_config(models["ctc"], source, tmp_path / "o", "data.audio.audio_column=clip.file",
                     "data.audio.text_column=sentence")
    sp = processors["ctc"]
    [sample] = _samples(cfg, sp)  # 79 characters do not fit the 50 frames of 1 s: dropped
    assert sp.tokenizer.convert_ids_to_tokens(list(sample.labels)) == list("seven|two")
    assert asr.sample_length(sample) == 50
    batch = asr.collate([sample], sp)
    assert batch["input_values"].shape == (1, 16000) and batch["audio_lengths"].tolist() == [16000]
    assert int(asr.count_targets(batch)) == 9


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".json"])
def test_csv_parquet_and_json_rows(models: dict[str, Path], processors: dict[str, Any], tmp_path: Path,
                                   suffix: str) -> None:
    """The same rows as .csv, .parquet or .json: clip paths relative to that file (here in a subfolder)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_clip(tmp_path / "data/clips/a.wav", 0.5, rate=44100)
    write_clip(tmp_path / "data/clips/b.flac", 0.25)
    rows = [{"path": "clips/a.wav", "sentence": "one two"}, {"path": "clips/b.flac", "sentence": "three"}]
    source = tmp_path / "data" / f"rows{suffix}"
    if suffix == ".csv":
        source.write_text("path,sentence\n" + "".join(f"{r['path']},{r['sentence']}\n" for r in rows))
    elif suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), source)
    else:
        source.write_text(json.dumps(rows))
    cfg = asr_config(models["ctc"], source, tmp_path / "o", "data.audio.audio_column=path",
                     "data.audio.text_column=sentence")
    samples = _samples(cfg, processors["ctc"])
    assert [s.text for s in samples] == ["one two", "three"] and [s.audio.rate for s in samples] == [44100, 16000]
    assert asr.collate(samples, processors["ctc"])["audio_lengths"].tolist() == [8000, 4000]


def test_hub_audio_column_is_read_undecoded(models: dict[str, Path], processors: dict[str, Any], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """An HF dataset's Audio column is cast to decode=False (decoding would need torchcodec): bytes or paths."""
    import datasets

    clip = write_clip(tmp_path / "a.flac", 0.5)
    table = datasets.Dataset.from_dict(
        {"audio": [{"bytes": clip.read_bytes(), "path": None}, {"bytes": None, "path": str(clip)}],
         "text": ["one", "two"]},
        features=datasets.Features({"audio": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")},
                                    "text": datasets.Value("string")}),
    ).cast_column("audio", datasets.Audio())  # as a Hub dataset comes: decoding on (which needs torchcodec)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: table)
    cfg = asr_config(models["ctc"], Path("someone/speech"), tmp_path / "o")
    samples = _samples(cfg, processors["ctc"])
    assert samples[0].audio.data == clip.read_bytes() and samples[1].audio.path == str(clip)
    assert all(len(load(s.audio, 16000)) == 8000 for s in samples)


BAD_ROWS = [
    ({"audio": "missing.wav", "text": "one"}, "data.audio.audio_column", "audio file", "does not exist"),
    ({"audio": "broken.wav", "text": "one"}, "data.audio.audio_column", "cannot read audio file", "broken.wav"),
    ({"audio": [0.1, 0.2, 0.3], "text": "one"}, "data.audio.sampling_rate", "without a sampling rate", "row 2"),
    ({"audio": "ok.wav", "text": "  "}, "data.audio.text_column", "transcript `text` is empty", "row 2"),
    ({"speech": "ok.wav", "text": "one"}, "data.audio.audio_column", "has no `audio`", "speech"),
]


@pytest.mark.parametrize(("row", "field", "message", "detail"), BAD_ROWS)
def test_bad_rows_exit_2_naming_row_and_file(models: dict[str, Path], tmp_path: Path, capsys, row: dict, field: str,
                                             message: str, detail: str) -> None:
    from automodel.advisor.cli import main as automodel

    write_clip(tmp_path / "ok.wav", 0.5)
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really a wave file")
    source = write_rows(tmp_path / "train.jsonl", [{"audio": "ok.wav", "text": "one"}, row])
    cfg = asr_config(models["ctc"], source, tmp_path / "o").model_dump(mode="json")
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    code = automodel(["finetune", "asr", "-c", str(tmp_path / "cfg.yaml")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert field in err and message in err and detail in err and "row 2 of" in err and str(source) in err, err


def test_config_rules_name_their_paths(models: dict[str, Path], tmp_path: Path) -> None:
    source = tmp_path / "t.jsonl"
    with pytest.raises(UserError) as err:
        asr_config(models["ctc"], source, tmp_path / "o", "data.format=chat")
    assert "data.format" in str(err.value)
    with pytest.raises(UserError) as err:
        asr_config(models["ctc"], source, tmp_path / "o", "data.min_seconds=3", "data.max_seconds=2")
    assert "data.max_seconds" in str(err.value)
    with pytest.raises(UserError) as err:
        asr_config(models["ctc"], source, tmp_path / "o", "data.audio.sampling_rate=0")
    assert "data.audio.sampling_rate" in str(err.value)
    processor = asr.load_processor(str(models["whisper"]))
    write_clip(tmp_path / "a.wav", 0.5)
    write_rows(source, [{"audio": "a.wav", "text": "one"}])
    with pytest.raises(UserError) as err:
        _samples(asr_config(models["whisper"], source, tmp_path / "o", "data.language=klingon"), processor)
    assert err.value.field == "data.language"
    json.dumps(processor.processor.feature_extractor.to_dict())  # the processor stays serialisable
