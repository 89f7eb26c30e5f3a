"""edgekit as an lm-evaluation-harness model: task accuracy of every variant of every runtime.

:class:`EdgekitLM` (registered in lm-eval as ``edgekit``) puts lm-eval's own Hugging Face backend
(``lm_eval.models.huggingface.HFLM``) over an edgekit Runner: the tokenization (context and
continuation encoded whole and split, trailing spaces moved to the continuation, BOS as lm-eval
adds it), the batching, the left truncation to the model's length, the selection of the
continuation's log-probabilities and ``is_greedy`` are lm-eval's code, not a copy of it; only the
forward pass (``_model_call``: the Runner's logits) and generation (``_model_generate``: the Runner's
greedy decoding until a stop sequence) are edgekit's. So a PyTorch variant, an ``onnx-*``, ``ov-*``
or ``gguf-*`` artifact are scored exactly as lm-eval scores a transformers model, and fp32 gives
lm-eval's ``hf`` answers item for item (tests/workflows/test_tasks.py).

It also records the token ids every request produced, per task and item (BOS and chat template
included), which :func:`edgekit.measure.paired.prompt_fingerprint` hashes so that two rows are paired only
when they saw the same prompts. :func:`evaluate_tasks` runs tasks through ``lm_eval.simple_evaluate``
and returns each task's per-item answers (:class:`edgekit.measure.paired.TaskAnswers`).

The tasks shipped in ``data/tasks/`` (``edgekit_lastword``, ``edgekit_nextline``) run offline;
standard tasks (hellaswag, arc_easy, ...) run where their data is reachable and are refused in one
line where it is not.

lm-eval's own command line finds models only in its built-in table (0.4.13 reads no entry points),
so ``lm_eval --model edgekit`` cannot see this one; ``python -m edgekit.workflows.tasks`` is that same
command line with this model registered and ``data/tasks`` on the include path::

    python -m edgekit.workflows.tasks --model edgekit \\
        --model_args model=smollm2-135m,variant=gguf-q4_0 --tasks edgekit_lastword --limit 100

``model_args``: ``model`` (a named model, folder or hub id), ``variant`` (options after a colon; write
``;`` between options, as commas separate lm-eval's arguments), ``max_length``, ``add_bos_token``,
``prefix_token_id``; ``--batch_size`` sets the rows of one forward pass (``auto``: 16).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterable

import torch
from lm_eval import simple_evaluate
from lm_eval.__main__ import cli_evaluate
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import configure_pad_token, resolve_max_length
from lm_eval.tasks import TaskManager

from edgekit.core.errors import InputError
from edgekit.core.paths import data_dir
from edgekit.core.progress import silenced
from edgekit.core.quiet import lm_eval_task_loading
from edgekit.measure.paired import TaskAnswers, paired_accuracy, prompt_fingerprint
from edgekit.memory.guard import admit
from edgekit.models.load import load_tokenizer, model_config, resolve_source
from edgekit.runtimes import build_runner
from edgekit.variants.registry import Variant

# lm-eval pads each batch to its longest prompt, and the shipped tasks' prompts run from 20 to 470 tokens: on a CPU the
# padding is compute spent for nothing. 4 scored the shipped tasks 25% faster than 16 on smollm2-135m (32 s against
# 43 s for 20 items each), with the same answers
DEFAULT_BATCH = 4
# the per-item metric that says right or wrong, by preference (loglikelihood and multiple choice: acc)
CORRECTNESS_METRICS = ("acc", "exact_match")


def tasks_dir():
    """The folder of the offline task definitions shipped with edgekit (lm-eval's include path)."""
    return data_dir() / "tasks"


@register_model("edgekit")
class EdgekitLM(HFLM):
    """lm-eval's HF backend over an edgekit Runner (built here through the registry, the guard first,
    or given as ``runner`` with its ``tokenizer``)."""

    def __init__(self, model: str = "default", variant: str = "fp32", batch_size: int | str = DEFAULT_BATCH,
                 max_length: int | None = None, add_bos_token: bool | None = None, prefix_token_id: int | None = None,
                 runner=None, **_lm_eval_defaults: Any) -> None:
        # HFLM.__init__ loads a transformers model; the Runner replaces it, so only the state the scoring
        # and generation methods read is set here (max_batch_size, device: lm-eval's defaults, unused).
        TemplateLM.__init__(self)
        self.edgekit_model = str(model)
        source = resolve_source(self.edgekit_model)
        if runner is None:
            parsed = Variant.parse(str(variant).replace(";", ","))
            admit(parsed, source)  # refused in one line before any weight is read
            runner = build_runner(parsed, source, load_tokenizer(self.edgekit_model))
        self.runner, self.edgekit_variant = runner, runner.name
        self.tokenizer = configure_pad_token(runner.tokenizer)
        self.backend = "causal"
        self.add_bos_token = add_bos_token
        self.custom_prefix_token_id = prefix_token_id
        self._max_length = int(max_length) if max_length else resolve_max_length(model_config(source), self.tokenizer)
        self.batch_size_per_gpu = DEFAULT_BATCH if batch_size in (None, "auto") else int(batch_size)
        self.batch_schedule, self.batch_sizes, self.max_batch_size = 1, {}, None
        self.logits_cache, self.truncation = True, False
        self.softmax_dtype = self.mixed_precision_dtype = None
        self._device = torch.device("cpu")  # the Runner takes and returns CPU tensors
        self.think_end_token, self.enable_thinking, self.chat_template_args = None, None, {}
        self.prompt_tokens: dict[str, dict[tuple[int, int], list[int]]] = {}  # task -> (doc, request) -> ids
        self._encoded: dict[tuple[str, str], list[int]] = {}

    # ------------------------------------------------------------------ the Runner in place of the model
    def _model_call(self, inps: torch.Tensor, attn_mask=None, labels=None) -> torch.Tensor:
        return self.runner.logits(inps)

    def _model_generate(self, context: torch.Tensor, max_length: int, stop: list[str],
                        attention_mask: torch.Tensor | None = None, **generation_kwargs) -> torch.Tensor:
        """Greedy decoding of each (left-padded) row until EOS, a stop sequence or ``max_length`` tokens;
        rows come back as HF's ``generate`` returns them (prompt, then new tokens, then padding)."""
        if generation_kwargs.get("do_sample") or generation_kwargs.get("temperature", 0.0):
            raise InputError("edgekit scores with greedy decoding only; drop do_sample / temperature from the "
                             "task's generation_kwargs")
        new = max_length - context.shape[1]
        mask = torch.ones_like(context) if attention_mask is None else attention_mask
        rows = []
        for row, keep in zip(context, mask.bool()):
            tokens: list[int] = []
            for token in self.runner.generate_stream(row[keep].unsqueeze(0).cpu(), new):
                tokens.append(int(token))
                if token == self.eot_token_id or any(s in self.tok_decode(tokens) for s in stop):
                    break
            rows.append(row.tolist() + tokens + [self.tokenizer.pad_token_id] * (new - len(tokens)))
        return torch.tensor(rows, dtype=torch.long)

    # ------------------------------------------------------------------ the token ids every item produced
    def _note(self, request, ids: list[int]) -> None:
        self.prompt_tokens.setdefault(request.task_name, {})[(request.doc_id, request.idx)] = list(ids)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        for request_str, context_enc, continuation_enc in requests:
            if request_str is not None:  # None: a window of loglikelihood_rolling
                # what the model sees, as HFLM truncates it on the left, and the last token it scores
                self._encoded[request_str] = (context_enc + continuation_enc)[-(self.max_length + 1):]
        return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        self._encoded = {}
        out = super().loglikelihood(requests, disable_tqdm=disable_tqdm or silenced())
        for request in requests:
            self._note(request, self._encoded[tuple(request.args)])
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        for request in requests:
            self._note(request, [self.prefix_token_id] + self.tok_encode(request.args[0]))
        return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm or silenced())

    def generate_until(self, requests, disable_tqdm: bool = False):
        for request in requests:
            self._note(request, self.tok_encode(request.args[0]))
        return super().generate_until(requests, disable_tqdm=disable_tqdm or silenced())

    def get_model_info(self) -> dict:
        return {"edgekit_model": self.edgekit_model, "edgekit_variant": self.edgekit_variant,
                "weight_bytes": self.runner.weight_bytes()}


