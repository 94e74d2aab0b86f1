#!/usr/bin/env bash
# The GPU check, one script (at most ~8 minutes on one GPU): the CUDA tests, then in fp32 and in bf16
#   - PTB medium (2 x 650): seconds per epoch and validation perplexity after the epochs that fit a budget,
#   - the demo translation preset: training target tokens/s and steps/s,
#   - beam-5 decoding of test_2016_flickr with seq2seq-translate: sentences/s and BLEU;
# then the roofline (benchmarks/roofline.py on the device): each workload's step against its GEMM-bound ceiling.
#
#   bash benchmarks/gpu_check.sh                 # on a GPU machine
#   bash benchmarks/gpu_check.sh --device cpu    # the same steps, small budgets, on a CPU (exercises the code)
#
# PTB is read from $PTB_DIR (default ../shared/data/ptb); without it that part is skipped, and says so.
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda
[ "${1:-}" = "--device" ] && DEVICE="${2:-cuda}"
PTB_DIR="${PTB_DIR:-../shared/data/ptb}"
OUT="${OUT_DIR:-runs/gpu_check}"
mkdir -p "$OUT"
if [ "$DEVICE" = "cpu" ]; then
    PTB_BUDGET=20; PTB_STEPS=(--max-steps 40); DEMO_STEPS=(--max-steps 30); export ACCELERATE_USE_CPU=true
    ROOFLINE=(--steps 2 --workloads ptb-small decode)
else
    PTB_BUDGET=100; PTB_STEPS=(); DEMO_STEPS=(--epochs 3)
    ROOFLINE=(--steps 10 --workloads ptb-small ptb-medium demo timit decode)
fi
PRECISIONS=(no bf16)
if [ "$DEVICE" = "cpu" ] && ! python -c "import torch, sys; sys.exit(0 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else 1)"; then
    PRECISIONS=(no); echo "this CPU has no bf16 instructions: fp32 only"
fi
python -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU ' + torch.backends.cpu.get_cpu_capability()); print(__import__('datetime').date.today())"

echo "== CUDA tests (skipped without a GPU) and their CPU twins"
python -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tail -3

elapsed() { python -c "import time, sys; print(f'{time.time() - float(sys.argv[1]):.1f}')" "$1"; }
for precision in "${PRECISIONS[@]}"; do
    name=$([ "$precision" = no ] && echo fp32 || echo "$precision")
    rm -rf "$OUT/ptb-$name"
    if [ -d "$PTB_DIR" ]; then
        python recipes/ptb_lm.py --preset medium --data-dir "$PTB_DIR" --output-dir "$OUT/ptb-$name" --mixed-precision "$precision" \
            --time-budget "$PTB_BUDGET" "${PTB_STEPS[@]}" > "$OUT/ptb-$name.log" 2>&1 || { tail -3 "$OUT/ptb-$name.log"; }
        python - "$OUT/ptb-$name/results.json" "$name" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); h = r["epochs"]
seconds = r["train_time_s"] / max(1, len(h))
print(f"PTB medium {sys.argv[2]}: {len(h)} epoch(s) ({r['steps']} steps), {seconds:.1f} s/epoch of training, {h[-1]['words_per_sec']:.0f} words/s, "
      f"valid ppl {h[-1]['valid_ppl']:.2f} after epoch {h[-1]['epoch']}")
PY
    else
        echo "PTB medium $name: skipped ($PTB_DIR not found; set PTB_DIR)"
    fi
    rm -rf "$OUT/demo-$name"
    python recipes/wmt14_enfr.py --preset demo --output-dir "$OUT/demo-$name" --mixed-precision "$precision" \
        "${DEMO_STEPS[@]}" > "$OUT/demo-$name.log" 2>&1 || { tail -3 "$OUT/demo-$name.log"; continue; }
    python - "$OUT/demo-$name/results.json" "$name" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"demo translation training {sys.argv[2]}: {r['dev'][-1]['train_tokens_per_sec']:.0f} target tokens/s, "
      f"{r['steps'] / r['train_time_s']:.2f} steps/s ({r['steps']} steps); recipe test BLEU {r['bleu']:.2f}")
PY
    dtype=$([ "$precision" = no ] && echo fp32 || echo "$precision")
    gunzip -c data/multi30k/test_2016_flickr.en.gz > "$OUT/test.en"; gunzip -c data/multi30k/test_2016_flickr.fr.gz > "$OUT/test.fr"
    started=$(python -c "import time; print(time.time())")
    seq2seq-translate --model "$OUT/demo-$name/model" --input "$OUT/test.en" --output "$OUT/test-$name.hyp" --beam-size 5 \
        --device "$DEVICE" --dtype "$dtype" --results-json "$OUT/decode-$name.json" --ref "$OUT/test.fr" 2> "$OUT/decode-$name.log" \
        || { tail -3 "$OUT/decode-$name.log"; continue; }
    seconds=$(elapsed "$started")
    python - "$OUT/decode-$name.json" "$name" "$seconds" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); seconds = float(sys.argv[3])
print(f"beam-5 decoding {sys.argv[2]} on {r['device']} ({r['dtype']}): {r['sentences']} sentences in {seconds:.1f} s wall "
      f"(model load included) = {r['sentences'] / seconds:.1f} sentences/s, BLEU {r['bleu']:.2f}")
PY
done

echo "== roofline on $DEVICE (decode: the fp32 demo model trained above)"
[ "${#PRECISIONS[@]}" = 1 ] && ROOFLINE+=(--no-bf16)
python benchmarks/roofline.py --device "$DEVICE" "${ROOFLINE[@]}" --model "$OUT/demo-fp32/model" 2>&1 | grep -v "^USDT"
