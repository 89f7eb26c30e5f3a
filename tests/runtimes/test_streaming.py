"""Layer streaming gives the logits and tokens of the model held in memory, within its budget's layout."""
import shutil

import pytest
import torch

from edgekit.core.errors import InputError
from edgekit.runtimes import build_runner
from edgekit.runtimes.pytorch.streaming import StreamingRunner, stream_device_map, stream_summary


@pytest.fixture(scope="module")
def model_copy(default_model, tmp_path_factory):
    """A private copy: the shipped checkpoint may be replaced while the tests run."""
    return str(shutil.copytree(default_model, tmp_path_factory.mktemp("stream") / "model"))


def test_device_map_streams_what_the_budget_cannot_hold(model_copy):
    full = stream_device_map(model_copy, 1 << 40, torch.float32)
    assert "disk" not in full.values()
    small = stream_device_map(model_copy, 24 * 2**20, torch.float32)
    streamed = [k for k, v in small.items() if v == "disk"]
    assert streamed and all(k.startswith("model.layers.") for k in streamed)
    assert small["lm_head"] == "cpu" and small["model.embed_tokens"] == "cpu"
    with pytest.raises(InputError):
        stream_device_map(model_copy, 2**20, torch.float32)


@pytest.fixture(scope="module")
def reference(model_copy):
    runner = build_runner("fp32", model_copy)
    yield runner
    runner.close()


@pytest.mark.parametrize("prefetch", [True, False])
def test_same_logits_and_tokens_as_in_memory(model_copy, reference, prefetch):
    device_map = stream_device_map(model_copy, 20 * 2**20, torch.float32)
    runner = StreamingRunner(model_copy, device_map, prefetch=prefetch)
    assert len(runner.streamed) >= 3
    ids = torch.randint(0, 4096, (2, 40), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(runner.logits(ids), reference.logits(ids), rtol=1e-5, atol=1e-5)
    layer_params = [p for i in runner.streamed for p in runner.model.model.layers[i].parameters()]
    assert all(p.is_meta for p in layer_params)                 # streamed weights dropped after use
    assert list(runner.generate_stream(ids[:1], 6)) == list(reference.generate_stream(ids[:1], 6))
    summary = stream_summary(runner.steps, 6)
    assert summary["streamed_bytes_per_token"] == runner.streamed_bytes()   # every streamed layer, every token
    assert 0 <= summary["stall_fraction"] <= 1
    assert runner.weight_bytes() == reference.weight_bytes()
    runner.close()


def test_map_without_streamed_layers_refused(model_copy):
    with pytest.raises(InputError):
        StreamingRunner(model_copy, stream_device_map(model_copy, 1 << 40, torch.float32))
