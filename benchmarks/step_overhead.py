"""fedpet's local training step against a plain transformers + peft loop, per precision.

Both train the same model and method (the encoder, LoRA r=8 alpha=16 on query/value
through peft, mean pooling, a linear head; AdamW, the head at its own rate, clipping at
1.0) over the same batches (fedpet's default length-grouped ones): fedpet through
:class:`fedpet.client.LocalTraining` (it forms each batch from token ids as it goes), the
plain loop over the same batches padded beforehand, as a transformers user writes it.
Epochs of the two alternate (which goes first alternates too) after one warm-up epoch
each; the figure is each one's median seconds per step, and the ratio fedpet / plain.
Target: ratio <= 1.05 in every precision.

``--model minilm`` (default) is the packaged all-MiniLM-L6-v2 on rotten_tomatoes;
``--model base`` a BERT-base-sized encoder (12 layers, hidden 768: RoBERTa-base's size)
with random weights built from a config, on random token ids of ``--length`` tokens.

Usage: python benchmarks/step_overhead.py [--precision fp32,bf16] [--device cpu]
       [--model minilm|base] [--batch-size 16] [--length 0] [--steps 40] [--repeats 5]
       [--attention eager|sdpa]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import torch.nn.functional as F
from peft import LoraConfig, TaskType, get_peft_model
from torch import nn
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel
from transformers.utils import logging as hf_logging

from fedpet.algorithms import PlainTraining
from fedpet.client import LocalTraining
from fedpet.configure import build_config, resolve
from fedpet.data.batching import Encoded, collate, length_grouped_batches, shuffled_batches
from fedpet.devices import autocast
from fedpet.experiment import Experiment, prepare
from fedpet.model import model_path


def base_sized_model(root: Path) -> str:
    """A BERT-base-sized encoder with random weights and MiniLM's tokenizer, saved in root."""
    tokenizer = AutoTokenizer.from_pretrained(model_path("all-MiniLM-L6-v2"))
    config = BertConfig(vocab_size=tokenizer.vocab_size, max_position_embeddings=512)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(root)
    tokenizer.save_pretrained(root)
    return str(root)


def synthetic(n: int, length: int, vocab: int) -> Encoded:
    """``n`` examples of ``length`` random token ids, two random labels."""
    rng = np.random.default_rng(0)
    ids = [rng.integers(1000, vocab, length).astype(np.int32) for _ in range(n)]
    return Encoded(ids, rng.integers(0, 2, n), 0, None)


class Plain(nn.Module):
    """What a transformers + peft user writes: the encoder with LoRA, mean pooling, a head."""

    def __init__(self, path: str, num_labels: int, normalize: bool, attention: str | None) -> None:
        super().__init__()
        self.normalize = normalize
        kwargs = {} if attention is None else {"attn_implementation": attention}
        encoder = AutoModel.from_pretrained(path, add_pooling_layer=False, **kwargs)
        lora = LoraConfig(r=8, lora_alpha=16, task_type=TaskType.FEATURE_EXTRACTION)
        self.encoder = get_peft_model(encoder, lora)
        self.head = nn.Linear(encoder.config.hidden_size, num_labels)
        self.dropout = nn.Dropout(0.1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        if self.normalize:
            pooled = F.normalize(pooled, dim=-1)
        logits: torch.Tensor = self.head(self.dropout(pooled))
        return logits


def plain_epoch(
    model: Plain, batches: list[dict[str, torch.Tensor]], opt: torch.optim.Optimizer, precision: str
) -> None:
    """The plain loop: forward, loss, backward, clip, step."""
    device = next(model.parameters()).device
    model.train()
    for batch in batches:
        with autocast(device, precision):
            logits = model(batch["input_ids"], batch["attention_mask"])
            loss = F.cross_entropy(logits, batch["labels"])
        loss.backward()
        nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)


def timed(fn: object, device: torch.device) -> float:
    """Seconds ``fn()`` takes, the device synchronized at both ends."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def setup(args: argparse.Namespace, precision: str, model: str) -> Experiment:
    """fedpet's experiment on ``model`` at ``precision``, on enough examples to time."""
    overrides = {
        "model": model,
        "device": args.device,
        "train.precision": precision,
        "train.batch_size": args.batch_size,
        "data.max_train_samples": max(64, args.steps * args.batch_size),
        "data.max_eval_samples": 64,
        "federation.clients": 1,
        "data.max_length": max(64, args.length),
    }
    return prepare(resolve(build_config({}, list(overrides.items()))), attention=args.attention)


def compare(args: argparse.Namespace, precision: str, model: str) -> tuple[float, float]:
    """Median seconds per step of fedpet and of the plain loop at ``precision``."""
    exp = setup(args, precision, model)
    n = args.steps * args.batch_size
    if args.length:
        data = synthetic(n, args.length, AutoTokenizer.from_pretrained(model).vocab_size)
    else:
        data = exp.train
    indices = np.arange(min(n, len(data)))
    plain = Plain(model_path(model), exp.task.num_labels, exp.model.normalize, args.attention)
    plain.to(exp.device)
    trainable = [(name, p) for name, p in plain.named_parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        [
            {"params": [p for name, p in trainable if not name.startswith("head.")], "lr": 2e-3},
            {"params": [p for name, p in trainable if name.startswith("head.")], "lr": 3e-2},
        ]
    )
    session = LocalTraining(
        exp.model, exp.params, exp.head_names, data, indices, exp.cfg.train, PlainTraining(),
        seed=0, epochs=args.repeats + 1,
    )  # fmt: skip
    rng = np.random.default_rng(0)  # the batches fedpet draws, epoch by epoch
    ours, theirs = [], []
    for repeat in range(args.repeats + 1):
        if exp.cfg.train.group_by_length:
            order = length_grouped_batches(indices, data.lengths, args.batch_size, rng)
        else:
            order = shuffled_batches(indices, args.batch_size, rng)
        batches = [collate(data, idx, exp.device) for idx in order]
        runs = [session.run_epoch, functools.partial(plain_epoch, plain, batches, opt, precision)]
        if repeat % 2:
            b, a = (timed(fn, exp.device) for fn in reversed(runs))
        else:
            a, b = (timed(fn, exp.device) for fn in runs)
        if repeat:  # the first of each is a warm-up
            ours.append(a / len(order))
            theirs.append(b / len(order))
    return statistics.median(ours), statistics.median(theirs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="fp32,bf16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="minilm", choices=("minilm", "base"))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--length", type=int, default=0, help="random ids of this length")
    parser.add_argument("--steps", type=int, default=40, help="steps per timed epoch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--attention", default=None, help="eager or sdpa (default: sdpa)")
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as tmp:
        model = "all-MiniLM-L6-v2" if args.model == "minilm" else base_sized_model(Path(tmp))
        print(
            f"model {args.model}, device {args.device}, batch {args.batch_size}, "
            f"length {args.length or 'rotten_tomatoes (<= 64)'}, {args.steps} steps x "
            f"{args.repeats} epochs, torch {torch.__version__}, {torch.get_num_threads()} threads"
        )
        print("precision   fedpet ms/step   plain ms/step   ratio")
        worst = 0.0
        for precision in args.precision.split(","):
            ours, theirs = compare(args, precision, model)
            worst = max(worst, ours / theirs)
            print(
                f"{precision:9s}   {1e3 * ours:14.1f}   {1e3 * theirs:13.1f}   {ours / theirs:5.3f}"
            )
    print(f"worst ratio {worst:.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
