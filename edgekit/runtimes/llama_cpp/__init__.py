"""llama.cpp as a backend: Hugging Face Llama -> GGUF -> Q8_0 / Q4_0 / Q4_K_M -> a Runner.

Follows llama.cpp's own path ("Prepare and Quantize" in its README): the converter that
ships in llama.cpp's sources (``convert_hf_to_gguf.py``) writes a GGUF at the checkpoint's
own float type (f32, bf16 or f16: lossless, never upcast, so a bf16 7B's intermediate is
13.5 GB on disk rather than 27), reading the shards lazily tensor by tensor (the converter's
default), then ``llama_model_quantize`` (the library behind ``llama-quantize``, called through
llama-cpp-python) writes the quantized file, also tensor by tensor. The intermediate is cached
for the next variant when it is small (:data:`KEEP_INTERMEDIATE_BYTES`) and deleted once the
quantized file exists when it is not. Unlike the PyTorch schemes, llama.cpp also
quantizes the token embeddings and, for the K-quants, keeps the output head at a higher
type (Q6_K): its bytes are the bytes of the whole file, not of the linear layers alone.

The converter is not in the llama-cpp-python wheel; ``make setup`` (``tools/build_llama_cpp.py``)
builds llama.cpp for this CPU from the llama-cpp-python sdist and extracts ``convert_hf_to_gguf.py``
with its ``conversion`` package and its own ``gguf-py`` from the same sdist into
``<venv>/share/edgekit/llama.cpp-<version>`` (:mod:`edgekit.core.native_build`).

Pre-tokenizer mapping: llama.cpp recognises a BPE tokenizer's pre-tokenizer by the hash
of the ids it gives a fixed check text; a tokenizer trained here (such as the default
model's) has its own hash. When ``tokenizer.json`` declares exactly GPT-2's byte-level
pre-tokenizer (``ByteLevel`` with GPT-2's regex, no prefix space, no normalizer), edgekit
tells the converter to use llama.cpp's ``gpt-2`` pre-tokenizer (the one openai-community/gpt2 gets); any other unknown
tokenizer is refused with a message. Every export then checks that llama.cpp tokenizes a
sample of the eval text to the same ids as the Hugging Face tokenizer, so a wrong
vocabulary can never pass silently.

Variants: ``gguf-f32``, ``gguf-f16``, ``gguf-q8_0``, ``gguf-q4_0``, ``gguf-q4_k_m``;
options ``threads=N`` (default: PyTorch's thread count), ``n_ctx=N`` (default 1024) and
``kv=TYPE``: the KV cache held in one of llama.cpp's cache types (:data:`KV_CACHE_TYPES`, its
``type_k``/``type_v``) with flash attention on, which a quantized V cache needs; ``kv=f16`` is the
same attention path with the default cache, the baseline a quantized cache is measured against.
"""
from __future__ import annotations

import ctypes
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader, GGUFWriter
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import quantize
from huggingface_hub import snapshot_download

from edgekit.artifacts.manifest import Manifest, artifact_loader, copy_side_files, write_manifest
from edgekit.core.caches import cache_build
from edgekit.core.dtypes import config_dtype
from edgekit.core.errors import ModelSourceError, VariantError
from edgekit.core.native_build import CONVERTER, CONVERTER_PACKAGES, converter_dir, llama_cpp_version
from edgekit.core.paths import read_split, work_dir
from edgekit.memory.guard import admit, admit_artifact
from edgekit.models.load import (
    folder_tokenizer,
    load_tokenizer,
    model_config,
    model_key,
    refuse_remote_code,
    resolve_source,
)
from edgekit.models.names import original_gguf
from edgekit.models.sampling import Pick, choose
from edgekit.runtimes import cached_manifest, load_artifact
from edgekit.variants.registry import Variant, register

