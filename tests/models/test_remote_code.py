"""No code from a model folder: a folder whose tokenizer would run its own Python never runs it.

The folder is the default model with a ``tokenizer_config.json`` naming a custom tokenizer class
whose ``auto_map`` points at a ``.py`` file that writes a marker file when imported. The first
test proves the marker is written when transformers is allowed to run the code (so the others can
fail); the rest drive every entry point that reads a model folder and check the marker stays absent.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest
from transformers import AutoTokenizer

from edgekit.artifacts.manifest import MANIFEST, sha256_file
from edgekit.cli import main
from edgekit.core.errors import ModelSourceError
from edgekit.core.native_build import converter_dir
from edgekit.models.load import load_model, load_tokenizer
from edgekit.runtimes import load_artifact
from edgekit.runtimes.llama_cpp import convert_to_gguf

CUSTOM = {"tokenizer_class": "EvilTokenizer",
          "auto_map": {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", "tokenization_evil.EvilTokenizer"]}}


def _plant(folder, marker):
    """Make ``folder``'s tokenizer a custom class whose module writes ``marker`` when imported."""
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, **CUSTOM}))
    (folder / "tokenization_evil.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import PreTrainedTokenizerFast\n\n\n"
        "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n")


@pytest.fixture
def planted(tmp_path, default_model):
    folder, marker = tmp_path / "evil-model", tmp_path / "marker.txt"
    shutil.copytree(default_model, folder)
    _plant(folder, marker)
    return folder, marker


def test_the_planted_code_runs_when_allowed(planted):
    folder, marker = planted
    AutoTokenizer.from_pretrained(str(folder), trust_remote_code=True)
    assert marker.read_text() == "ran"


def test_load_and_compare_refuse_in_one_line(planted, tmp_path, capsys):
    folder, marker = planted
    for load in (load_tokenizer, load_model):
        with pytest.raises(ModelSourceError, match="ships its own code") as info:
            load(str(folder))
        assert "\n" not in str(info.value)
    code = main(["compare", "--model", str(folder), "--variants", "fp32", "--max-tokens", "64", "--no-latency",
                 "--store", str(tmp_path / "r.sqlite")])
    err = capsys.readouterr().err
    assert code == 2 and "ships its own code" in err and err.count("\n") == 1
    assert not marker.exists()


def test_gguf_export_refuses_before_the_converter(planted, tmp_path, capsys):
    folder, marker = planted
    with pytest.raises(ModelSourceError, match="ships its own code"):
        convert_to_gguf(str(folder), tmp_path / "x.gguf", "f16")
    assert main(["export", "--model", str(folder), "--variant", "gguf-f16", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "ships its own code" in err and err.count("\n") == 1
    assert not marker.exists() and not (tmp_path / "x.gguf").exists()


def test_the_converter_itself_runs_no_folder_code(planted, tmp_path):
    """The second wall: llama.cpp's converter run on the folder anyway (edgekit's check bypassed) with
    the Hub's remote-code prompt answered yes still never imports the folder's module."""
    folder, marker = planted
    out = tmp_path / "x.gguf"
    subprocess.run([sys.executable, "-m", "edgekit.runtimes.llama_cpp", str(converter_dir()), str(folder),
                    "--outfile", str(out), "--outtype", "f16"], capture_output=True, text=True, input="y\n",
                   timeout=600, env={**os.environ, "EDGEKIT_GGUF_PRE": "gpt-2"})
    assert not marker.exists()


def test_an_artifact_with_a_planted_tokenizer_is_refused_by_run(onnx_artifact, tmp_path, capsys):
    folder, marker = tmp_path / "artifact", tmp_path / "marker.txt"
    shutil.copytree(onnx_artifact("onnx-int4-g32"), folder)
    _plant(folder, marker)
    manifest = json.loads((folder / MANIFEST).read_text())
    for name in ("tokenizer_config.json", "tokenization_evil.py"):  # listed and hashed: it verifies
        manifest["files"][name] = {"sha256": sha256_file(folder / name), "bytes": (folder / name).stat().st_size}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelSourceError, match="ships its own code"):
        load_artifact(folder)
    assert main(["run", str(folder), "--prompt", "HAMLET:"]) == 2
    err = capsys.readouterr().err
    assert "ships its own code" in err and err.count("\n") == 1
    assert not marker.exists()
