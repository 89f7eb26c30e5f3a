"""ONNX Runtime behind the Runner interface, and the compile step that prepares a model for it.

Follows the ONNX Runtime performance guides ("Graph optimizations", "Tune performance",
"I/O Binding", "Execution providers"): the graph is optimised offline at a chosen level
and saved as the model the artifact ships (:func:`compile_model`); a session is opened
with explicit thread settings on the requested execution providers, falling back to the
CPU with a visible warning when one is not installed; and during decoding the KV cache
stays in ONNX Runtime's own buffers (``io_binding=True``): each step's ``present.*``
outputs are fed back as the next step's ``past_key_values.*`` inputs as ``OrtValue``s
through ``run_with_ort_values``, never converted to numpy. (That is I/O binding without
the per-step ``IOBinding`` object, whose bind/get calls cost more than they save here.)

The model is the one optimum exports for ``text-generation-with-past``: inputs
``input_ids``, ``attention_mask``, ``position_ids`` and ``past_key_values.{i}.key|value``
``[batch, kv_heads, past, head_dim]``; outputs ``logits`` and ``present.{i}.key|value``.
"""
from __future__ import annotations

import warnings
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
import onnx.helper as h
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from edgekit.artifacts.manifest import Manifest, artifact_loader
from edgekit.core.errors import ArtifactError, InputError
from edgekit.memory.guard import admit_artifact
from edgekit.models.load import folder_tokenizer
from edgekit.models.sampling import Pick, choose_rows
from edgekit.runtimes.onnx.files import EXTERNAL_DATA_FILE, EXTERNAL_DATA_THRESHOLD, MODEL_FILE

OPT_LEVELS = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}