def task_manager(names: Iterable[str] = ()) -> TaskManager:
    """lm-eval's task index with the shipped tasks on its include path: the shipped tasks' own (built in
    milliseconds) when every one of ``names`` is shipped, else the full index (built once a process: it reads
    every task YAML lm-eval ships, 6-8 s here). Hand it to ``simple_evaluate`` too, which otherwise builds the
    full one on each call."""
    names = set(names)
    return _task_index(shipped_only=bool(names) and names <= set(shipped_tasks()))


@lru_cache(maxsize=2)
def _task_index(shipped_only: bool) -> TaskManager:
    return TaskManager(include_path=str(tasks_dir()), include_defaults=not shipped_only)


def load_tasks(names: list[str], manager: TaskManager | None = None) -> list:
    """lm-eval's Task objects for ``names``; a task lm-eval does not know, or whose data cannot be read
    (a hub dataset offline), is refused in one line."""
    manager = manager or task_manager(names)
    tasks = []
    for name in names:
        if name not in manager.all_tasks and not name.endswith(".yaml"):
            raise InputError(f"unknown task {name!r}; shipped offline tasks: {', '.join(shipped_tasks())} "
                             "(`lm-eval ls tasks` lists lm-eval's)")
        try:
            with lm_eval_task_loading():
                tasks.extend(manager.load([name])["tasks"].values())
        except Exception as exc:  # datasets raises many kinds (ConnectionError, OSError, DatasetNotFoundError)
            first = (str(exc).strip().splitlines() or [""])[0][:160]
            raise InputError(f"task {name}: its data could not be read ({type(exc).__name__}: {first}); run it where "
                             f"the Hugging Face hub is reachable, or use a shipped task: "
                             f"{', '.join(shipped_tasks())}") from None
    return tasks


