"""QAT: a short seeded fine-tune with fake quantization lowers KL against fp32, and exports packed weights."""
import pytest

from edgekit.measure.quality import EvalSettings, score
from edgekit.quantizers.packed import PackedLinear
from edgekit.quantizers.qat import QATSettings, qat_checkpoint, qat_history
from edgekit.runtimes import build_runner

SHORT = QATSettings(bits=2, group_size=64, steps=6, batch_size=4, eval_every=0, eval_tokens=512)
OPTIONS = "steps=6,batch_size=4,eval_every=0,eval_tokens=512"


@pytest.fixture(scope="module")
def checkpoint(default_model, tokenizer):
    return qat_checkpoint(default_model, SHORT, tokenizer, progress=False)


def test_qat_lowers_kl_against_fp32(default_model, checkpoint):
    history = qat_history(default_model, SHORT)
    assert list(history["step"]) == [0, SHORT.steps]
    assert history["kl_divergence"].iloc[-1] < history["kl_divergence"].iloc[0]


def test_qat_variant_is_packed_and_beats_rtn(default_model, tokenizer, eval_ids, checkpoint):
    settings = EvalSettings(context=256, stride=128, max_tokens=1024)
    base = score(build_runner("fp32", default_model, tokenizer), eval_ids, settings, keep_logprobs=True,
                 progress=False)
    kl = {}
    for name in ("int2-g64", f"qat-int2-g64:{OPTIONS}"):
        runner = build_runner(name, default_model, tokenizer)
        kl[name] = score(runner, eval_ids, settings, baseline=base, progress=False).against(base)["kl_divergence"]
    layers = [m for m in runner.model.modules() if isinstance(m, PackedLinear)]
    assert len(layers) == 42 and all(m.bits == 2 and m.group_size == 64 for m in layers)
    assert kl[f"qat-int2-g64:{OPTIONS}"] < kl["int2-g64"]


def test_bad_settings_are_refused():
    from edgekit.core.errors import InputError

    with pytest.raises(InputError, match="steps"):
        QATSettings(steps=0)
