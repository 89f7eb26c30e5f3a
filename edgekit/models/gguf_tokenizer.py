"""A Hugging Face tokenizer rebuilt from a SentencePiece-style GGUF vocabulary, with llama.cpp's ids.

Why: transformers 4.57 turns a GGUF whose ``tokenizer.ggml.model`` is ``llama`` (SentencePiece pieces
with scores, as Gemma 3's) into a Unigram model, reading the scores as log-probabilities. Gemma's
scores are BPE merge ranks (``-id``), so that Unigram splits "capital" into ``c/ap/it/al`` and a plain
sentence scores perplexity in the hundreds. llama.cpp tokenizes the same vocabulary as SentencePiece
BPE: whitespace escaped to ``▁``, then the adjacent pair whose concatenation is the highest-scoring
piece merges first, pieces the vocabulary lacks fall back to ``<0xXX>`` byte tokens; user-defined pieces
(Gemma's whitespace runs, newlines, HTML tags) are cut out of the raw text whole before that, and
control pieces (``<bos>``, ``<start_of_turn>``...) too when special text is parsed.

:func:`gguf_spm_tokenizer` writes exactly that with the ``tokenizers`` library: a BPE model whose
merges are every split of a normal piece into two pieces, ranked by the merged piece's score, with
byte fallback; user-defined pieces as added tokens matched on the raw text, control pieces as special
added tokens; no pre-tokenizer (SentencePiece does not split words first) and no space prefix unless
the GGUF asks for one. tests/test_gemma3.py checks its ids against llama.cpp's on the same file.
"""
from __future__ import annotations

from pathlib import Path

from gguf import GGUFReader
from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
from tokenizers.models import BPE
from transformers import PreTrainedTokenizerFast

from edgekit.core.errors import ModelSourceError

# llama.cpp's token types (enum llama_token_type in llama.h), as stored in tokenizer.ggml.token_type
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def _gguf_vocab(gguf_path: Path) -> dict:

    fields = GGUFReader(str(gguf_path)).fields
    model = fields["tokenizer.ggml.model"].contents()
    if model != "llama":
        raise ModelSourceError(f"{gguf_path.name} has a {model!r} vocabulary, not SentencePiece ('llama'); "
                               "load its tokenizer with transformers' gguf_file= instead")
    meta = {key: fields[key].contents() for key in fields if key.startswith("tokenizer.")}
    meta["tokenizer.ggml.tokens"] = list(meta["tokenizer.ggml.tokens"])
    length = fields.get(f"{fields['general.architecture'].contents()}.context_length")
    meta["context_length"] = int(length.contents()) if length is not None else None
    return meta


def _merges(tokens: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """Every split of a normal piece into two normal pieces, the higher the merged piece's score the earlier."""
    ids = {t: i for i, t in enumerate(tokens) if types[i] == NORMAL}
    ranked = []
    for piece, i in ids.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in ids and right in ids:
                ranked.append((-scores[i], i, ids[left], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def gguf_spm_tokenizer(gguf_path: "str | Path"):
    """A ``PreTrainedTokenizerFast`` equal to llama.cpp's tokenizer of the SentencePiece GGUF at ``gguf_path``."""

    meta = _gguf_vocab(Path(gguf_path))
    tokens, scores = meta["tokenizer.ggml.tokens"], list(meta["tokenizer.ggml.scores"])
    types = list(meta["tokenizer.ggml.token_type"])
    token = lambda key: tokens[int(meta[key])]  # noqa: E731
    bpe = BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=_merges(tokens, scores, types),
              unk_token=token("tokenizer.ggml.unknown_token_id"), byte_fallback=True, fuse_unk=True)
    backend = Tokenizer(bpe)
    escape = [normalizers.Replace(" ", "▁")]
    if meta.get("tokenizer.ggml.add_space_prefix", False):
        escape.insert(0, normalizers.Prepend("▁"))
    backend.normalizer = normalizers.Sequence(escape)
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    backend.add_tokens([AddedToken(t, normalized=False, special=False)
                        for t, kind in zip(tokens, types) if kind == USER_DEFINED])
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True)
                                for t, kind in zip(tokens, types) if kind in (CONTROL, UNKNOWN)])
    bos, eos = token("tokenizer.ggml.bos_token_id"), token("tokenizer.ggml.eos_token_id")
    add_bos, add_eos = meta.get("tokenizer.ggml.add_bos_token", False), meta.get("tokenizer.ggml.add_eos_token", False)
    single = ([f"{bos}:0"] if add_bos else []) + ["$A:0"] + ([f"{eos}:0"] if add_eos else [])
    pair = single + (["$B:1"] + ([f"{eos}:1"] if add_eos else []))
    backend.post_processor = processors.TemplateProcessing(
        single=" ".join(single), pair=" ".join(pair),
        special_tokens=[(t, tokens.index(t)) for t in dict.fromkeys([bos, eos])])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=bos, eos_token=eos, unk_token=token("tokenizer.ggml.unknown_token_id"),
        pad_token=token("tokenizer.ggml.padding_token_id"), add_bos_token=add_bos, add_eos_token=add_eos,
        clean_up_tokenization_spaces=False, model_max_length=meta["context_length"] or int(1e30),
        model_input_names=["input_ids", "attention_mask"])
    if "tokenizer.chat_template" in meta:
        tokenizer.chat_template = meta["tokenizer.chat_template"]
    return tokenizer