MODEL_FILE = "model.gguf"
# llama.cpp file types (enum llama_ftype in llama.h) for each variant's quantization
FTYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7, "q4_k_m": 15}
# the converter's --outtype for each checkpoint dtype (edgekit.core.dtypes.config_dtype)
INTERMEDIATE_TYPES = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
KEEP_INTERMEDIATE_BYTES = 2 << 30  # intermediates above this are deleted after quantizing
# the types llama.cpp accepts for its KV cache (common/arg.cpp, --cache-type-k / --cache-type-v)
KV_CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")


def ensure_converter() -> Path:
    """llama.cpp's ``convert_hf_to_gguf.py``, which `make setup` (tools/build_llama_cpp.py) installs."""
    folder = converter_dir()
    if not all((folder / p).exists() for p in (CONVERTER, *CONVERTER_PACKAGES)):
        raise VariantError(f"llama.cpp's converter is not in {folder}; run `make setup` (or `make llama-cpp`), "
                           "or set EDGEKIT_LLAMA_CPP_CONVERTER to a llama.cpp checkout")
    return folder


def pre_tokenizer_mapping(model_dir: Path) -> str | None:
    """``gpt-2`` when ``tokenizer.json`` is exactly a GPT-2-style byte-level BPE, else None."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        return None
    spec = json.loads(path.read_text())
    pre = spec.get("pre_tokenizer") or {}
    if (spec.get("model", {}).get("type") == "BPE" and spec.get("normalizer") is None
            and pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space")):
        return "gpt-2"
    return None


def _local_model_dir(source: str) -> Path:
    resolved = resolve_source(source)
    if Path(resolved).is_dir():
        return Path(resolved)

    try:
        return Path(snapshot_download(resolved, allow_patterns=["*.json", "*.safetensors", "tokenizer.model"]))
    except Exception as exc:
        raise ModelSourceError(f"cannot download {resolved} for GGUF conversion ({type(exc).__name__}); "
                               "pass a local model folder or make the hub reachable") from None


def convert_to_gguf(source: str, out_path: Path, outtype: str = "f32") -> Path:
    """Run llama.cpp's converter on ``source`` (with the documented pre-tokenizer mapping).

    The converter asks transformers for remote code (``trust_remote_code=True``) for custom
    tokenizers and several architectures, so a folder that carries code of its own is refused
    first, and the converter's process forces remote code off as well (:func:`_run_converter`)."""
    model_dir = _local_model_dir(source)
    refuse_remote_code(model_dir)
    folder = ensure_converter()
    env = {**os.environ, "EDGEKIT_GGUF_PRE": pre_tokenizer_mapping(model_dir) or ""}
    cmd = [sys.executable, str(Path(__file__).with_name("convert.py")), str(folder), str(model_dir),
           "--outfile", str(out_path),
           "--outtype", outtype]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        if "pre-tokenizer was not recognized" in done.stderr:
            raise VariantError(f"llama.cpp's converter does not recognise the tokenizer of {source} and it is not "
                               "a GPT-2 byte-level BPE edgekit can map; add its hash to llama.cpp's "
                               "convert_hf_to_gguf_update.py or pick another runtime")
        raise VariantError(f"llama.cpp's converter failed on {source}: {tail[0]}")
    return out_path


def intermediate_type(source: str) -> str:
    """The GGUF type the converter writes for ``source``: its checkpoint's own float type."""
    return INTERMEDIATE_TYPES[config_dtype(model_config(source))]


@contextmanager
def intermediate_gguf(source: str) -> Iterator[Path]:
    """The unquantized GGUF of ``source`` every quantization starts from: cached once per model
    version when it is small, else written to a scratch folder and deleted when the block ends.

    A named model published as GGUF (``smollm2-135m``, :mod:`edgekit.models.names`) keeps that file in its
    folder: it is dequantized to f32 by ``llama-quantize --allow-requantize``, which keeps the file's own
    tokenizer (the converter, run on the folder transformers saved from it, writes a broken vocabulary)."""
    folder = Path(resolve_source(source))
    original = original_gguf(folder) if folder.is_dir() else None
    outtype = "f32" if original is not None else intermediate_type(source)
    cached = work_dir() / "gguf-exports" / model_key(source) / f"model-{outtype}.gguf"
    if cached.is_file():
        yield cached
        return
    with tempfile.TemporaryDirectory(prefix="edgekit-gguf-", dir=work_dir()) as scratch:
        path = Path(scratch) / cached.name
        if original is not None:
            quantize_gguf(original, path, "f32", allow_requantize=True)
        else:
            convert_to_gguf(source, path, outtype)
        if path.stat().st_size <= KEEP_INTERMEDIATE_BYTES:
            cache_build(cached.parent, lambda out: shutil.copyfile(path, out / cached.name))
            path = cached if cached.is_file() else path  # (a folder another version left keeps its own)
        yield path


