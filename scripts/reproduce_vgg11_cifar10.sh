#!/usr/bin/env bash
# Reproduce NeuralScale's VGG11 / CIFAR-10 experiment (paper Table 1, Figures 4 and 5) with pyns.
#
#   scripts/reproduce_vgg11_cifar10.sh CIFAR_ROOT [OUT_DIR]
#
# CIFAR_ROOT holds cifar-10-batches-py/ (the python version from https://www.cs.toronto.edu/~kriz/cifar.html;
# nothing is downloaded). OUT_DIR defaults to runs/vgg11-cifar10.
#
# The paper's settings (SPEC §5), all pyns defaults:
#   1. architecture descent: 15 iterations of prune -> fit -> generate at the size of the default VGG11
#      (pruning: 10 warm-up epochs at lr 0.1, then lr 0.01 / 1.5 every 10 epochs, batch 256, 10 units
#      removed every 50 minibatches until 95% are gone);
#   2. a sweep at width ratios 0.25 / 0.75 / 2 (0.58M / 5.20M / 36.89M parameters) of uniform scaling,
#      MorphNet (Taylor-FO, from the descent's first iteration), NeuralScale (its final profile) and
#      Li et al. (L1 pruning of the trained full VGG11 + 40 epochs of fine-tuning at lr 0.001), 5 seeds,
#      each trained 300 epochs (SGD lr 0.1, momentum 0.5, wd 5e-4, batch 128, lr x0.1 at 100/200/250).
# Results: OUT_DIR/sweep/table.md and table.csv (Table 1: params, latency, accuracy mean ± std; best over
# epochs as the paper reports, and final) and OUT_DIR/sweep/fig4_*.png, fig5_*.png (Figures 4 and 5).
#
# Every step is resumable: run the script again after an interruption and finished work is skipped.
#
# Environment knobs:
#   SHORT=1          a shortened run to measure time and check the set-up: 2 descent iterations with
#                    1 warm-up and 1 pruning epoch, 1 seed, 1 training epoch (the numbers mean nothing)
#   DEVICE=cuda      where to train (default: auto, the GPU when there is one)
#   SEEDS, ITERATIONS, EPOCHS       override the paper's 5, 15 and 300
#   DESCENT_ARGS, SWEEP_ARGS        extra options for `pyns descent` / `pyns sweep` (e.g. SWEEP_ARGS="--amp")
#   EXECUTOR=ray     run the sweep's cells as Ray tasks (RAY_ADDRESS=auto to join a running cluster)
#   PYNS             the pyns command (default: pyns)
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 || "$1" == "-h" || "$1" == "--help" ]]; then
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
CIFAR_ROOT=$1
OUT=${2:-runs/vgg11-cifar10}
PYNS=${PYNS:-pyns}
DEVICE=${DEVICE:-auto}

if [[ ! -f "$CIFAR_ROOT/cifar-10-batches-py/data_batch_1" && ! -f "$CIFAR_ROOT/data_batch_1" ]]; then
    echo "error: $CIFAR_ROOT does not hold CIFAR-10 (expected $CIFAR_ROOT/cifar-10-batches-py/data_batch_1)" >&2
    exit 2
fi

if [[ "${SHORT:-0}" == "1" ]]; then
    SEEDS=${SEEDS:-1}
    ITERATIONS=${ITERATIONS:-2}
    EPOCHS=${EPOCHS:-1}
    LI_EPOCHS=${LI_EPOCHS:-1}
    DESCENT_ARGS="--warmup 1 --epochs 1 ${DESCENT_ARGS:-}"
    OUT="$OUT-short"
else
    SEEDS=${SEEDS:-5}
    ITERATIONS=${ITERATIONS:-15}
    EPOCHS=${EPOCHS:-300}
    LI_EPOCHS=${LI_EPOCHS:-40}
fi
mkdir -p "$OUT"

echo "== VGG11 on CIFAR-10: default network and the paper's budgets"
for ratio in 1 0.25 0.75 2; do
    echo "-- width ratio $ratio"
    "$PYNS" count vgg11 --ratio "$ratio" --no-layers | head -2
done

echo "== architecture descent: $ITERATIONS iterations -> $OUT/descent"
resume=()
[[ -f "$OUT/descent/config.json" ]] && resume=(--resume)
started=$(date +%s)
# shellcheck disable=SC2086  # DESCENT_ARGS is a list of options
"$PYNS" descent vgg11 --data cifar10 --root "$CIFAR_ROOT" --out "$OUT/descent" --iterations "$ITERATIONS" \
    --device "$DEVICE" "${resume[@]}" ${DESCENT_ARGS:-}
descent_s=$(( $(date +%s) - started ))
echo "descent: ${descent_s}s in all, about $(( descent_s / ITERATIONS ))s per iteration"

echo "== sweep: ratios 0.25/0.75/2, $SEEDS seed(s), $EPOCHS epochs -> $OUT/sweep"
executor=(--executor "${EXECUTOR:-serial}")
[[ -n "${RAY_ADDRESS:-}" ]] && executor+=(--ray-address "$RAY_ADDRESS")
started=$(date +%s)
# shellcheck disable=SC2086  # SWEEP_ARGS is a list of options
"$PYNS" sweep vgg11 --data cifar10 --root "$CIFAR_ROOT" --width-ratios 0.25,0.75,2 \
    --methods uniform,morphnet,neuralscale,li --seeds "$SEEDS" --epochs "$EPOCHS" --li-epochs "$LI_EPOCHS" \
    --descent "$OUT/descent" --out "$OUT/sweep" --device "$DEVICE" "${executor[@]}" ${SWEEP_ARGS:-}
echo "sweep: $(( $(date +%s) - started ))s"
echo "Table 1: $OUT/sweep/table.md   Figures 4/5: $OUT/sweep/fig4_accuracy_vs_params.png, fig5_accuracy_vs_latency.png"
