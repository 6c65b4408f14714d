"""Pretrain a small GPT-2 on the packaged corpora, for decoder runs on a machine without one.

No pretrained decoder LM can be had offline here, so this script makes one: a byte-level
BPE tokenizer and a GPT-2 trained from scratch, as a plain causal LM, on the training splits
of the packaged tasks (rotten_tomatoes, tweet_sentiment and bbc_news; their validation and
test splits are left out, so fedpet's held-out scores stay held out). The labels are never
read. Usage::

    .venv/bin/python scripts/pretrain_decoder.py OUT_DIR [--steps N | --minutes 12] [--layers 4]

``--steps`` makes the model depend only on the script's arguments (the same weights on any
machine); ``--minutes`` trains for a wall-clock budget instead.

It prints the training loss and the held-out perplexity on rotten_tomatoes' validation
texts, and saves the model and tokenizer to OUT_DIR for ``fedpet run --model OUT_DIR``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from fedpet.data.packaged import load_bbc_news, load_rotten_tomatoes, load_tweet_sentiment

EOS = "<|endoftext|>"


def corpora() -> tuple[list[str], list[str]]:
    """Training texts of the packaged tasks, and rotten_tomatoes' validation texts."""
    reviews = load_rotten_tomatoes(0)
    texts = [*reviews.train.texts, *load_tweet_sentiment(0).train.texts]
    texts += load_bbc_news(0).train.texts
    return texts, reviews.validation.texts


def train_tokenizer(texts: list[str], vocab: int) -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE tokenizer with one end-of-text token."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=EOS, eos_token=EOS)


def blocks(tokenizer: PreTrainedTokenizerFast, texts: list[str], size: int) -> torch.Tensor:
    """Every text's tokens, each followed by the end-of-text token, cut into blocks."""
    ids: list[int] = []
    for row in tokenizer(texts)["input_ids"]:
        ids += [*row, tokenizer.eos_token_id]
    n = len(ids) // size * size
    return torch.tensor(ids[:n]).view(-1, size)


@torch.no_grad()
def perplexity(model: GPT2LMHeadModel, data: torch.Tensor) -> float:
    """exp(mean next-token loss) over ``data``'s blocks."""
    model.eval()
    losses = [float(model(input_ids=b, labels=b).loss) for b in data.split(64)]
    model.train()
    return math.exp(sum(losses) / len(losses))


def main() -> None:
    """Train the tokenizer, then the model for ``--steps`` (or ``--minutes``); save both."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--minutes", type=float, default=12.0)
    parser.add_argument("--steps", type=int, default=None, help="a fixed number of steps")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    torch.manual_seed(0)
    texts, held_out = corpora()
    tokenizer = train_tokenizer(texts, args.vocab)
    data, val = blocks(tokenizer, texts, args.block), blocks(tokenizer, held_out, args.block)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=256,
        n_embd=args.hidden,
        n_layer=args.layers,
        n_head=args.hidden // 64,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = GPT2LMHeadModel(config)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"{len(texts):,} texts, {data.numel():,} tokens in {len(data):,} blocks; {params:,} params"
    )
    print(f"step 0: held-out perplexity {perplexity(model, val):.1f}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    start, deadline = time.monotonic(), time.monotonic() + 60 * args.minutes
    step, warmup = 0, 100

    def progress() -> float:  # the share of the budget used: steps, or else time
        if args.steps is not None:
            return step / args.steps
        return (time.monotonic() - start) / (deadline - start)

    while progress() < 1:
        for idx in torch.randperm(len(data)).split(args.batch):
            elapsed = progress()
            if elapsed >= 1:
                break
            scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * elapsed))
            for group in optimizer.param_groups:
                group["lr"] = args.lr * scale
            batch = data[idx]
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % 200 == 0:
                print(f"step {step}: loss {loss.item():.3f} ({time.monotonic() - start:.0f} s)")
    print(f"step {step}: held-out perplexity {perplexity(model, val):.1f}")
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    print(f"saved to {args.out} after {time.monotonic() - start:.0f} s")


if __name__ == "__main__":
    main()