def quantize_gguf(f32_path: Path, out_path: Path, quant: str, threads: int | None = None,
                  allow_requantize: bool = False) -> Path:
    """``llama-quantize`` through llama-cpp-python: ``f32_path`` -> ``out_path`` at ``quant``."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[quant]
    params.nthread = threads or torch.get_num_threads()
    params.allow_requantize = allow_requantize
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "quantize.log"
        with _native_output_to(log):  # llama.cpp prints several lines per tensor
            rc = llama_cpp.llama_model_quantize(str(f32_path).encode(), str(out_path).encode(), ctypes.byref(params))
        if rc != 0:
            tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
            raise VariantError(f"llama.cpp could not quantize to {quant} (error {rc}: {tail}); its tensor shapes "
                               "may not fit the format's block size, try gguf-q8_0 or gguf-q4_0")
    return out_path


@contextmanager
def _native_output_to(log: Path) -> Iterator[None]:
    """Send all output of the block into ``log``: what native code writes to file descriptors 1 and 2
    (``sys.stdout`` redirection cannot catch C ``fprintf``) and what llama-cpp-python's log callback
    writes to ``sys.stderr`` (in Jupyter, a stream object that bypasses the descriptors)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(log, "w") as sink, redirect_stdout(sink), redirect_stderr(sink):
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def check_tokenizer(gguf_path: Path, hf_tokenizer, text: str) -> None:
    """Refuse a GGUF whose vocabulary tokenizes ``text`` differently from the Hugging Face tokenizer."""
    from llama_cpp import _internals
    from llama_cpp import llama_cpp as native

    # the vocabulary alone, without a context: a context over a vocab-only load sees a training context
    # of 0 (the file's llama.context_length is not read) and warns "n_ctx_train (0)"
    params = native.llama_model_default_params()
    params.vocab_only = True
    vocab = _internals.LlamaModel(path_model=str(gguf_path), params=params, verbose=False)
    ours = vocab.tokenize(text.encode(), add_bos=False, special=False)
    vocab.close()
    theirs = hf_tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    if ours != theirs:
        first = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
        raise VariantError(f"the GGUF vocabulary tokenizes text differently from the model's tokenizer (first "
                           f"difference at token {first}); llama.cpp's pre-tokenizer does not match this model, "
                           "so its results would be wrong")


def gguf_weight_bytes(path: Path) -> int:
    """Bytes of all tensors in a GGUF file (quantized blocks with their scales)."""

    return int(sum(t.n_bytes for t in GGUFReader(str(path)).tensors))


def export_artifact(variant: "str | Variant", source: str, out_dir) -> Manifest:
    """Convert, quantize and check ``source`` into an artifact folder with ``model.gguf`` and a manifest."""
    import llama_cpp

    variant = Variant.parse(variant)
    admit(variant, source, what="export")
    quant = variant.field("quant")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with intermediate_gguf(source) as unquantized:
        if unquantized.name == f"model-{quant}.gguf":
            shutil.copyfile(unquantized, out_dir / MODEL_FILE)
        else:
            quantize_gguf(unquantized, out_dir / MODEL_FILE, quant, variant.option("threads"))
    tokenizer = load_tokenizer(source)
    check_tokenizer(out_dir / MODEL_FILE, tokenizer, read_split("eval")[:4000])
    copy_side_files(source, out_dir)
    model_dir = _local_model_dir(source)
    return write_manifest(
        out_dir, variant=variant.name, runtime="llama.cpp", runtime_version=llama_cpp.__version__, model=str(source),
        quantization={"scheme": "llama.cpp GGUF", "type": quant.upper(), "ftype": FTYPES[quant],
                      "converter": f"convert_hf_to_gguf.py from llama-cpp-python {llama_cpp_version()}",
                      "pre_tokenizer_mapping": pre_tokenizer_mapping(model_dir),
                      "weight_bytes": gguf_weight_bytes(out_dir / MODEL_FILE)},
        signature={"file": MODEL_FILE, "n_vocab": len(tokenizer)},
        runtime_settings={"threads": torch.get_num_threads()})


