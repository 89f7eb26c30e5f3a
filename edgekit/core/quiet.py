"""Known, understood messages from the libraries edgekit drives, silenced where they arise.

Each entry says why the message does not concern an edgekit user; anything else still shows.
Silencing is targeted (one logger and a message prefix, or one warning category around one
call), never a global ``warnings.simplefilter("ignore")``.

- bitsandbytes (CPU, AVX512-BF16 machines) tries an optional hub kernel package (``kernels``)
  at import and logs "Failed to load CPU gemm_4bit_forward from kernels-community" when it is
  absent; it then uses its own CPU kernel, which is what edgekit measures.
- ``torch_dtype`` is deprecated: optimum's exporter still passes the old keyword to
  transformers; the dtype it asks for is the one edgekit wants (fp32).
- TracerWarnings during ONNX export: torch.jit tracing records one path through Python
  branches on tensor values (cache initialized, padding needed). The traced path is the one
  every input of the exported graph takes; :func:`edgekit.runtimes.onnx.export.parity`
  checks the graph against PyTorch instead of trusting the trace. Same for the opset-11
  "aten::index" note (negative indices never reach it).
- Logging set up by a library on import: ONNX Runtime's MatMulNBits quantizer module calls
  ``logging.basicConfig`` when imported, after which every library's INFO records (httpx's line per
  request, for one) reach a notebook's output; :func:`root_logging_kept` puts the root logger back.
  NNCF logs a bit-width statistics table at INFO for every compression: the variant's name and
  ``edgekit inspect`` already say what it holds.
- lm-eval's "<task>: Custom kwargs can be passed to `--metadata`" on every load of a task whose documents
  come from a function: edgekit's shipped tasks read their local JSONL that way and take no kwargs.
- ONNX Runtime's "Please consider to run pre-processing before quantization": pre-processing
  (shape inference, graph fusion) helps activation quantization of convolutional graphs;
  edgekit quantizes MatMul weights of an exported decoder and measures the result (KL, top-1).
"""
from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager


class DropMessages(logging.Filter):
    """A logging filter that drops records whose message starts with one of ``prefixes`` (or, with ``anywhere``,
    contains one)."""

    def __init__(self, *prefixes: str, anywhere: bool = False) -> None:
        super().__init__()
        self.prefixes, self.anywhere = prefixes, anywhere

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.anywhere:
            return not any(p in message for p in self.prefixes)
        return not message.startswith(self.prefixes)


@contextmanager
def dropped(logger_name: str, *prefixes: str, anywhere: bool = False):
    """Within the block, drop ``logger_name``'s records starting with ``prefixes`` (containing one, with
    ``anywhere``); "" is the root logger."""
    logger, rule = logging.getLogger(logger_name or None), DropMessages(*prefixes, anywhere=anywhere)
    logger.addFilter(rule)
    try:
        yield
    finally:
        logger.removeFilter(rule)


BNB_KERNELS = DropMessages("Failed to load CPU gemm_4bit_forward from kernels-community")


def quiet_bitsandbytes_import() -> None:
    """Drop bitsandbytes' optional-kernel message (its logger exists before bitsandbytes is imported)."""
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    if BNB_KERNELS not in logger.filters:
        logger.addFilter(BNB_KERNELS)


@contextmanager
def onnx_export():
    """Around optimum's ONNX export: no TracerWarnings, no opset-11 index note, no torch_dtype notice."""
    with warnings.catch_warnings(), dropped("transformers.configuration_utils", "`torch_dtype` is deprecated"):
        # torch.jit.TracerWarning's notes, by their text (edgekit's package import stays torch-free)
        warnings.filterwarnings("ignore", message="Converting a tensor to a Python")
        warnings.filterwarnings("ignore", message="Exporting aten::index operator", category=UserWarning)
        yield


def ort_quantization():
    """Around ONNX Runtime's quantizers: no pre-processing advice (logged on the root logger)."""
    return dropped("", "Please consider to run pre-processing before quantization")


@contextmanager
def root_logging_kept():
    """Within the block, a library may configure the root logger (``logging.basicConfig`` at import); after it,
    the root logger has the handlers and level it had before."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
        root.setLevel(level)


@contextmanager
def at_level(logger_name: str, level: int):
    """Within the block, ``logger_name`` ("" is the root logger) at ``level``; after it, at the level it had."""
    logger = logging.getLogger(logger_name or None)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


@contextmanager
def nncf_statistics():
    """Around an NNCF compression: its INFO statistics table kept out (warnings still show)."""
    with at_level("nncf", logging.WARNING), root_logging_kept():
        yield


def lm_eval_task_loading():
    """Around loading lm-eval tasks: no custom-dataset kwargs advice (see the module docstring)."""
    return dropped("lm_eval.api.task", "Custom kwargs can be passed", anywhere=True)
