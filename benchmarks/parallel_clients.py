"""Training a round's clients together (``federation.parallel_clients``), side by side.

For each model (the packaged MiniLM; a base-size BERT built from its config, random weights)
and batch size, on real rotten_tomatoes examples, LoRA r8:

- examples/s of K clients trained together, for each K: each local step one pass, and each
  step's clients grouped by batch width into passes (``federation.pass_cost`` as measured
  when a run starts, :func:`fedpet.runtime.parallel.measure_pass_cost`); against the same K
  clients trained one after another (today's sequential loop), and against one centralized
  large-batch loop over the same examples (batch K x batch);
- aten operators dispatched per training example in a steady one-pass step (torch profiler; a
  multi-tensor operator counts once): the proxy for a GPU's launch-bound time, which should
  fall about as 1/K; the ratio is to one client trained alone;
- at K = 10, the planned memory (:func:`fedpet.runtime.parallel.plan`) against the measured
  peak of a cohort step on the longest examples: resident memory on the CPU, allocated
  memory on CUDA.

Usage: python benchmarks/parallel_clients.py [--models minilm,base] [--ks 1,2,5,10,20]
       [--batches 8,16] [--steps 2] [--repeats 2] [--device auto]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import psutil
import torch

from fedpet.algorithms import PlainTraining
from fedpet.client import LocalTraining
from fedpet.cohort import Job
from fedpet.configure import build_config, resolve
from fedpet.experiment import Experiment, prepare
from fedpet.memory import map_large_blocks, own_peak_mb, reset_peak
from fedpet.model import model_path
from fedpet.runtime.parallel import fill, measure_pass_cost, plan, probe, worst_batch
from fedpet.state import extract, load_

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def base_model(folder: Path) -> Path:
    """A BERT-base-sized encoder (12 layers, hidden 768) with random weights."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(model_path("all-MiniLM-L6-v2"))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def experiment(model: str, batch: int, examples: int, device: str) -> Experiment:
    overrides = [
        ("model", model),
        ("method.name", "lora"),
        ("data.max_train_samples", examples),
        ("data.max_eval_samples", 8),
        ("federation.clients", 2),  # the benchmark's clients are its own slices of train
        ("data.max_length", 64),
        ("train.batch_size", batch),
        ("device", device),
    ]
    return prepare(resolve(build_config({"out": tempfile.mkdtemp()}, overrides)))


def cohort_jobs(exp: Experiment, k: int, batch: int, steps: int) -> list[Job]:
    start = extract(exp.params)
    size = batch * steps
    return [Job(np.arange(i * size, (i + 1) * size), start, PlainTraining(), i) for i in range(k)]


def timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    began = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - began


def sequential(exp: Experiment, jobs: list[Job]) -> None:
    """The clients one after another on the shared model, as the sequential loop trains them."""
    for job in jobs:
        load_(exp.params, job.start)
        LocalTraining(
            exp.model,
            exp.params,
            exp.head_names,
            exp.train,
            job.indices,
            exp.cfg.train,
            job.hook,
            job.seed,
            1,
        ).run()


def centralized(exp: Experiment, jobs: list[Job], batch: int) -> None:
    train = dataclasses.replace(exp.cfg.train, batch_size=batch * len(jobs), max_steps=None)
    indices = np.concatenate([j.indices for j in jobs])
    LocalTraining(
        exp.model, exp.params, exp.head_names, exp.train, indices, train, PlainTraining(), 0, 1
    ).run()


def aten_ops(fn) -> int:
    """Operators ``fn`` dispatches from Python: aten events not inside another aten event.

    A multi-tensor (foreach) operator counts once, as the one kernel it is on CUDA, not as
    the per-tensor loop the CPU runs it as.
    """
    from torch.profiler import profile

    with profile() as prof:
        fn()
    events = prof.events()
    return sum(
        1
        for e in events
        if e.name.startswith("aten::")
        and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))
    )


def cohort_steps(exp: Experiment, jobs: list[Job], steps: int) -> None:
    exp.train_cohort(jobs, train=dataclasses.replace(exp.cfg.train, max_steps=steps))


def alone_steps(exp: Experiment, jobs: list[Job], steps: int) -> None:
    train = dataclasses.replace(exp.cfg.train, max_steps=steps)
    sequential(dataclasses.replace(exp, cfg=dataclasses.replace(exp.cfg, train=train)), jobs)


def ops_per_example(train_for, examples: int) -> float:
    """Operators of one steady step (two steps' less one step's: setup and the first step's
    optimizer state counted out) per training example; ``train_for(steps)`` trains."""
    return (aten_ops(lambda: train_for(2)) - aten_ops(lambda: train_for(1))) / examples


