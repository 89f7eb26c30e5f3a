"""Calibration data and the hook driver every calibrated method shares (GPTQ, AWQ, sensitivity).

Calibration windows come from the calibration split (Macbeth: a whole work the eval text does
not contain), seeded. The driver runs the model over them block by block with forward hooks,
each block seeing the outputs of the blocks already quantized, as GPTQ (Frantar et al. 2022) and
AWQ (Lin et al. 2023) both do, and stops each pass as soon as the hooks have what they need.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch
from torch import nn

from edgekit.core.paths import BATCH_SIZE
from edgekit.core.progress import tqdm
from edgekit.models.layout import blocks_in_order, split_block


class _StopForward(Exception):
    pass


@contextmanager
def single_thread():
    """Run a loop of many tiny tensor ops on one thread: on a busy CPU, waking a second
    thread for each costs more than the op (GPTQ's column loop ran 25x faster so)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def _feed_until_stopped(model: nn.Module, calib: torch.Tensor, batch_size: int, handles: list) -> None:
    """Run the calibration batches through ``model``; a hook among ``handles`` ends each pass early
    by raising _StopForward once it has what it needs. The hooks are removed afterwards."""
    device = model.get_input_embeddings().weight.device  # a layer-wise model has nothing else loaded yet
    try:
        for start in range(0, len(calib), batch_size):
            try:
                model(input_ids=calib[start : start + batch_size].to(device), use_cache=False)
            except _StopForward:
                pass
    finally:
        for handle in handles:
            handle.remove()


def collect_inputs(model: nn.Module, names: list[str], calib: torch.Tensor, on_input,
                   batch_size: int = BATCH_SIZE) -> None:
    """Run ``calib`` through ``model`` and call ``on_input(name, x)`` with each named linear's input
    ``x`` ([tokens, in_features]); the forward stops after the last of their blocks."""
    order = list(blocks_in_order(model))
    last_block = max((split_block(n)[0] for n in names), key=order.index)
    handles = [model.get_submodule(n).register_forward_pre_hook(
        lambda mod, args, n=n: on_input(n, args[0].reshape(-1, args[0].shape[-1]).float())) for n in names]

    def stop(*_):
        raise _StopForward

    handles.append(model.get_submodule(last_block).register_forward_hook(stop))
    _feed_until_stopped(model, calib, batch_size, handles)


def hessians(model: nn.Module, names: list[str], calib: torch.Tensor) -> dict[str, torch.Tensor]:
    """GPTQ's ``H = 2 X^T X / n`` of each named linear's calibration inputs (one forward pass)."""
    sums, rows = {}, dict.fromkeys(names, 0)

    def add(name, x):
        x = x.cpu()
        if name not in sums:
            sums[name] = torch.zeros(x.shape[1], x.shape[1])
        sums[name].addmm_(x.T, x)
        rows[name] += x.shape[0]

    collect_inputs(model, names, calib, add)
    return {n: 2 * sums[n] / max(rows[n], 1) for n in names}


@torch.no_grad()
def quantize_blockwise(model: nn.Module, calib: torch.Tensor | None, quantize_block, desc: str,
                       progress: bool = True, batch_size: int = BATCH_SIZE,
                       load_block: Callable[[str], None] | None = None) -> nn.Module:
    """The sequential driver both papers use: the calibration batches' inputs to the first block are
    captured once, then each block in turn is calibrated on them (``quantize_block(block, names,
    feed)``; ``feed(names, on_input)`` replays the block with input hooks on those linears) and,
    quantized, produces the next block's inputs.

    ``load_block(block)``, where given, materializes a block's weights just before its turn: a model
    built on the meta device is so calibrated one layer at a time from its shards
    (:mod:`edgekit.quantizers.layerwise`). With ``calib=None`` nothing runs: each block is quantized in turn
    with ``feed=None``, for schemes that need no calibration (RTN)."""
    blocks = blocks_in_order(model)
    states = None if calib is None else _first_block_inputs(model, next(iter(blocks)), calib, batch_size)

    def run(module):
        outs = [module(hidden, **kwargs) for hidden, kwargs in states]
        return [(out[0] if isinstance(out, tuple) else out, kwargs) for out, (_, kwargs) in zip(outs, states)]

    for block, names in tqdm(blocks.items(), desc=desc, unit="block", disable=not progress, leave=False):
        if load_block is not None:
            load_block(block)
        if states is None:
            quantize_block(block, names, None)
            continue
        module = model.get_submodule(block)

        def feed(wanted, on_input):
            handles = [model.get_submodule(n).register_forward_pre_hook(
                lambda mod, args, n=n: on_input(n, args[0].reshape(-1, args[0].shape[-1]).float().cpu()))
                for n in wanted]
            try:
                run(module)
            finally:
                for h in handles:
                    h.remove()

        quantize_block(block, names, feed)
        states = run(module)
    return model


def _first_block_inputs(model: nn.Module, first_block: str, calib: torch.Tensor, batch_size: int) -> list:
    """(hidden states, the other keyword arguments) each calibration batch brings to the first block;
    the forward stops there, so no decoder block needs its weights yet."""
    states = []

    def grab(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        states.append((hidden, {k: v for k, v in kwargs.items() if k != "hidden_states"}))
        raise _StopForward

    handle = model.get_submodule(first_block).register_forward_pre_hook(grab, with_kwargs=True)
    _feed_until_stopped(model, calib, batch_size, [handle])
    return states
