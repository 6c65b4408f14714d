#!/usr/bin/env bash
# The checks that need a CUDA device, as one call of a few minutes (GPU time is scarce):
#   1. the GPU-marked tests (training, fp16 and bf16 autocast and resume on CUDA);
#   2. fedpet's step against a plain transformers + peft loop on a BERT-base-sized encoder
#      (RoBERTa-base's size, random weights from a config), batch 32, length 128, per precision;
#   3. peak GPU memory of a run with 10 clients against one with 1,000 (10 sampled a round);
#   4. QLoRA: a tiny Llama's LoRA round on 4-bit base weights (needs bitsandbytes; the GPU
#      tests of step 1 include it, this names it);
#   5. a round's clients trained together (federation.parallel_clients) on CUDA: examples/s
#      (one pass a step, and width groups) and operators per example at K = 1..20 against
#      one by one and a centralized loop, and planned against measured memory at K = 10;
#      then 10 vs 1,000 clients at K = 10.
# Without CUDA it says so in one line and exits 0. Budget: under 8 minutes on one H200.
#
# Python: $PYTHON, else .venv/bin/python, else python3. On a machine without fedpet's
# environment, put fedpet's dependencies on PYTHONPATH first (e.g. carried wheels installed
# with pip --target) and run from the repository root: src/ is added to PYTHONPATH here.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

if ! "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    echo "gpu-check: no CUDA device here (torch sees none): nothing to check"
    exit 0
fi
"$PYTHON" -c 'import torch; print("gpu-check:", torch.cuda.get_device_name(0), "torch", torch.__version__)'
start=$SECONDS

echo "== 1. GPU-marked tests"
"$PYTHON" -m pytest -q -m gpu -p no:cacheprovider tests

echo "== 2. step time vs a plain loop (BERT-base-sized, batch 32, length 128)"
"$PYTHON" benchmarks/step_overhead.py --device cuda --model base --batch-size 32 --length 128 \
    --steps 30 --repeats 3 --precision fp32,bf16,fp16

echo "== 3. peak GPU memory, 10 vs 1,000 clients"
"$PYTHON" benchmarks/sim_overhead.py --parts b --rounds 2 --device cuda

echo "== 4. QLoRA (4-bit base weights, bitsandbytes)"
"$PYTHON" -m pytest -q -m gpu -p no:cacheprovider -rs tests/generative -k qlora

echo "== 5. clients trained together (parallel_clients), MiniLM and BERT-base-sized"
"$PYTHON" benchmarks/parallel_clients.py --device cuda --models minilm,base --steps 2
"$PYTHON" benchmarks/sim_overhead.py --parts b --rounds 2 --device cuda --parallel 10

echo "gpu-check: done in $((SECONDS - start)) s"
