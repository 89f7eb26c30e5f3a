"""edgekit: what you lose and gain by quantizing a causal LM and shipping it to a device.

The public face: every name a notebook, a script or a user needs, importable as ``from edgekit import compare``
(the widgets, plots and narration are in :mod:`edgekit.ui`). Names are looked up on first use (PEP 562), so
``import edgekit`` stays instant and the CLI's ``--help`` answers at once; the rooms underneath are laid out
in ``DESIGN.md`` (Layout).
"""
from __future__ import annotations

import importlib

from edgekit.core import __version__
from edgekit.core.quiet import quiet_bitsandbytes_import

quiet_bitsandbytes_import()  # whoever imports bitsandbytes first (edgekit or transformers), see edgekit.core.quiet

_FACE = {
    "edgekit.core.errors": ("EdgekitError", "ArtifactError", "InputError", "ModelSourceError", "PlanError",
                            "VariantError"),
    "edgekit.core.paths": ("eval_token_ids", "read_split", "work_dir"),
    "edgekit.models.names": ("MODELS",),
    "edgekit.models.load": ("load_model", "load_tokenizer", "model_summary", "resolve_source"),
    "edgekit.models.layout": ("block_linears",),
    "edgekit.models.runner": ("TorchRunner", "generate_text"),
    "edgekit.variants.registry": ("Variant", "known_variants", "offered_variants"),
    "edgekit.models.config": ("load_config", "known_models", "parameter_count"),
    "edgekit.memory.plan": ("plan_memory",),
    "edgekit.memory.bytes": ("weight_bytes", "kv_cache_bytes"),
    "edgekit.memory.profiles": ("device_profiles",),
    "edgekit.memory.guard": ("admit",),
    "edgekit.measure.quality": ("EvalSettings", "score"),
    "edgekit.measure.latency": ("measure_latency",),
    "edgekit.measure.stats": ("delta_reading",),
    "edgekit.measure.peak_memory": ("PeakMemory", "release_memory"),
    "edgekit.measure.store": ("Result", "ResultStore", "environment"),
    "edgekit.quantizers.reference": ("TEACHING_SCHEMES", "error_histogram", "fake_quantize", "layer_errors",
                                     "outlier_report", "scheme_table"),
    "edgekit.quantizers.sensitivity": ("heatmap_table", "layer_sensitivity", "ranked"),
    "edgekit.quantizers.smoothquant": ("activation_maxima", "calibration_windows", "outlier_summary"),
    "edgekit.quantizers.qat": ("QATSettings", "qat_history"),
    "edgekit.pruning.variants": ("pruning_record",),
    "edgekit.pruning.spec": ("storage",),
    "edgekit.artifacts.manifest": ("read_manifest", "verify_artifact"),
    "edgekit.runtimes": ("build_runner", "export_artifact", "load_artifact", "cached_artifact"),
    "edgekit.runtimes.doctor": ("run_checks",),
    "edgekit.runtimes.onnx.export": ("cached_export", "parity"),
    "edgekit.runtimes.onnxruntime.runner": ("ORTRunner", "OPT_LEVELS", "compile_model", "max_supported_opset"),
    "edgekit.runtimes.llama_cpp": ("KV_CACHE_TYPES",),
    "edgekit.runtimes.pytorch.streaming": ("StreamingRunner", "stream_device_map", "stream_summary"),
    "edgekit.workflows.compare": ("compare", "summary_frame", "LatencySettings"),
    "edgekit.workflows.sweep": ("run_sweep",),
    "edgekit.workflows.tasks": ("TaskRun", "EdgekitLM", "evaluate_tasks", "load_tasks", "shipped_tasks"),
    "edgekit.measure.paired": ("paired_accuracy", "kl_flip_relation"),
    "edgekit.workflows.decide": ("decide",),
    "edgekit.workflows.canary": ("canary", "CanaryThresholds", "manifest_frame"),
    "edgekit.workflows.tuning": ("tune", "grid", "ort_factory", "torch_factory", "write_best"),
    "edgekit.workflows.kv_cache": ("kv_plan", "runtime_kv_bytes", "transformers_backends"),
    "edgekit.workflows.side_by_side": ("side_by_side",),
    "edgekit.serve.app": ("create_app", "serve_in_background"),
    "edgekit.serve.batching": ("batch_sweep", "generation_batcher", "largest_batch_within", "poisson_load"),
    "edgekit.serve.load_test": ("describe_knee", "load_sweep"),
    "edgekit.cli": ("main",),
}
_HOME = {name: module for module, names in _FACE.items() for name in names}
__all__ = ["__version__", *_HOME]


def __getattr__(name: str):
    if name in _HOME:
        value = getattr(importlib.import_module(_HOME[name]), name)
        globals()[name] = value  # looked up once
        return value
    raise AttributeError(f"module 'edgekit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))
