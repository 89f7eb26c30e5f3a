"""The streamed MatMulNBits graph (edgekit/runtimes/onnx/build.py) computes Gemma 3 as transformers does, on a prompt
four times the sliding window, in one pass and token by token through the KV cache.

The checkpoint is the conftest ``gemma_checkpoint`` (window 16 on two of three layers, head_dim apart from
hidden/heads, one KV head, tied head) with its norm weights drawn at random: initialised at zero, every (1 + w)
norm would be the identity and a norm applied in the wrong place would go unseen. Two references:

- transformers fp32 with the very weights the graph holds (each MatMulNBits decoded from the graph's own codes,
  scales and zero points): the graph must equal it to float rounding, so any difference is the graph's
  structure (norms, window mask, rotary, GELU, softcaps), not quantization;
- transformers fp32 with the checkpoint's weights: 8-bit blocks of 32 must be near-lossless against it.
"""
import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edgekit.core.errors import VariantError

PROMPT = 64  # tokens; the window is 16
EXACT = 1e-4  # max |logit difference| against the same weights in transformers (measured below 1e-6; logits'
# std is about 0.2, and a graph without the window mask or the (1 + w) norms is off by 0.5 or more)
# config edits of the checkpoint, and whether the graph holds int8 embeddings (the OpenVINO variants' recipe);
# transformers' Gemma 3 ignores attn_logit_softcapping (q/k norms replaced it), so the graph must too
CASES = {"as saved": ({}, False),
         "softcapped": ({"attn_logit_softcapping": 0.5, "final_logit_softcapping": 0.3}, False),
         "scaled rope": ({"rope_scaling": {"rope_type": "linear", "factor": 8.0}, "rope_local_base_freq": 100.0},
                         False),
         "int8 embeddings": ({}, True)}


def _variant(source: str, folder, edits: dict) -> str:
    """A copy of ``source`` with norm weights drawn from N(0, 0.5) and ``edits`` applied to its config."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, folder)
    tensors = load_file(folder / "model.safetensors")
    generator = torch.Generator().manual_seed(1)
    for name, tensor in tensors.items():
        if name.endswith("norm.weight"):
            tensors[name] = 0.5 * torch.randn(tensor.shape, generator=generator)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **edits}))
    return str(folder)


def _transformers(folder: str, graph: str | None = None):
    """transformers' eager Gemma 3 in fp32; with ``graph``, every linear holds the weight that graph's MatMulNBits
    node decodes to, (code - zero point) * scale per block (the head untied from the embedding), and the
    embedding the graph's int8 codes times their row scales where it holds those."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    if graph is None:
        return model
    proto = onnx.load(graph)
    initializers = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    params = dict(model.named_parameters(remove_duplicate=False))
    decoded = 0
    for node in proto.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        attrs = {a.name: a.i for a in node.attribute}
        assert attrs["bits"] == 8, "decoding below is for one code per byte"
        n, k, block = attrs["N"], attrs["K"], attrs["block_size"]
        codes = initializers[node.input[1]].reshape(n, -1, block).astype(np.float32)
        scales = initializers[node.input[2]].reshape(n, -1, 1)
        zeros = initializers[node.input[3]].reshape(n, -1, 1).astype(np.float32)
        weight = torch.from_numpy(((codes - zeros) * scales).reshape(n, -1)[:, :k].copy())
        name = node.input[1].rsplit("_Q8", 1)[0] + ".weight"
        if name == "lm_head.weight":
            model.lm_head.weight = torch.nn.Parameter(weight)
        else:
            params[name].data.copy_(weight)
        decoded += 1
    assert decoded == 7 * model.config.num_hidden_layers + 1
    if "embed_tokens_int8" in initializers:
        table = initializers["embed_tokens_int8"].astype(np.float32) * initializers["embed_tokens_scales"]
        model.model.embed_tokens.weight.data.copy_(torch.from_numpy(table))
    return model


@pytest.fixture(scope="module", params=list(CASES))
def built(request, gemma_checkpoint, tmp_path_factory):
    """(checkpoint variant, its 8-bit graph's runner, transformers on the graph's weights, on the checkpoint's)."""
    from edgekit.artifacts.manifest import copy_side_files
    from edgekit.runtimes.onnx.build import build_nbits_decoder
    from edgekit.runtimes.onnxruntime.runner import ORTRunner

    tmp = tmp_path_factory.mktemp("onnx-gemma")
    edits, int8_embeddings = CASES[request.param]
    folder = _variant(gemma_checkpoint, tmp / "checkpoint", edits)
    graph = build_nbits_decoder(folder, tmp / "graph", bits=8, block_size=32, symmetric=False, accuracy_level=1,
                                int8_embeddings=int8_embeddings)
    copy_side_files(folder, tmp / "graph")
    return folder, ORTRunner(tmp / "graph"), _transformers(folder, str(graph)), _transformers(folder)


