"""Synthesise the tiny ASR examples' spoken clips with espeak-ng and sox (run once; the clips are committed).

Each clip says two to four digit words ("seven two nine") in one of several espeak-ng voices, speeds and
pitches, trimmed of leading/trailing silence and stored as 8 kHz mono 16-bit FLAC (the engine resamples
to the feature extractor's 16 kHz as it loads them, so the examples exercise resampling too). A ten-word
vocabulary is small enough that a tiny random-init model learns to transcribe it on a CPU in minutes.

Regenerate (needs the Debian packages espeak-ng and sox; tests and CI never run this):

    python examples/asr/tiny/make_clips.py [--out examples/asr/tiny/data]

Writes clips/NNNN.flac plus train.jsonl and val.jsonl with rows {"audio": "clips/NNNN.flac", "text": ...}
(paths relative to the jsonl file). Deterministic for a seed, up to the espeak-ng and sox versions.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import tempfile
from pathlib import Path

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
VOICES = ("en-us", "en-gb", "en-us+f3", "en-gb+m3", "en+f2", "en-gb-scotland", "en-029")
RATE = 8000


def make_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 4))) for _ in range(n)]


def synthesise(text: str, target: Path, rng: random.Random) -> None:
    """One clip: espeak-ng to a WAV, then sox trims silence, resamples to RATE and writes FLAC."""
    voice, speed, pitch = rng.choice(VOICES), rng.randint(140, 200), rng.randint(30, 70)
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "clip.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(wav), text],
                       check=True)
        # silence 1 0.05 0.5%: drop leading silence; reverse/repeat/reverse drops the trailing silence too
        subprocess.run(["sox", str(wav), "-r", str(RATE), "-c", "1", "-b", "16", str(target),
                        "silence", "1", "0.05", "0.5%", "reverse", "silence", "1", "0.05", "0.5%", "reverse",
                        "pad", "0.05", "0.05"], check=True)


def write_clips(out: Path, *, n_train: int = 216, n_val: int = 24, seed: int = 0) -> None:
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (apt-get install espeak-ng sox)")
    clips = out / "clips"
    shutil.rmtree(clips, ignore_errors=True)
    clips.mkdir(parents=True)
    rng = random.Random(seed)
    texts = make_texts(n_train + n_val, seed)
    rows = []
    for index, text in enumerate(texts):
        name = f"clips/{index:04d}.flac"
        synthesise(text, out / name, rng)
        rows.append({"audio": name, "text": text})
    for file, part in (("train.jsonl", rows[:n_train]), ("val.jsonl", rows[n_train:])):
        (out / file).write_text("".join(json.dumps(row) + "\n" for row in part))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "data")
    args = parser.parse_args()
    write_clips(args.out)
    print(f"wrote clips to {args.out}")


if __name__ == "__main__":
    main()
