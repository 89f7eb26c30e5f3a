"""The planner prices the streamed MatMulNBits graphs (edgekit.runtimes.onnx.build) as they are built: each
graph is built from a tiny checkpoint, and its runner's own count of weight bytes (the initializers ONNX Runtime
loads, the IR's weights file OpenVINO reads) is within 2% of what the planner says from the config alone. The
Gemma-shaped checkpoint is tied (the graph stores the head a second time, as MatMulNBits) and has two rotary
sets (sliding and full layers), whose cos and sin tables the graph stores too."""
import pytest

from edgekit.memory.bytes import module_bytes, weight_bytes
from edgekit.models.load import model_config
from edgekit.runtimes import build_runner

VARIANTS = ["onnx-int4-g32", "onnx-int8-g128", "onnx-int4-g64:symmetric=true", "ov-int4-g128", "ov-int8-g128"]


@pytest.fixture(scope="module", params=["default_model", "gemma_checkpoint"])
def checkpoint(request):
    return request.getfixturevalue(request.param)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_planner_prices_the_built_graph(checkpoint, variant):
    runner = build_runner(variant, checkpoint)
    try:
        built = runner.weight_bytes()
    finally:
        runner.close()
    planned = weight_bytes(model_config(checkpoint), variant)
    assert abs(planned - built) <= 0.02 * built, (planned, built)


def test_a_tied_head_and_the_rotary_tables_are_priced_as_stored(gemma_checkpoint):
    """The tied Gemma shape's graph stores a MatMulNBits head of its own and a cos and a sin table per rotary set:
    the planner's head and rotary entries are the bytes of those initializers, to the byte."""
    import onnx

    from edgekit.runtimes import cached_artifact
    from edgekit.runtimes.onnx.files import MODEL_FILE

    graph = onnx.load(str(cached_artifact("onnx-int4-g32", gemma_checkpoint) / MODEL_FILE),
                      load_external_data=False).graph
    stored = {"lm_head": 0, "model.rotary_emb": 0}
    for tensor in graph.initializer:
        part = "lm_head" if tensor.name.startswith("lm_head") else "model.rotary_emb" if "rope_" in tensor.name else ""
        if part:
            stored[part] += len(tensor.raw_data) or int(dict((e.key, e.value) for e in tensor.external_data)["length"])
    sizes = module_bytes(model_config(gemma_checkpoint), "onnx-int4-g32")
    assert stored["model.rotary_emb"] > 0 and stored["lm_head"] > 0
    assert {part: sizes[part] for part in stored} == stored
