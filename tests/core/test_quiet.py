"""edgekit.core.quiet: the understood messages are dropped, and nothing else is."""
import logging
import warnings

import torch

from edgekit.core.quiet import dropped, onnx_export, ort_quantization, quiet_bitsandbytes_import


def test_dropped_removes_only_the_named_message(caplog):
    log = logging.getLogger("edgekit.test.quiet")
    with caplog.at_level(logging.WARNING), dropped("edgekit.test.quiet", "known note"):
        log.warning("known note: understood")
        log.warning("something new")
    log.warning("known note after the block")
    assert [r.getMessage() for r in caplog.records] == ["something new", "known note after the block"]


def test_bitsandbytes_kernel_message_is_dropped(caplog):
    quiet_bitsandbytes_import()
    quiet_bitsandbytes_import()  # idempotent
    log = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING):
        log.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please ...", "No module")
        log.warning("a real bitsandbytes problem")
    assert [r.getMessage() for r in caplog.records] == ["a real bitsandbytes problem"]


def test_ort_preprocessing_advice_is_dropped(caplog):
    with caplog.at_level(logging.WARNING), ort_quantization():
        logging.warning("Please consider to run pre-processing before quantization. Refer to example: ...")
        logging.warning("other advice")
    assert [r.getMessage() for r in caplog.records] == ["other advice"]


def branchy(x):
    return x * 2 if bool(x.sum() > 0) else x  # a Python branch on a tensor: the tracer warns


def test_tracer_warnings_are_silenced_during_export_only():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with onnx_export():
            torch.jit.trace(branchy, torch.ones(3))
        assert not [w for w in seen if issubclass(w.category, torch.jit.TracerWarning)]
        torch.jit.trace(branchy, torch.ones(3))
        assert [w for w in seen if issubclass(w.category, torch.jit.TracerWarning)]
        with onnx_export():
            warnings.warn("an unrelated user warning", UserWarning)
        assert [w for w in seen if "unrelated" in str(w.message)]
