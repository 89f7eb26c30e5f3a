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

Usage: python -m edgekit.tinymodel --out data/models/tiny-shakespeare-llama [--max-steps N]
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from edgekit.data import corpus_path


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
    p.add_argument("--max-steps", type=int, default=3000)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--patience", type=int, default=3)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

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
                                                 * 0.5 * (1 + math.cos(math.pi * min(s, args.max_steps) / args.max_steps)))
    gen = torch.Generator().manual_seed(args.seed)
    best, bad_evals, history, start = float("inf"), 0, [], time.time()
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
                best, bad_evals = val, 0
                model.save_pretrained(args.out, safe_serialization=True)
                tokenizer.save_pretrained(args.out)
            else:
                bad_evals += 1
                if bad_evals >= args.patience:
                    print(f"validation loss stopped improving; best {best:.4f}", flush=True)
                    break
    (args.out / "training_log.json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "parameters": n_params,
         "train_tokens": len(train_ids), "best_val_loss": best, "history": history}, indent=1))


if __name__ == "__main__":
    main()
