"""Datasets of the shipped lm-eval tasks: the JSONL files beside this one, read without any hub access.

lm-eval's YAML names these through ``custom_dataset: !function edgekit_tasks.<task>``; the files are
written by ``tools/build_tasks.py`` from the held-out corpus split.
"""
import json
from pathlib import Path

import datasets

HERE = Path(__file__).resolve().parent


def _split(name: str) -> datasets.DatasetDict:
    rows = [json.loads(line) for line in (HERE / name).read_text(encoding="utf-8").splitlines()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def lastword(**_metadata) -> datasets.DatasetDict:
    return _split("edgekit_lastword.jsonl")


def nextline(**_metadata) -> datasets.DatasetDict:
    return _split("edgekit_nextline.jsonl")