def shipped_tasks() -> list[str]:
    return sorted(p.stem for p in tasks_dir().glob("*.yaml"))


def evaluate_tasks(lm: EdgekitLM, names: list[str], limit: int | None = None) -> dict[str, TaskAnswers]:
    """Each task's per-item answers (right or wrong, in document order) and prompt fingerprint, scored by ``lm``."""
    tasks = load_tasks(names)
    lm.prompt_tokens = {}
    out = simple_evaluate(model=lm, tasks=tasks, limit=limit, log_samples=True, bootstrap_iters=0,
                          task_manager=task_manager(names))
    answers = {}
    for task, samples in out["samples"].items():
        by_doc = {s["doc_id"]: s for s in samples}  # one entry per filter; the tasks here have one
        if not by_doc:
            continue
        metric = next((m for m in CORRECTNESS_METRICS if m in next(iter(by_doc.values()))), None)
        if metric is None:
            raise InputError(f"task {task} reports no per-item accuracy ({', '.join(CORRECTNESS_METRICS)}); "
                             "choose a multiple-choice, last-word or exact-match task")
        doc_ids = tuple(sorted(by_doc))
        answers[task] = TaskAnswers(task, doc_ids, tuple(bool(by_doc[d][metric]) for d in doc_ids),
                                    prompt_fingerprint(lm.prompt_tokens.get(task, {})))
    return answers


@dataclass
class TaskRun:
    """Tasks a comparison scores on every variant, paired against the baseline's answers (kept here once
    the baseline, scored first, has them). ``limit``: the first N items of each task (None: all)."""

    names: tuple[str, ...]
    limit: int | None = None
    baseline: dict[str, TaskAnswers] = field(default_factory=dict)

    def settings(self) -> dict:
        return {"tasks": list(self.names), "task_limit": self.limit}

    def measure(self, runner, source: str, is_baseline: bool) -> dict:
        """``{"tasks": {task: per-task keys of paired_accuracy + task_correct, task_doc_ids}, "task_eval_s"}``
        for ``runner``; the baseline's answers are kept to pair the next rows against."""
        start = time.perf_counter()
        lm = EdgekitLM(model=source, runner=runner)
        answers = evaluate_tasks(lm, list(self.names), self.limit)
        if is_baseline:
            self.baseline = answers
        per_task = {}
        for task, mine in answers.items():
            base = self.baseline.get(task)
            paired = paired_accuracy(base, mine) if base is not None else {
                "task_accuracy": mine.accuracy, "prompt_fingerprint": mine.fingerprint,
                "task_items": len(mine.correct)}
            per_task[task] = {**paired, "task_correct": mine.correct_string(), "task_doc_ids": list(mine.doc_ids)}
        return {"tasks": per_task, "task_eval_s": time.perf_counter() - start}

    def answers_from(self, metrics: dict) -> dict[str, TaskAnswers]:
        """The answers a stored row holds (a resumed comparison's baseline)."""
        return {task: TaskAnswers(task, tuple(m["task_doc_ids"]), tuple(c == "1" for c in m["task_correct"]),
                                  m["prompt_fingerprint"]) for task, m in metrics.get("tasks", {}).items()}


def main(argv: list[str] | None = None) -> None:
    """lm-eval's command line with ``edgekit`` registered and the shipped tasks on the include path."""

    args = list(sys.argv[1:] if argv is None else argv)
    if "--include_path" not in args and any(a.startswith("--tasks") for a in args):
        args += ["--include_path", str(tasks_dir())]
    sys.argv = [sys.argv[0]] + args
    cli_evaluate()


if __name__ == "__main__":
    main()
