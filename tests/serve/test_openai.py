"""The server's OpenAI-compatible API, driven by the real ``openai`` client on 127.0.0.1."""
import httpx
import openai
import pytest

from edgekit.serve.app import create_app, serve_in_background
from edgekit.serve.engine import TextStream

VARIANT = "onnx-int4-g32"
PROMPT = "Good my lord"


@pytest.fixture(scope="module")
def served(onnx_artifact):
    app = create_app(onnx_artifact(VARIANT), max_new_tokens=64)
    with serve_in_background(app) as url:
        yield url, openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def greedy(served):
    """edgekit's own /generate answer to PROMPT: 24 greedy tokens, the reference for the OpenAI endpoints."""
    url, _ = served
    return httpx.post(url + "/generate", json={"prompt": PROMPT, "max_new_tokens": 24}, timeout=60).json()


def test_models_lists_the_artifact(served):
    _, client = served
    assert [m.id for m in client.models.list().data] == [VARIANT]


def test_completion_is_the_greedy_answer_with_usage(served, greedy, tokenizer):
    _, client = served
    reply = client.completions.create(model=VARIANT, prompt=PROMPT, max_tokens=24, temperature=0)
    choice = reply.choices[0]
    assert choice.text == greedy["text"] and choice.finish_reason == "length"
    prompt_tokens = len(tokenizer(PROMPT, add_special_tokens=False)["input_ids"])
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (prompt_tokens, 24)
    assert reply.usage.total_tokens == prompt_tokens + 24 and reply.model == VARIANT


def test_streamed_completion_adds_up_to_the_same_text(served, greedy):
    _, client = served
    chunks = list(client.completions.create(model=VARIANT, prompt=PROMPT, max_tokens=24, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert len([t for t in texts if t]) > 1                      # it really streamed, piece by piece
    assert "".join(texts) == greedy["text"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 24


def test_stop_string_ends_the_answer_before_it(served, greedy):
    _, client = served
    text = greedy["text"]
    stop = text[len(text) // 2: len(text) // 2 + 3]
    expected = text[:text.index(stop)]
    reply = client.completions.create(model=VARIANT, prompt=PROMPT, max_tokens=24, temperature=0, stop=[stop])
    assert reply.choices[0].text == expected and reply.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model=VARIANT, prompt=PROMPT, max_tokens=24, temperature=0, stop=stop,
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed) == expected


def test_chat_answers_and_streams_the_same(served):
    _, client = served
    messages = [{"role": "system", "content": "You are a player."}, {"role": "user", "content": "Who goes there?"}]
    reply = client.chat.completions.create(model=VARIANT, messages=messages, max_tokens=12, temperature=0)
    message = reply.choices[0].message
    assert message.role == "assistant" and isinstance(message.content, str)
    assert reply.usage.completion_tokens <= 12 and reply.choices[0].finish_reason in ("length", "stop")
    chunks = list(client.chat.completions.create(model=VARIANT, messages=messages, max_tokens=12, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == message.content
    assert chunks[-1].choices[0].finish_reason == reply.choices[0].finish_reason


def test_sampling_is_seeded_and_top_p_narrows_it_to_greedy(served, greedy):
    _, client = served

    def sample(**settings):
        return client.completions.create(model=VARIANT, prompt=PROMPT, max_tokens=8, **settings).choices[0].text

    assert sample(temperature=1.0, seed=7) == sample(temperature=1.0, seed=7)
    # a nucleus this small holds only the most likely token: sampling from it is greedy decoding
    assert sample(temperature=1.0, top_p=1e-6, seed=3) == client.completions.create(
        model=VARIANT, prompt=PROMPT, max_tokens=8, temperature=0).choices[0].text


def test_openai_errors(served):
    _, client = served
    with pytest.raises(openai.NotFoundError, match="serves"):
        client.completions.create(model="gpt-4", prompt=PROMPT)
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model=VARIANT, prompt="word " * 2000, max_tokens=4)
    with pytest.raises(openai.BadRequestError, match="limit"):
        client.completions.create(model=VARIANT, prompt=PROMPT, max_tokens=10_000)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model=VARIANT, prompt=PROMPT, temperature=5)
    for empty in ("", [], [[]]):  # every empty shape gets the one message, in one line
        with pytest.raises(openai.BadRequestError, match="the prompt is empty: send text or token ids to continue"):
            client.completions.create(model=VARIANT, prompt=empty, max_tokens=2)
    assert client.completions.create(model=VARIANT, prompt=PROMPT, max_tokens=2).choices[0].text


def test_text_stream_holds_back_what_may_still_be_a_stop(tokenizer):
    ids = tokenizer("To be, or not to be, that is the question", add_special_tokens=False)["input_ids"]
    stream = TextStream(tokenizer, stop=["that is"])
    pieces = []
    for token in ids:
        piece, ended = stream.feed(token)
        pieces.append(piece)
        if ended:
            break
    assert ended and "".join(pieces) == "To be, or not to be, "  # "that" was held back, never sent