@lru_cache(maxsize=1)
def max_supported_opset() -> int:
    """The newest default-domain ONNX opset this onnxruntime accepts, probed with a one-node model."""

    def accepts(opset: int) -> bool:
        graph = h.make_graph([h.make_node("Identity", ["x"], ["y"])], "probe",
                             [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                             [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
        model = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])
        model.ir_version = min(model.ir_version, 10)
        try:
            ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            return True
        except Exception:  # onnxruntime raises its own Fail type for an unknown opset
            return False

    opset = 17
    while accepts(opset + 1):
        opset += 1
    return opset


def model_opset(model_path: str | Path) -> int:
    model = onnx.load(str(model_path), load_external_data=False)
    return max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def resolve_providers(requested: list[str] | tuple[str, ...] | str | None) -> list[str]:
    """The requested execution providers that are installed, CPU always last; warns for each missing one."""
    if isinstance(requested, str):
        requested = [requested]
    available = ort.get_available_providers()
    chosen = []
    for name in requested or ["CPUExecutionProvider"]:
        if name in available:
            chosen.append(name)
        else:
            warnings.warn(f"execution provider {name} is not available in this onnxruntime "
                          f"(available: {', '.join(available)}); falling back to CPUExecutionProvider",
                          RuntimeWarning, stacklevel=3)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def session_options(graph_optimization_level: str = "all", intra_op_threads: int | None = None) -> ort.SessionOptions:
    if graph_optimization_level not in OPT_LEVELS:
        raise InputError(f"graph_optimization_level={graph_optimization_level!r}; choose one of "
                         f"{', '.join(OPT_LEVELS)}")
    options = ort.SessionOptions()
    options.graph_optimization_level = OPT_LEVELS[graph_optimization_level]
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if intra_op_threads:
        options.intra_op_num_threads = int(intra_op_threads)
    options.log_severity_level = 3  # errors only; the saved-optimized-model notice is expected
    return options


def compile_model(source: str | Path, target: str | Path, graph_optimization_level: str = "all",
                  providers: list[str] | None = None) -> Path:
    """Optimise ``source`` for the given providers and save the optimised graph as ``target``.

    Weights go to ``model.onnx_data`` beside ``target`` when the model is larger than
    :data:`EXTERNAL_DATA_THRESHOLD`. At level ``all`` the saved graph holds fused CPU
    kernels, so it should be run with the providers it was compiled for.
    """
    source, target = Path(source), Path(target)
    options = session_options(graph_optimization_level)
    options.optimized_model_filepath = str(target)
    size = sum(p.stat().st_size for p in source.parent.glob(source.name + "*"))
    if size > EXTERNAL_DATA_THRESHOLD:
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", EXTERNAL_DATA_FILE)
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(str(source), options, providers=resolve_providers(providers))
    return target


def initializer_bytes(model_path: str | Path) -> int:
    """Bytes of the model's initializers (weights, scales, zero points) as stored in its files."""
    model = onnx.load(str(model_path), load_external_data=False)
    total = 0
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            total += int(dict((e.key, e.value) for e in tensor.external_data).get("length", 0))
        elif tensor.raw_data:
            total += len(tensor.raw_data)
        else:
            itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
            total += int(np.prod(tensor.dims, dtype=np.int64)) * itemsize
    return total


class ORTRunner:
    """A compiled ONNX causal LM (optimum's with-past export) on ONNX Runtime, as a Runner.

    Give it the :class:`~edgekit.artifacts.manifest.Manifest` that :func:`~edgekit.runtimes.load_artifact`
    verified (the usual way in), or a folder holding ``model.onnx`` and a tokenizer, used as is.
    """

    def __init__(self, manifest_or_folder: Manifest | str | Path, *, providers: list[str] | None = None,
                 intra_op_threads: int | None = None, graph_optimization_level: str = "all",
                 io_binding: bool = True) -> None:


        if isinstance(manifest_or_folder, Manifest):
            folder, self.name = manifest_or_folder.path, manifest_or_folder.variant
        else:
            folder = Path(manifest_or_folder)
            self.name = folder.name
        self.folder = Path(folder)
        self.model_path = self.folder / MODEL_FILE
        if not self.model_path.is_file():
            raise ArtifactError(f"{self.folder} has no {MODEL_FILE}; export the model with `edgekit export`")
        self.providers = resolve_providers(providers)
        self.io_binding = io_binding
        self.settings = {"providers": self.providers, "intra_op_threads": intra_op_threads,
                         "graph_optimization_level": graph_optimization_level, "io_binding": io_binding}
        self.session = ort.InferenceSession(str(self.model_path),
                                            session_options(graph_optimization_level, intra_op_threads),
                                            providers=self.providers)
        self.tokenizer = folder_tokenizer(self.folder)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.past_names = [n for n in inputs if n.startswith("past_key_values.")]
        self.present_names = ["present." + n[len("past_key_values."):] for n in self.past_names]
        shape = inputs[self.past_names[0]].shape  # [batch, kv_heads, past, head_dim]
        self.kv_heads, self.head_dim = int(shape[1]), int(shape[3])
        self.kv_dtype = np.float16 if "float16" in inputs[self.past_names[0]].type else np.float32
        self.has_position_ids = "position_ids" in inputs
        self._output_names = ["logits"] + self.present_names
        self._weight_bytes: int | None = None

    # ------------------------------------------------------------------ feeds
    def _empty_past(self, batch: int) -> dict[str, np.ndarray]:
        empty = np.zeros((batch, self.kv_heads, 0, self.head_dim), dtype=self.kv_dtype)
        return {name: empty for name in self.past_names}

    def _feeds(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray) -> dict[str, np.ndarray]:
        feeds = {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64)}
        if self.has_position_ids:
            feeds["position_ids"] = positions.astype(np.int64)
        return feeds

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        ids = input_ids.cpu().numpy()
        batch, seq = ids.shape
        feeds = self._feeds(ids, np.ones_like(ids), np.tile(np.arange(seq), (batch, 1)))
        feeds.update(self._empty_past(batch))
        (logits,) = self.session.run(["logits"], feeds)
        return torch.from_numpy(logits).float()

    # ------------------------------------------------------------------ decoding
    def _decode(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, max_new_tokens: int,
                picks: list[Pick | None] | None = None) -> Iterator[np.ndarray]:
        """Decoding of a (left-padded) batch, row ``i`` greedy or by ``picks[i]``; yields the next token
        of every row per step."""
        batch = ids.shape[0]
        past: dict[str, object] = self._empty_past(batch)
        for _ in range(max_new_tokens):
            feeds = self._feeds(ids, mask, positions)
            if self.io_binding:
                logits, past = self._step_bound(feeds, past)
            else:
                outputs = self.session.run(["logits"] + self.present_names, {**feeds, **past})
                logits, past = outputs[0], dict(zip(self.past_names, outputs[1:]))
            tokens = choose_rows(logits[:, -1], picks) if picks and any(picks) else logits[:, -1].argmax(-1)
            yield tokens
            ids = tokens[:, None]
            mask = np.concatenate([mask, np.ones((batch, 1), dtype=mask.dtype)], axis=1)
            positions = positions[:, -1:] + 1

    def _step_bound(self, feeds: dict[str, np.ndarray], past: dict[str, object]):
        """One step on OrtValues: each step's ``present`` tensors are fed back as the next step's
        ``past`` without leaving ONNX Runtime's buffers (the Python form of I/O binding)."""
        values = {name: ort.OrtValue.ortvalue_from_numpy(value) for name, value in feeds.items()}
        for name, value in past.items():
            values[name] = value if isinstance(value, ort.OrtValue) else ort.OrtValue.ortvalue_from_numpy(value)
        outputs = self.session.run_with_ort_values(self._output_names, values)
        return outputs[0].numpy(), dict(zip(self.past_names, outputs[1:]))

    def generate_stream(self, input_ids: torch.Tensor, max_new_tokens: int, pick: Pick | None = None) -> Iterator[int]:
        ids = input_ids.reshape(1, -1).cpu().numpy()
        positions = np.arange(ids.shape[1])[None, :]
        for tokens in self._decode(ids, np.ones_like(ids), positions, max_new_tokens, [pick]):
            yield int(tokens[0])

    def generate_batch(self, prompts: list[torch.Tensor], max_new_tokens: int,
                       picks: list[Pick | None] | None = None) -> list[list[int]]:
        """Decoding of several prompts at once, left-padded with an attention mask (row ``i`` greedy or by
        ``picks[i]``)."""
        if not prompts:
            return []
        rows = [p.reshape(-1).cpu().numpy() for p in prompts]
        if any(len(r) == 0 for r in rows):
            raise InputError("an empty prompt was given; every prompt needs at least one token")
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id or 0
        ids = np.full((len(rows), width), pad, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, width - len(row):] = row
            mask[i, width - len(row):] = 1
        positions = np.clip(mask.cumsum(axis=1) - 1, 0, None)
        out: list[list[int]] = [[] for _ in rows]
        for tokens in self._decode(ids, mask, positions, max_new_tokens, picks):
            for i, token in enumerate(tokens):
                out[i].append(int(token))
        return out

    def weight_bytes(self) -> int:
        if self._weight_bytes is None:
            self._weight_bytes = initializer_bytes(self.model_path)
        return self._weight_bytes

    def close(self) -> None:
        self.session = None