class LlamaCppRunner:
    """A GGUF model in llama.cpp (through llama-cpp-python) behind the Runner interface."""

    def __init__(self, name: str, path: Path, tokenizer, threads: int | None = None, n_ctx: int = 1024,
                 kv: str | None = None) -> None:
        from llama_cpp import Llama

        if kv is not None and kv not in KV_CACHE_TYPES:
            raise VariantError(f"kv={kv} is not a llama.cpp cache type; use one of {', '.join(KV_CACHE_TYPES)}")
        self.name = name
        self.tokenizer = tokenizer
        self.path = Path(path)
        threads = int(threads or torch.get_num_threads())
        cache = {} if kv is None else {"type_k": int(GGMLQuantizationType[kv.upper()]),
                                       "type_v": int(GGMLQuantizationType[kv.upper()]), "flash_attn": True}
        self.llm = Llama(str(self.path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads, n_threads_batch=threads,
                         logits_all=True, verbose=False, **cache)

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[1] > self.llm.n_ctx():
            raise VariantError(f"{self.name}: windows of {input_ids.shape[1]} tokens exceed n_ctx={self.llm.n_ctx()}; "
                               f"pass the option n_ctx={input_ids.shape[1]} or a shorter context")
        rows = []
        for row in input_ids.tolist():  # llama.cpp scores one sequence at a time here
            self.llm.reset()
            self.llm.eval(row)
            rows.append(torch.from_numpy(self.llm.scores[: len(row)].copy()))
        return torch.stack(rows)

    def generate_stream(self, input_ids: torch.Tensor, max_new_tokens: int, pick: Pick | None = None) -> Iterator[int]:
        import llama_cpp

        vocab = self.llm.n_vocab()
        self.llm.reset()
        tokens = input_ids.reshape(-1).tolist()
        for _ in range(max_new_tokens):
            self.llm.eval(tokens)  # appends to the KV cache
            last = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.llm.ctx, -1), shape=(vocab,))
            token = choose(torch.from_numpy(last.copy()), pick)
            yield token
            tokens = [token]

    def weight_bytes(self) -> int:
        return gguf_weight_bytes(self.path)

    def close(self) -> None:
        if self.llm is not None:
            self.llm.close()
            self.llm = None


