"""What a served artifact carries and holds: its chat template, and for GGUF a KV cache of the context the
server admits (a prompt the server accepts is never failed by llama.cpp's n_ctx)."""
import shutil

import httpx
import pytest

from edgekit.core.paths import read_split
from edgekit.runtimes import export_artifact
from edgekit.serve.app import create_app, serve_in_background

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def gguf_with_template(default_model, tmp_path_factory):
    source = tmp_path_factory.mktemp("src") / "model"
    shutil.copytree(default_model, source)
    (source / "chat_template.jinja").write_text(TEMPLATE)
    out = tmp_path_factory.mktemp("artifact") / "gguf"
    export_artifact("gguf-q8_0", str(source), out)
    return out


def test_the_chat_template_ships_in_the_artifact(gguf_with_template):
    from edgekit.artifacts.manifest import verify_artifact

    manifest = verify_artifact(gguf_with_template)
    assert "chat_template.jinja" in manifest.data["files"]
    assert (gguf_with_template / "chat_template.jinja").read_text() == TEMPLATE


def test_gguf_is_served_at_the_context_the_server_admits(gguf_with_template):
    app = create_app(gguf_with_template, max_prompt_tokens=2048, max_new_tokens=4)
    server = app.state.server
    with serve_in_background(app) as url, httpx.Client(base_url=url, timeout=300) as client:
        assert server.runner.llm.n_ctx() == server.context == 2048
        tokenizer = server.runner.tokenizer
        ids = tokenizer(read_split("eval"), add_special_tokens=False)["input_ids"][:1500]  # over the old 1024
        reply = client.post("/generate", json={"prompt": tokenizer.decode(ids), "max_new_tokens": 2})
        assert reply.status_code == 200, reply.text
        chat = client.post("/v1/chat/completions", json={"model": server.model_id, "max_tokens": 2,
                                                         "messages": [{"role": "user", "content": "Hello"}]})
        assert chat.status_code == 200 and tokenizer.chat_template == TEMPLATE