def measured_peak_mb(exp: Experiment, k: int) -> float:
    """The peak of one cohort step of ``k`` clients on the longest examples, over before it.

    On the CPU, run in a process of its own (:func:`memory_process`) whose blocks of 1 MB
    and more are mapped on their own and returned when freed: resident memory then follows
    the tensors alive, not what the heap kept of freed ones.
    """
    longest = worst_batch(exp)
    if exp.device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated(exp.device)
        torch.cuda.reset_peak_memory_stats(exp.device)
        probe(exp, longest, k)
        return (torch.cuda.max_memory_allocated(exp.device) - before) / 2**20
    reset_peak()
    before = psutil.Process().memory_info().rss / 2**20
    probe(exp, longest, k)
    return own_peak_mb() - before


def memory_process(model: str, batch: int, examples: int, device: str, k: int) -> str:
    """``planned measured`` (MB) at ``k`` clients, from a fresh process (see above)."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import parallel_clients as b; "
        "b.print_memory(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], "
        "int(sys.argv[6]))"
    )
    here = str(Path(__file__).parent)
    args = [model, str(batch), str(examples), device, str(k)]
    said = subprocess.run(
        [sys.executable, "-c", code, here, *args], check=True, capture_output=True, text=True
    )
    return said.stdout.split()[-2] + " " + said.stdout.split()[-1]


def print_memory(model: str, batch: int, examples: int, device: str, k: int) -> None:
    map_large_blocks(1 << 20)
    exp = experiment(model, batch, examples, device)
    planned = plan(exp).bytes(k) / 2**20
    print(f"{planned:.1f} {measured_peak_mb(exp, k):.1f}")


def bench(
    name: str, model: str, batch: int, ks: list[int], steps: int, device: str, repeats: int
) -> None:
    pool = max(ks) * batch * max(steps, 2)  # two steps each for the operator count
    exp = experiment(model, batch, pool, device)
    exp.cfg = dataclasses.replace(
        exp.cfg, train=dataclasses.replace(exp.cfg.train, max_steps=steps, local_epochs=1)
    )
    warm = cohort_jobs(exp, 1, batch, 1)
    exp.train_cohort(warm, train=dataclasses.replace(exp.cfg.train, max_steps=1))
    cost = measure_pass_cost(exp, min(10, max(ks)))
    grouped = fill(exp, dataclasses.replace(exp.cfg.federation, pass_cost=str(cost)), "pass_cost")
    print(f"\n{name}, batch {batch}, LoRA r8, max_length 64, {steps} steps per client")
    print(f"measured pass cost (K = {min(10, max(ks))}): {cost} tokens")
    print(
        "   K | one by one ex/s | one pass ex/s | speed-up | width groups ex/s | speed-up | "
        "centralized ex/s | ops/ex  | ops ratio"
    )
    base_ops = ops_per_example(partial(alone_steps, exp, cohort_jobs(exp, 1, batch, 2)), batch)
    for k in ks:
        jobs = cohort_jobs(exp, k, batch, steps)
        examples = k * batch * steps
        contenders = [
            partial(sequential, exp, jobs),
            partial(exp.train_cohort, jobs),
            partial(grouped.train_cohort, jobs),
            partial(centralized, exp, jobs, batch),
        ]
        # interleaved, the best of ``repeats``: a machine whose speed drifts slows all alike
        rounds = [[timed(f) for f in contenders] for _ in range(repeats)]
        alone, together, groups, central = (examples / min(t) for t in zip(*rounds, strict=True))
        two = cohort_jobs(exp, k, batch, 2)
        ops = ops_per_example(partial(cohort_steps, exp, two), k * batch)
        print(
            f"  {k:2d} | {alone:15.1f} | {together:13.1f} | {together / alone:7.2f}x | "
            f"{groups:17.1f} | {groups / alone:7.2f}x | "
            f"{central:16.1f} | {ops:7.1f} | {ops / base_ops:6.3f}"
        )
    said = memory_process(model, batch, pool, device, 10)
    planned, peak = (float(x) for x in said.split())
    print(
        f"  memory at K = 10 (longest examples): planned {planned:.1f} MB, measured {peak:.1f} MB"
        f" (measured / planned {peak / planned:.2f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="minilm,base")
    parser.add_argument("--ks", default="1,2,5,10,20")
    parser.add_argument("--batches", default="8,16")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="timings per figure, best kept")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    map_large_blocks()  # as a run has it
    ks = [int(k) for k in args.ks.split(",")]
    models = {"minilm": str(model_path("all-MiniLM-L6-v2"))}
    if "base" in args.models:
        models["base"] = str(base_model(Path(tempfile.mkdtemp(prefix="bert-base-"))))
    print(f"torch threads: {torch.get_num_threads()}; device: {args.device}")
    for name in args.models.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            bench(name, models[name], batch, ks, args.steps, args.device, args.repeats)


if __name__ == "__main__":
    main()
