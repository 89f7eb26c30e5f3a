"""Sampling through the KV cache: a sampled answer of n tokens costs n forward passes over prompt + n - 1
tokens in all (the old loop re-read the whole sequence per token: O(n^2) tokens), alone or batched
with greedy work, on PyTorch and on ONNX Runtime."""
import queue

import pytest
import torch

from edgekit.models.load import load_model, load_tokenizer
from edgekit.models.runner import TorchRunner
from edgekit.models.sampling import Nucleus, choose_rows
from edgekit.runtimes import load_artifact
from edgekit.serve.engine import Engine, Job, TextStream

NEW = 128


@pytest.fixture(scope="module")
def runner(default_model):
    return TorchRunner("fp32", load_model(default_model), load_tokenizer(default_model))


@pytest.fixture
def counted(runner):
    """(forward passes, tokens fed) of the model, counted by a forward pre-hook."""
    calls = []
    handle = runner.model.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(kwargs["input_ids"].shape), with_kwargs=True)
    yield calls
    handle.remove()


def _prompt(runner):
    return runner.tokenizer("HAMLET: To be, or not", return_tensors="pt", add_special_tokens=False)["input_ids"]


def _answer(engine, runner, jobs_settings):
    """Submit one job per settings dict at once; return each job's tokens."""
    boxes = []
    for settings in jobs_settings:
        events = queue.Queue()
        job = Job(_prompt(runner), NEW, TextStream(runner.tokenizer), deliver=events.put, **settings)
        engine.submit(job)
        boxes.append((job, events))
    for job, events in boxes:
        while (event := events.get(timeout=600))[0] == "text":
            pass
        assert event[0] == "done", event
    return [job.text.tokens for job, _ in boxes]


def test_a_sampled_answer_costs_one_forward_pass_per_token(runner, counted):
    engine = Engine(max_batch=1, max_wait_ms=0)
    engine.runner = runner
    (tokens,) = _answer(engine, runner, [{"temperature": 0.8, "top_p": 0.95, "seed": 3}])
    engine.close()
    prompt = _prompt(runner).shape[1]
    assert len(tokens) == NEW
    assert len(counted) == NEW
    assert sum(shape[1] for shape in counted) == prompt + NEW - 1  # O(n); re-reading would be ~n^2/2


def test_sampled_jobs_batch_with_greedy_ones(runner, counted):
    greedy_alone = list(runner.generate_stream(_prompt(runner), NEW))
    counted.clear()
    engine = Engine(max_batch=3, max_wait_ms=2000)
    engine.runner = runner
    sampled_a, greedy, sampled_b = _answer(engine, runner, [{"temperature": 0.9, "seed": 1}, {"temperature": 0},
                                                            {"temperature": 0.9, "seed": 2}])
    engine.close()
    assert len(counted) == NEW and all(shape[0] == 3 for shape in counted)  # one batched pass per step
    assert greedy == greedy_alone
    assert sampled_a != greedy and sampled_b != greedy


def test_a_seed_repeats_and_tiny_temperatures_are_greedy(runner):
    ids = _prompt(runner)
    draws = [list(runner.generate_stream(ids, 24, pick=Nucleus(0.9, 0.95, torch.Generator().manual_seed(5))))
             for _ in range(2)]
    assert draws[0] == draws[1]
    job = Job(ids, 4, TextStream(runner.tokenizer), deliver=print, temperature=1e-320)
    assert job.temperature == 0 and job.pick() is None


class _CountingSession:
    """ONNX Runtime's session, counting its runs and the tokens each was fed."""

    def __init__(self, session) -> None:
        self.session, self.fed = session, []

    def run_with_ort_values(self, names, values):
        self.fed.append(values["input_ids"].shape())
        return self.session.run_with_ort_values(names, values)

    def run(self, names, feeds):
        self.fed.append(feeds["input_ids"].shape)
        return self.session.run(names, feeds)

    def __getattr__(self, name):
        return getattr(self.session, name)


def test_onnx_runtime_samples_through_its_cache(onnx_artifact):
    ort_runner = load_artifact(onnx_artifact("onnx-int4-g32"))
    ort_runner.session = _CountingSession(ort_runner.session)
    ids = _prompt(ort_runner)
    tokens = list(ort_runner.generate_stream(ids, 32, pick=Nucleus(0.8, 1.0, torch.Generator().manual_seed(0))))
    assert len(tokens) == 32 and len(ort_runner.session.fed) == 32
    assert sum(shape[1] for shape in ort_runner.session.fed) == ids.shape[1] + 31


def test_a_nucleus_draws_from_the_nucleus_in_proportion():
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    pick = Nucleus(1.0, 0.8, torch.Generator().manual_seed(0))  # nucleus {0, 1}: 0.5 + 0.3 reaches 0.8
    draws = [pick(logits) for _ in range(4000)]
    assert set(draws) == {0, 1}
    assert abs(draws.count(0) / len(draws) - 0.5 / 0.8) < 0.03
    everything = Nucleus(1.0, 1.0, torch.Generator().manual_seed(0))
    assert set(everything(logits) for _ in range(400)) == {0, 1, 2, 3}


def test_a_batch_samples_each_row_as_it_would_alone():
    """Nucleus rows drawn together equal each row drawn alone from the same seed; greedy rows stay argmax."""
    logits = torch.randn(5, 300, generator=torch.Generator().manual_seed(1)) * 4
    settings = [(0.8, 0.95), None, (1.0, 1.0), (0.5, 0.5), (1.3, 0.99)]

    def picks():
        return [None if s is None else Nucleus(*s, torch.Generator().manual_seed(i)) for i, s in enumerate(settings)]

    batched, alone = picks(), picks()
    for _ in range(20):
        together = choose_rows(logits, batched)
        assert together.tolist() == [int(row.argmax()) if p is None else p(row) for row, p in zip(logits, alone)]


def test_a_nucleus_rarely_drawn_falls_back_to_sorting():
    """A tiny top_p over a flat distribution: the nucleus is the argmax alone, which a draw from the whole
    softmax almost never hits, so rows meet MAX_DRAWS rejections and are drawn from the sorted nucleus."""
    logits = torch.zeros(4, 1000)
    logits[:, 7] = 0.01
    picks = [Nucleus(1.0, 1e-4, torch.Generator().manual_seed(i)) for i in range(4)]
    assert all(choose_rows(logits, picks).tolist() == [7] * 4 for _ in range(10))
