"""Export a causal LM to ONNX with its KV cache, and check the export against PyTorch.

Follows the Hugging Face Optimum guide "Export a model to ONNX with optimum.exporters.onnx":
``main_export`` with the ``text-generation-with-past`` task writes one graph that takes
``past_key_values`` and returns ``present`` (so decoding reuses the cache). Optimum's own
validation is skipped; :func:`parity` does it through the Runner interface instead and
reports what a reader wants to know: the largest absolute logit difference and how often
both pick the same next token. Models above :data:`~edgekit.runtimes.onnxruntime.runner.EXTERNAL_DATA_THRESHOLD`
keep their weights in one external data file (``model.onnx_data``), as ONNX requires past 2 GB.
"""
from __future__ import annotations

from pathlib import Path

import onnx
import torch

from edgekit.core.caches import cache_build
from edgekit.core.errors import ModelSourceError
from edgekit.core.paths import work_dir
from edgekit.core.quiet import onnx_export
from edgekit.memory.guard import admit
from edgekit.models.load import model_key, resolve_source
from edgekit.runtimes.onnx.files import EXTERNAL_DATA_FILE, EXTERNAL_DATA_THRESHOLD, MODEL_FILE

TASK = "text-generation-with-past"


def export_onnx(source: str, out_dir: str | Path, opset: int | None = None) -> Path:
    """Export ``source`` (``default``, a folder or a hub id) to ``out_dir/model.onnx``; returns the model path."""
    from optimum.exporters.onnx import main_export

    resolved = resolve_source(source)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with onnx_export():  # the tracer's notes are understood (edgekit.core.quiet); parity() checks the graph
            main_export(resolved, out_dir, task=TASK, opset=opset, do_validation=False, no_post_process=True,
                        library_name="transformers")
    except (KeyError, ValueError) as exc:
        raise ModelSourceError(f"optimum cannot export {resolved} for {TASK}: {exc}; "
                               "pick a decoder-only model optimum supports (Llama, Mistral, Qwen2, "
                               "GPT-2...)") from None
    model_path = out_dir / MODEL_FILE
    consolidate_external_data(model_path)
    return model_path


def cached_export(source: str) -> Path:
    """The plain fp32 ONNX export of ``source``, made once per model version and reused by every variant."""
    folder = work_dir() / "onnx-exports" / model_key(source)
    if not (folder / MODEL_FILE).is_file():
        admit("onnx-fp32", source, what="export")  # optimum holds the fp32 model and the graph it writes
        cache_build(folder, lambda out: export_onnx(source, out))
    return folder / MODEL_FILE


def consolidate_external_data(model_path: Path) -> None:
    """Keep a small model in one file; put a large one's weights in a single ``model.onnx_data``."""
    files = [p for p in model_path.parent.iterdir() if p.name.startswith(MODEL_FILE) and p != model_path]
    size = sum(p.stat().st_size for p in files) + model_path.stat().st_size
    if (size <= EXTERNAL_DATA_THRESHOLD and not files) or [p.name for p in files] == [EXTERNAL_DATA_FILE]:
        return
    model = onnx.load(str(model_path), load_external_data=True)
    for p in files:
        p.unlink()
    onnx.save_model(model, str(model_path), save_as_external_data=size > EXTERNAL_DATA_THRESHOLD,
                    all_tensors_to_one_file=True, location=EXTERNAL_DATA_FILE, size_threshold=1024)


def parity_batch(token_ids: torch.Tensor, window: int = 128) -> torch.Tensor:
    """Cut 1-D ``token_ids`` into a batch of ``window``-token rows (one row if shorter)."""
    ids = token_ids.reshape(-1)
    rows = len(ids) // window
    return ids[None, :] if rows == 0 else ids[: rows * window].reshape(rows, window)


@torch.inference_mode()
def parity(reference, candidate, token_ids: torch.Tensor) -> dict:
    """Logit agreement of two Runners on the same tokens: max |Δlogit| and top-1 agreement.

    ``token_ids`` is a [batch, seq] batch (see :func:`parity_batch`) or a 1-D sequence.
    """
    ids = token_ids if token_ids.dim() == 2 else parity_batch(token_ids)
    a, b = reference.logits(ids), candidate.logits(ids)
    return {"max_abs_logit_diff": float((a - b).abs().max()),
            "mean_abs_logit_diff": float((a - b).abs().mean()),
            "top1_agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean()),
            "parity_tokens": int(ids.numel()), "parity_reference": reference.name}
