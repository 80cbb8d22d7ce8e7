#!/usr/bin/env bash
# GPU throughput and MFU of the bert_cls and gpt_clm recipes, BERT-base and GPT-2 sized, bf16. One
# prepared run for a lent GPU machine, under 8 min. benchmarks/gpu_throughput.py writes synthetic
# assets first (random-weight models from BertConfig/GPT2Config defaults, tokenizers trained on
# made-up text of varied length, a CSV and a .txt corpus: no Hub), then trains each model through
# its recipe's own build path (recipes/<name>/run.py build(): its collator, length-bucketed sampler,
# callbacks, TrainingArguments defaults) and through a plain PyTorch loop on the same batches, and
# reports samples/s, real and padded tokens/s, padding efficiency, TFLOP/s, MFU, peak memory and
# recipe/raw per model. Its CPU smoke test (--smoke) runs in the test suite: tests/test_gpu_benchmark.py.
#
#   bash benchmarks/gpu.sh                       # figures in $OUT/gpu.json (else outputs/bench/gpu.json)
#   bash benchmarks/gpu.sh --peak_tflops 312     # extra flags go to benchmarks/gpu_throughput.py
#
# Python: reuses .venv when it already imports torch, transformers, datasets, accelerate, tokenizers; else
# builds .venv on top of the machine's own torch (--system-site-packages) and `pip install -e .`;
# torch comes from the package registry only when the machine has none. Everything it prints also
# goes to gpu.log beside gpu.json.
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
RESULTS="${OUT:-outputs/bench}"
mkdir -p "$RESULTS"
LOG="$RESULTS/gpu.log"
exec > >(tee -a "$LOG") 2>&1
START=$(date +%s)
echo "== gpu.sh $(date -u +%FT%TZ) in $(pwd)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "(no nvidia-smi)"

CHECK='import torch, transformers, datasets, accelerate, tokenizers; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "transformers", transformers.__version__)'
PY=.venv/bin/python
if ! { [ -x "$PY" ] && "$PY" -c "$CHECK"; }; then
  echo "== preparing .venv"
  SYSPY=$(command -v python3 || command -v python)
  if [ -z "$SYSPY" ]; then echo "no python3 on this machine"; exit 2; fi
  if [ ! -x "$PY" ]; then
    if "$SYSPY" -c "import torch" 2>/dev/null; then
      "$SYSPY" -m venv --system-site-packages .venv   # reuse the machine's CUDA torch
    else
      "$SYSPY" -m venv .venv
    fi
  fi
  # Offline first: the project alone when its dependencies are already importable.
  if "$PY" -c "$CHECK" 2>/dev/null; then
    timeout 120 "$PY" -m pip install --quiet --no-deps -e . || true
  else
    timeout 420 "$PY" -m pip install --quiet -e . || echo "pip install -e . failed (no registry?)"
  fi
  if ! "$PY" -c "$CHECK"; then
    echo "cannot get torch, transformers, datasets, accelerate, tokenizers into .venv; nothing measured"
    exit 3
  fi
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "torch sees no CUDA device; run 'python benchmarks/gpu_throughput.py --smoke' for a CPU check"
  exit 4
fi

# What is left of the 8 minutes goes to the measurement (at least 3 minutes).
LEFT=$(( 480 - ($(date +%s) - START) ))
[ "$LEFT" -lt 180 ] && LEFT=180
echo "== measuring (time limit ${LEFT}s)"
timeout "$LEFT" "$PY" benchmarks/gpu_throughput.py --out "$RESULTS/gpu.json" "$@"
CODE=$?
[ "$CODE" -eq 124 ] && echo "gpu_throughput.py ran past ${LEFT}s; lower --steps or the batch sizes"
echo "== done in $(( $(date +%s) - START ))s, exit $CODE; figures: $RESULTS/gpu.json, log: $LOG"
exit "$CODE"