@artifact_loader("onnxruntime", max_opset=max_supported_opset)
def load_onnx_artifact(manifest: Manifest, **runtime_options) -> ORTRunner:
    """The Runner of a verified ONNX artifact: its recommended runtime settings, overridden by the caller's."""
    allowed = {"providers", "intra_op_threads", "graph_optimization_level", "io_binding"}
    recommended = {k: v for k, v in (manifest.data.get("runtime_settings") or {}).items() if k in allowed}
    unknown = set(runtime_options) - allowed
    if unknown:
        raise InputError(f"unknown ONNX Runtime option(s) {', '.join(sorted(unknown))}; use "
                         f"{', '.join(sorted(allowed))}")
    admit_artifact(manifest)
    return ORTRunner(manifest, **{**recommended, **runtime_options})


def self_test(rows: int = 8, width: int = 64) -> None:
    """The ONNX Runtime probe of :mod:`edgekit.runtimes.selftest`: an fp32 MatMul and an int8 MatMulInteger
    (the dynamic-int8 path) on a batch of rows, through MLAS's CPU kernels. Runs in a child process."""

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((width, width)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"]),
             helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
             helper.make_node("MatMulInteger", ["xq", "wq", "xz"], ["yq"])]
    graph = helper.make_graph(
        nodes, "edgekit-selftest", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, width]),
         helper.make_tensor_value_info("yq", TensorProto.INT32, [rows, width])],
        [numpy_helper.from_array(weight, "w"),
         numpy_helper.from_array(rng.integers(0, 255, (width, width)).astype(np.uint8), "wq")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((rows, width)).astype(np.float32)
    y, _ = session.run(None, {"x": x})
    if not np.allclose(y, x @ weight, atol=1e-3):
        raise SystemExit("ONNX Runtime's MatMul disagrees with numpy")
