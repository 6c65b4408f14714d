"""A Flower app as a Flower user writes it: LoRA on MiniLM with transformers + peft, FedAvg.

The workload of ``benchmarks/runtime_compare.py``: 10 clients x 96 rotten_tomatoes
examples (iid), LoRA r=8 alpha=16 on query/value, one local epoch of batch 16 (AdamW, the
head at 3e-2, clipping at 1.0), all 10 clients in each of 2 rounds, max length 64, run by
``flwr.simulation.run_simulation`` (Ray, two 1-CPU actors on two cores, the model cached
per actor). Only the trainable tensors travel. The ServerApp evaluates the final model on
validation and test, as ``fedpet run`` does with ``federation.eval_every`` >= its rounds.
Only the examples are fedpet's (the same ones ``fedpet run`` trains on); tokenizing,
training, messages and aggregation are transformers', peft's and Flower's.

Usage: python benchmarks/flower_plain_app.py
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import functools
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation
from peft import LoraConfig, TaskType, get_peft_model
from torch import nn
from transformers import AutoModel, AutoTokenizer

from fedpet.configure import build_config
from fedpet.experiment import load_data
from fedpet.model import model_path

CLIENTS, ROUNDS, BATCH, LENGTH = 10, 2, 16, 64
PATH = model_path("all-MiniLM-L6-v2")


class Classifier(nn.Module):
    """MiniLM with LoRA, mean pooling (normalized, as the model is used) and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        encoder = AutoModel.from_pretrained(PATH, add_pooling_layer=False)
        lora = LoraConfig(r=8, lora_alpha=16, task_type=TaskType.FEATURE_EXTRACTION)
        self.encoder = get_peft_model(encoder, lora)
        self.dropout = nn.Dropout(0.1)
        self.head = nn.Linear(encoder.config.hidden_size, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
        logits: torch.Tensor = self.head(self.dropout(pooled))
        return logits

    def trainable(self) -> dict[str, torch.Tensor]:
        """The tensors that travel: LoRA's and the head's."""
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}


@functools.cache
def model() -> Classifier:
    """One model per Ray actor, built on first use."""
    return Classifier()


@functools.cache
def data() -> tuple[Any, list[np.ndarray]]:
    """The task and the clients' example indices (the examples ``fedpet run`` uses)."""
    cfg = build_config(
        {
            "data": {"max_train_samples": CLIENTS * 96, "partition": "iid"},
            "federation": {"clients": CLIENTS, "clients_per_round": CLIENTS},
        }
    )
    task, clients, _ = load_data(cfg)  # (no local test splits here)
    return task, clients


def batches(texts: list[str], labels: np.ndarray, shuffle: bool) -> list[dict[str, torch.Tensor]]:
    """Tokenized batches, each padded to its longest."""
    tokenizer = AutoTokenizer.from_pretrained(PATH)
    order = np.random.default_rng(0).permutation(len(texts)) if shuffle else np.arange(len(texts))
    out = []
    for i in range(0, len(order), BATCH):
        idx = order[i : i + BATCH]
        enc = tokenizer(
            [texts[j] for j in idx],
            truncation=True,
            max_length=LENGTH,
            padding=True,
            return_tensors="pt",
        )
        out.append({**enc, "labels": torch.as_tensor(labels[idx])})
    return out


client = ClientApp()


@client.train()
def train(msg: Message, context: Context) -> Message:
    """One local epoch from the received trainable tensors."""
    net = model()
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict(), strict=False)
    task, clients = data()
    part = clients[int(context.node_config["partition-id"])]
    texts, labels = [task.train.texts[i] for i in part], task.train.labels[part]
    trainable = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        [
            {"params": [p for n, p in trainable if not n.startswith("head.")], "lr": 2e-3},
            {"params": [p for n, p in trainable if n.startswith("head.")], "lr": 3e-2},
        ]
    )
    net.train()
    for batch in batches(texts, labels, shuffle=True):
        logits = net(batch["input_ids"], batch["attention_mask"])
        F.cross_entropy(logits, batch["labels"]).backward()
        nn.utils.clip_grad_norm_([p for _, p in trainable], 1.0)
        opt.step()
        opt.zero_grad()
    content = RecordDict(
        {
            "arrays": ArrayRecord(net.trainable()),
            "metrics": MetricRecord({"num-examples": len(part)}),
        }
    )
    return Message(content=content, reply_to=msg)


@torch.inference_mode()
def accuracy(net: Classifier, split: Any) -> float:
    """Accuracy on a split, in batches of 128."""
    net.eval()
    right = 0
    tokenizer = AutoTokenizer.from_pretrained(PATH)
    for i in range(0, len(split.texts), 128):
        enc = tokenizer(
            split.texts[i : i + 128],
            truncation=True,
            max_length=LENGTH,
            padding=True,
            return_tensors="pt",
        )
        preds = net(enc["input_ids"], enc["attention_mask"]).argmax(-1).numpy()
        right += int((preds == split.labels[i : i + 128]).sum())
    return right / len(split.texts)


server = ServerApp()


@server.main()
def main(grid: Grid, context: Context) -> None:
    """FedAvg over every client each round; the final model evaluated on validation and test."""
    net = Classifier()
    strategy = FedAvg(fraction_evaluate=0.0, min_train_nodes=CLIENTS, min_available_nodes=CLIENTS)
    result = strategy.start(grid, ArrayRecord(net.trainable()), num_rounds=ROUNDS)
    trained = result.arrays.to_torch_state_dict()
    if not trained:  # every client failed: there is nothing to evaluate
        print("no client trained")
        return
    net.load_state_dict(trained, strict=False)
    task, _ = data()
    print(f"val accuracy {accuracy(net, task.validation):.4f}")
    print(f"test accuracy {accuracy(net, task.test):.4f}")


if __name__ == "__main__":
    # Ray's actors unpickle the apps by module name: import them as this file's module
    here = os.path.dirname(os.path.abspath(__file__))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    sys.path.insert(0, here)
    import flower_plain_app as app

    run_simulation(
        server_app=app.server,
        client_app=app.client,
        num_supernodes=CLIENTS,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
