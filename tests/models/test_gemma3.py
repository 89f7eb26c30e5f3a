"""The named model gemma3-270m: its rebuilt tokenizer gives llama.cpp's ids, its weights are Gemma 3's, its grids the
GGUF's."""
import math

import pytest
import torch

from edgekit.models.names import MODELS, original_gguf

GEMMA = MODELS["gemma3-270m"]
needs_gemma = pytest.mark.skipif(not GEMMA.installed(), reason="gemma3-270m is installed by `make setup`")

# whitespace runs, code, chat markup, non-Latin text, bytes the vocabulary lacks
TEXTS = [
    "The capital of Italy is Rome.",
    "  two leading spaces,\ttab,   three,\n\n\nthree newlines and trailing   ",
    "def f(x):\n    return  x * 2  # comment\n\n\nclass A:\n\tpass\n",
    "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>\n",
    "Привет, мир! 日本語のテキスト。 مرحبا بالعالم — ελληνικά, हिन्दी, 한국어 🤖🦀",
    "<div class=\"x\">&nbsp;</div> \u0000\u0007 \U0001F9EC zero-width\u200bjoiner",
]


@needs_gemma
def test_tokenizer_ids_equal_llama_cpps_on_the_same_gguf():
    from llama_cpp import Llama

    from edgekit.core.paths import read_split
    from edgekit.models.load import load_tokenizer, resolve_source

    gguf = original_gguf(resolve_source("gemma3-270m"))
    assert gguf is not None and gguf.name == GEMMA.original_gguf
    tokenizer = load_tokenizer("gemma3-270m")
    vocab = Llama(str(gguf), vocab_only=True, verbose=False)
    try:
        for text in TEXTS + [read_split("eval")[:3000]]:
            ids = tokenizer(text)["input_ids"]  # <bos> added, as the GGUF asks
            assert vocab.tokenize(text.encode(), add_bos=True, special=True) == ids, text[:40]
            assert tokenizer.decode(ids, skip_special_tokens=False).startswith("<bos>")
    finally:
        vocab.close()
    ids = tokenizer("The capital of Italy is Rome.", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids)[:3] == ["The", "▁capital", "▁of"]


@needs_gemma
def test_the_weights_are_gemma_3_and_score_as_llama_cpp_scores_the_gguf():
    """Tied 640-wide Gemma 3 with head_dim 256, whose perplexity on plain sentences equals llama.cpp's on the
    published GGUF (within its quantized activations' few percent; transformers' own GGUF tokenizer gave
    hundreds), and " Rome" among the likeliest continuations of "The capital of Italy is" in both."""
    import numpy as np
    from llama_cpp import Llama

    from edgekit.models.load import load_model, load_tokenizer, resolve_source

    tokenizer = load_tokenizer("gemma3-270m")
    model = load_model("gemma3-270m", dtype=torch.float32)
    config = model.config
    assert (config.hidden_size, config.head_dim, config.num_key_value_heads,
            config.sliding_window) == (640, 256, 1, 512)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    reference = Llama(str(original_gguf(resolve_source("gemma3-270m"))), logits_all=True, verbose=False, n_ctx=64,
                      n_threads=2)
    try:
        for text in ("The capital of Italy is Rome. The capital of France is Paris.", "The capital of Italy is"):
            ids = tokenizer(text)["input_ids"]
            with torch.inference_mode():
                ours = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
            reference.reset()
            reference.eval(ids)
            theirs = torch.from_numpy(np.array(reference.scores[: len(ids)])).log_softmax(-1)
            targets = torch.tensor(ids[1:])
            ppl = [math.exp(-lp[:-1].gather(1, targets[:, None]).mean()) for lp in (ours, theirs)]
            assert 5 < ppl[0] < 100 and abs(ppl[0] / ppl[1] - 1) < 0.05, ppl
        rome = tokenizer(" Rome", add_special_tokens=False)["input_ids"]
        assert all(rome[0] in lp[-1].topk(5).indices for lp in (ours, theirs))
    finally:
        reference.close()


def tiny_gemma3(folder):
    """A Gemma 3 shaped like the real one (head_dim apart from hidden/heads, 1 KV head, tied head, 5 sliding
    layers to 1 global, q/k norms) but tiny and random, saved as safetensors."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
                              num_attention_heads=4, num_key_value_heads=1, head_dim=32, sliding_window=16,
                              max_position_embeddings=256, tie_word_embeddings=True)
    torch.manual_seed(0)
    Gemma3ForCausalLM(config).save_pretrained(folder)
    return folder


def test_the_planner_prices_gemma_shapes_as_transformers_builds_them(tmp_path):
    """Weights (tied head counted once, head_dim 32 != 64/4) and the KV cache (sliding layers hold their
    window only) within 2% of the model and the cache transformers actually holds."""
    from transformers import DynamicCache

    from edgekit.memory.bytes import kv_cache_bytes
    from edgekit.models.config import parameter_count
    from edgekit.models.load import load_model

    folder = str(tiny_gemma3(tmp_path / "gemma"))
    model = load_model(folder, dtype=torch.float32)
    assert model.config.layer_types.count("sliding_attention") == 5
    held = sum(p.numel() for p in model.parameters())  # shared tensors once
    assert abs(parameter_count(folder) / held - 1) < 0.02
    context = 64
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        model(input_ids=torch.randint(0, 512, (1, context)), past_key_values=cache, use_cache=True)
    built = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    assert abs(kv_cache_bytes(folder, context, dtype="fp32") / built - 1) < 0.02, \
        (kv_cache_bytes(folder, context, dtype="fp32"), built)


def test_kq_keeps_gemmas_embedding_scale(tmp_path):
    """Gemma multiplies its embeddings by sqrt(hidden); kq's quantized embedding must too (without it a
    real Gemma's perplexity went from 180 to a million)."""
    from edgekit.models.load import load_model
    from edgekit.quantizers.kquant import quantize_kq

    folder = str(tiny_gemma3(tmp_path / "gemma"))
    ids = torch.randint(0, 512, (1, 24))
    reference = load_model(folder, dtype=torch.float32)
    quantized = quantize_kq(load_model(folder, dtype=torch.float32), bits=8, sensitive=8, embed=8, progress=False)
    with torch.inference_mode():
        ref = reference.model.embed_tokens(ids)
        assert ((quantized.model.embed_tokens(ids) - ref).norm() / ref.norm()) < 0.02  # 8-bit rounding only
        kl = torch.nn.functional.kl_div(quantized(ids).logits.log_softmax(-1), reference(ids).logits.log_softmax(-1),
                                        log_target=True, reduction="batchmean")
    assert kl < 0.05
