"""llama.cpp's HF -> GGUF converter, run in a child process with edgekit's pre-tokenizer mapping installed.

``python .../llama_cpp/convert.py CONVERTER_DIR MODEL_DIR ...`` is what
:func:`edgekit.runtimes.llama_cpp.convert_to_gguf` runs, by path so that nothing of the package (which imports
PyPI's ``gguf``) is imported first: the converter's own ``gguf-py`` goes first on the path,
and a GPT-2 byte-level BPE tokenizer whose hash llama.cpp does not know is mapped to ``EDGEKIT_GGUF_PRE``.
"""
from __future__ import annotations

import logging
import os
import runpy
import sys
from pathlib import Path

import transformers

from edgekit.core.native_build import CONVERTER


def run_converter(folder: str, argv: list[str]) -> None:
    """Run llama.cpp's converter in this process, with edgekit's pre-tokenizer mapping installed and
    remote code forced off in every transformers ``from_pretrained`` it calls."""
    for auto in (transformers.AutoConfig, transformers.AutoTokenizer, transformers.AutoModel,
                 transformers.AutoModelForCausalLM):
        def no_remote_code(*args, _load=auto.from_pretrained, **kwargs):
            return _load(*args, **{**kwargs, "trust_remote_code": False})
        auto.from_pretrained = no_remote_code

    sys.path[:0] = [folder, str(Path(folder) / "gguf-py")]  # the converter's own gguf, before PyPI's
    from conversion import base

    mapped = os.environ.get("EDGEKIT_GGUF_PRE") or None
    recognise = base.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer) -> str:
        try:
            return recognise(self, tokenizer)
        except NotImplementedError:
            if mapped is None:
                raise
            logging.getLogger("edgekit.runtimes.llama_cpp").warning(
                "pre-tokenizer hash unknown to llama.cpp; tokenizer.json is a GPT-2 byte-level BPE, using %r", mapped)
            return mapped

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    sys.argv = [CONVERTER, *argv]
    runpy.run_path(str(Path(folder) / CONVERTER), run_name="__main__")


if __name__ == "__main__":
    # python convert.py CONVERTER_DIR MODEL_DIR ... (internal: convert with the mapping)
    sys.path.remove(str(Path(__file__).resolve().parent))  # this folder's modules must not shadow the converter's
    run_converter(sys.argv[1], sys.argv[2:])