@pytest.fixture(scope="module")
def prompt(gemma_checkpoint):
    from edgekit.core.paths import eval_token_ids
    from edgekit.models.load import load_tokenizer

    return eval_token_ids(load_tokenizer(gemma_checkpoint), "eval")[:PROMPT].reshape(1, PROMPT)


def _stepwise(runner, ids: torch.Tensor, prefill: int) -> torch.Tensor:
    """Logits of positions ``prefill - 1 ...`` from the graph: the first ``prefill`` tokens in one call, then one
    token a call with the previous call's ``present.*`` fed back as ``past_key_values.*``."""
    ids = ids.numpy()
    names = [o.name for o in runner.session.get_outputs()]
    past = {name: np.zeros((1, runner.kv_heads, 0, runner.head_dim), np.float32) for name in runner.past_names}
    rows, start = [], 0
    for end in [prefill, *range(prefill + 1, ids.shape[1] + 1)]:
        feeds = {"input_ids": ids[:, start:end], "attention_mask": np.ones((1, end), np.int64),
                 "position_ids": np.arange(start, end)[None], **past}
        out = dict(zip(names, runner.session.run(names, feeds)))
        rows.append(out["logits"][:, -1])
        past = {name: out["present." + name[len("past_key_values."):]] for name in runner.past_names}
        start = end
    return torch.from_numpy(np.stack(rows, axis=1))


def test_the_graph_is_transformers_gemma3_on_a_prompt_past_the_window(built, prompt):
    _, runner, same_weights, _ = built
    with torch.no_grad():
        reference = same_weights(prompt).logits
    logits = runner.logits(prompt)
    assert reference.std() > 0.1  # not a degenerate model: norms and softcaps leave the logits spread
    assert (logits - reference).abs().max() < EXACT


def test_decoding_through_the_kv_cache_matches_past_the_window(built, prompt):
    """Prefill 8 tokens, then one at a time to 64: by the end each sliding layer's cache holds four windows."""
    _, runner, same_weights, _ = built
    with torch.no_grad():
        reference = same_weights(prompt).logits[:, 7:]
    assert (_stepwise(runner, prompt, 8) - reference).abs().max() < EXACT
    with torch.no_grad():
        greedy = same_weights.generate(prompt[:, :48], attention_mask=torch.ones_like(prompt[:, :48]),
                                       max_new_tokens=16, do_sample=False)[0, 48:].tolist()
    assert list(runner.generate_stream(prompt[:, :48], 16)) == greedy


def test_8_bit_blocks_are_near_lossless_against_the_fp32_checkpoint(built, prompt):
    _, runner, _, checkpoint = built
    with torch.no_grad():
        reference = checkpoint(prompt).logits.log_softmax(-1)
    logits = runner.logits(prompt).log_softmax(-1)
    kl = (reference.exp() * (reference - logits)).sum(-1)
    # measured: mean about 5e-6, max 2e-5; a graph without the window mask or the (1 + w) norms: mean 0.009 or more
    assert kl.mean() < 1e-4 and kl.max() < 1e-3, (kl.mean(), kl.max())
    # a random model's near-ties flip under any rounding (0.94 measured): top-1 only checks nothing gross is off
    assert (logits.argmax(-1) == reference.argmax(-1)).float().mean() >= 0.9


@pytest.mark.parametrize("edits, match", [({"use_bidirectional_attention": True}, "bidirectional attention"),
                                          ({"hidden_activation": "gelu"}, "uses the gelu activation")])
def test_a_gemma3_option_the_graph_does_not_compute_is_refused_in_one_line(edits, match, gemma_checkpoint, tmp_path):
    from edgekit.runtimes.onnx.build import build_nbits_decoder

    folder = _variant(gemma_checkpoint, tmp_path / "checkpoint", edits)
    with pytest.raises(VariantError, match=match) as refused:
        build_nbits_decoder(folder, tmp_path / "graph", bits=4, block_size=32, symmetric=False, accuracy_level=0)
    assert "\n" not in str(refused.value) and "use onnx-int8 or onnx-fp32" in str(refused.value)


def test_another_family_is_refused_in_one_line_naming_what_runs_it(tmp_path):
    """Gemma 2 looks close (norms around attention and MLP, (1 + w)) but caps its attention scores and has no q/k
    norms: the builder writes only the blocks it is tested on and says which variants take any architecture."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from edgekit.runtimes.onnx.build import build_nbits_decoder

    config = Gemma2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                          architectures=["Gemma2ForCausalLM"])
    Gemma2ForCausalLM(config).save_pretrained(tmp_path / "gemma2")
    with pytest.raises(VariantError, match=r"^ov-int4-g<N> builds Llama-family and Gemma 3 graphs \(.*gemma3_text\); "
                                           r".* is a gemma2: use ov-int8 for it$") as refused:
        build_nbits_decoder(str(tmp_path / "gemma2"), tmp_path / "graph", bits=4, block_size=128, symmetric=True,
                            accuracy_level=0, family="ov", fallback="ov-int8")
    assert "\n" not in str(refused.value)
