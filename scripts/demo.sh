#!/usr/bin/env bash
# fastat demo: FGSM-RS vs a remedy (N-FGSM) at eps=0.2 on the embedded Fashion-MNIST, one overlaid plot + a table.
#   GPU: PreActResNet-18, full training set, 10 epochs, batch 512, bf16, cyclic lr 0.2, PGD-20 on 2000 test images
#        (FGSM-RS is expected to collapse, N-FGSM to hold).
#   CPU: the same pipeline reduced (small CNN, a training subset, fewer epochs and eval images) so that it ends in a
#        few minutes on 2 cores; the curves need not collapse there.
# Environment: PYTHON (default: python), DEMO_OUT (default: runs/demo), DEMO_DEVICE (cuda|cpu, default: auto).
set -euo pipefail
PY=${PYTHON:-python}
OUT=${DEMO_OUT:-runs/demo}
DEVICE=${DEMO_DEVICE:-$("$PY" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')}

if [[ "$DEVICE" == cuda ]]; then
  ARGS=(--device cuda --model preact18 --epochs 10 --batch-size 512 --precision bf16 --lr-max 0.2
        --eval-n 2000 --eval-steps 20)
else
  ARGS=(--device cpu --model small-cnn --subset ${DEMO_SUBSET:-2000} --epochs ${DEMO_EPOCHS:-5} --batch-size 128
        --precision fp32 --lr-max 0.05 --eval-n 300 --eval-steps 10 --co-batch 128 --co-steps 5)
fi
echo "fastat demo on $DEVICE -> $OUT"
start=$(date +%s)
for method in fgsm_rs n_fgsm; do
  echo "== $method"
  rm -rf "$OUT/$method"
  "$PY" -m fastat.cli train --method "$method" --dataset fashion-mnist --eps 0.2 --lr-schedule cyclic \
    --seed 0 --out "$OUT/$method" "${ARGS[@]}"
done
"$PY" -m fastat.cli plot "$OUT/fgsm_rs" "$OUT/n_fgsm" -o "$OUT/demo.png" \
  --title "Fashion-MNIST eps=0.2: FGSM-RS vs N-FGSM ($DEVICE)"
echo "demo finished in $(( $(date +%s) - start )) s; plot: $OUT/demo.png"
