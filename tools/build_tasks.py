"""Build the offline lm-eval tasks shipped in ``data/tasks/`` from the held-out corpus split.

Two tasks over ``data/corpus/eval.txt`` (Hamlet and The Tempest, public domain; held out of the default
model's training text), each one JSONL file beside its lm-eval YAML:

- ``edgekit_lastword`` (LAMBADA-style, Paperno et al. 2016): a speech with the speech before it as
  context; the model must produce the speech's last word greedily (``acc`` is lm-eval's ``is_greedy``).
  A speech qualifies when it has at least ``MIN_WORDS`` words and ends in a plain word of three letters
  or more.
- ``edgekit_nextline`` (multiple choice): the speaker and the lines of a verse speech so far; which of
  four lines comes next. The three wrong lines are drawn, with a fixed seed, from the other speeches'
  lines of similar length, so that length alone does not give the answer away.

Deterministic: the same corpus gives byte-identical files (a fixed seed, no clock, sorted output), so
the output is committed and a test checks it is what this script writes.
Usage: python tools/build_tasks.py [--check]
"""
from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "data" / "corpus" / "eval.txt"
OUT = ROOT / "data" / "tasks"
SEED = 20261203
MIN_WORDS = 12
CHOICES = 4
SPEAKER = re.compile(r"^[A-Z0-9][A-Za-z0-9 ]{0,28}\.$")  # "Ber.", "1 Clown.", "GONZALO."
LAST_WORD = re.compile(r"^(?P<head>.*\S)\s+(?P<word>[A-Za-z]{3,})(?P<tail>[.,;:!?]*)$", re.S)


def speeches(text: str) -> list[tuple[str, list[str]]]:
    """(speaker, lines) of every speech: a block after a blank line whose first line names a speaker;
    stage directions in brackets are left out."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line.rstrip() for line in block.strip("\n").split("\n")]
        if len(lines) < 2 or not SPEAKER.match(lines[0].strip()):
            continue
        body = [line.strip() for line in lines[1:] if line.strip() and not line.strip().startswith("[")]
        if body:
            out.append((lines[0].strip(), body))
    return out


def lastword_items(all_speeches: list[tuple[str, list[str]]]) -> list[dict]:
    items = []
    for (prev_speaker, prev_lines), (speaker, lines) in zip(all_speeches, all_speeches[1:]):
        body = "\n".join(lines)
        match = LAST_WORD.match(body)
        if len(body.split()) < MIN_WORDS or match is None:
            continue
        context = f"{prev_speaker}\n" + "\n".join(prev_lines) + f"\n\n{speaker}\n{match['head']}"
        items.append({"context": context, "target": " " + match["word"]})
    return items


def nextline_items(all_speeches: list[tuple[str, list[str]]], rng: random.Random) -> list[dict]:
    pool = sorted({line for _, lines in all_speeches for line in lines if len(line.split()) >= 3})
    items = []
    for speaker, lines in all_speeches:
        if len(lines) < 3 or len(lines[-1].split()) < 3:
            continue
        answer = lines[-1]
        similar = [line for line in pool if line not in lines and 0.75 <= len(line) / len(answer) <= 1.33]
        if len(similar) < CHOICES - 1:
            continue
        choices = rng.sample(similar, CHOICES - 1)
        label = rng.randrange(CHOICES)
        choices.insert(label, answer)
        items.append({"context": f"{speaker}\n" + "\n".join(lines[:-1]), "choices": choices, "label": label})
    return items


def build() -> dict[str, str]:
    """The text of every output file, keyed by file name."""
    all_speeches = speeches(CORPUS.read_text(encoding="utf-8"))
    rng = random.Random(SEED)
    tasks = {"edgekit_lastword.jsonl": lastword_items(all_speeches),
             "edgekit_nextline.jsonl": nextline_items(all_speeches, rng)}
    return {name: "".join(json.dumps(item, ensure_ascii=False, sort_keys=True) + "\n" for item in items)
            for name, items in tasks.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed files differ from a rebuild")
    args = parser.parse_args(argv)
    stale = []
    for name, text in build().items():
        path = OUT / name
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"{path.relative_to(ROOT)}: {text.count(chr(10))} items")
    if stale:
        print(f"stale: {', '.join(stale)}; rebuild with `python tools/build_tasks.py`", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