def self_test(tokens: int = 32) -> None:
    """The llama.cpp probe of :mod:`edgekit.runtimes.selftest`: a one-block Llama with Q8_0 attention and Q4_0 MLP
    weights, written with gguf-py, evaluates a batch of ``tokens`` — the batched quantized matmuls whose
    AMX/AVX-512 kernels are what crash on a CPU the build does not fit. Runs in a child process."""
    from llama_cpp import Llama

    vocab = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))]
    embd, ff, heads, kv_heads = 256, 512, 4, 2
    head_dim = embd // heads
    rng = np.random.default_rng(0)

    def weight(rows: int, cols: int, qtype=None):
        w = (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)
        return (quantize(w, qtype), qtype) if qtype else (w, None)

    tensors = {"token_embd.weight": weight(len(vocab), embd), "output_norm.weight": (np.ones(embd, np.float32), None),
               "output.weight": weight(len(vocab), embd, Q.Q8_0),
               "blk.0.attn_norm.weight": (np.ones(embd, np.float32), None),
               "blk.0.attn_q.weight": weight(embd, embd, Q.Q8_0),
               "blk.0.attn_k.weight": weight(kv_heads * head_dim, embd, Q.Q8_0),
               "blk.0.attn_v.weight": weight(kv_heads * head_dim, embd, Q.Q8_0),
               "blk.0.attn_output.weight": weight(embd, embd, Q.Q8_0),
               "blk.0.ffn_norm.weight": (np.ones(embd, np.float32), None),
               "blk.0.ffn_gate.weight": weight(ff, embd, Q.Q4_0), "blk.0.ffn_up.weight": weight(ff, embd, Q.Q4_0),
               "blk.0.ffn_down.weight": weight(embd, ff, Q.Q4_0)}
    with tempfile.TemporaryDirectory(prefix="edgekit-selftest-") as tmp:
        path = Path(tmp) / "probe.gguf"
        writer = GGUFWriter(str(path), "llama")
        writer.add_context_length(256)
        writer.add_embedding_length(embd)
        writer.add_block_count(1)
        writer.add_feed_forward_length(ff)
        writer.add_head_count(heads)
        writer.add_head_count_kv(kv_heads)
        writer.add_rope_dimension_count(head_dim)
        writer.add_layer_norm_rms_eps(1e-5)
        writer.add_tokenizer_model("llama")
        writer.add_token_list(vocab)
        writer.add_token_scores([0.0] * len(vocab))
        writer.add_token_types([2, 3, 3, *([6] * 256)])  # unknown, control x2, byte x256
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        for name, (data, qtype) in tensors.items():
            writer.add_tensor(name, data, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        llm = Llama(str(path), n_ctx=256, n_batch=tokens, n_threads=2, logits_all=True, verbose=False)
        llm.eval([int(t) for t in rng.integers(3, len(vocab), tokens)])
        if not np.isfinite(llm.scores[:tokens]).all():
            raise SystemExit("llama.cpp returned non-finite logits")
        llm.close()


@artifact_loader("llama.cpp")
def load_gguf_artifact(manifest: Manifest, threads: int | None = None, n_ctx: int = 1024, tokenizer=None,
                       kv: str | None = None):
    admit_artifact(manifest)
    tokenizer = tokenizer or folder_tokenizer(manifest.path)
    return LlamaCppRunner(manifest.variant, manifest.path / MODEL_FILE, tokenizer,
                          threads=threads or manifest.data.get("runtime_settings", {}).get("threads"), n_ctx=n_ctx,
                          kv=kv)


def bits_per_weight(quant: str) -> float:
    """Bits a weight of a GGUF format takes, its per-block scales included, from gguf's own block table
    (q4_k_m, a mix of Q4_K and Q6_K blocks, priced as its Q4_K majority)."""

    block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType[{"q4_k_m": "Q4_K"}.get(quant, quant.upper())]]
    return 8 * block_bytes / block


def _gguf_bytes(variant: Variant, out_f: int, in_f: int, bias: bool, dense: str) -> int:
    return math.ceil(out_f * in_f * bits_per_weight(variant.field("quant")) / 8) + (4 * out_f if bias else 0)


@register(r"gguf-(?P<quant>f32|f16|q8_0|q4_0|q4_k_m)", "llama.cpp",
          "llama.cpp GGUF via llama-cpp-python (options threads, n_ctx, kv: the KV cache type)",
          ("gguf-f16", "gguf-q8_0", "gguf-q4_0", "gguf-q4_k_m"), linear_bytes=_gguf_bytes,
          options=("threads", "n_ctx", "kv"), runtime_options=("threads", "n_ctx", "kv"), load="streamed-export",
          dense=lambda variant, checkpoint: "fp16",
          exporter=export_artifact)
def build_gguf(variant: Variant, source: str, tokenizer) -> LlamaCppRunner:
    return load_artifact(cached_manifest(variant, source), threads=variant.option("threads"),
                         n_ctx=int(variant.option("n_ctx", 1024)), tokenizer=tokenizer, kv=variant.option("kv"))
