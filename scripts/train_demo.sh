#!/usr/bin/env bash
# The demo model's recipe: teacher -> Restricted MeanFlow student (+ a plain MeanFlow student
# for comparison) -> cache predictor -> the bundle shipped in disca/demo/ -> its evaluation.
# Every stage resumes from its checkpoint when run again. On the 2-core CPU development
# machine, the stages took the times in the README (Training > The demo model).
set -euo pipefail
runs=${RUNS:-runs}

disca-train teacher --preset demo --out "$runs/teacher" --batch 16 --lr 5e-4 --ema 0.999 \
    --ckpt-every 50 --eval-every 1000 --steps "${TEACHER_STEPS:-11100}"
# The shipped student: today's distill defaults (--ode-gaps, --end-steps 4, lr 2e-4, EMA 0.999, max gap 2) at
# batch 4 for CPU time, 2000 steps, 64-prompt evaluation every 100 (README, Training > Distilling longer).
disca-train distill --teacher "$runs/teacher" --out "$runs/student" --batch 4 --ckpt-every 100 --eval-every 100 \
    --eval-n 64 --steps "${STUDENT_STEPS:-2000}"
# plain MeanFlow for comparison (README, Training > What the restriction buys: 500 steps each)
disca-train distill --teacher "$runs/teacher" --out "$runs/student-plain" --plain --batch 4 --ckpt-every 100 \
    --eval-every 100 --eval-n 64 --steps "${PLAIN_STEPS:-500}"
# The shipped predictor: the forecast predictor, 0 blocks (the fusion MLP corrects TaylorSeer's first-order forecast
# of the hidden state from the last two anchors), its hidden layer modulated by the step's conditioning (--modulate),
# trained on 512 of the student's trajectories, on the anchor lists' own (previous anchor, anchor, step) triples with
# a loss relative to the forecast's error, plus the loss on sampled-through runs of cached steps.
disca-train predictor --student "$runs/student" --out "$runs/predictor" --forecast --predictor-depth 0 --modulate \
    --trajectories 512 --max-gap 5 --velocity-weight 30 --batch 16 --lr 5e-4 --ema 0.99 --ckpt-every 200 \
    --eval-every 6000 --steps "${PREDICTOR_STEPS:-6000}" --rollout-weight 1
# The shipped demo is part of the package, which disca-export does not modify: build the bundle beside it, then copy.
# The schedule: 64 calibration clips, the per-gap choice redone on sampled runs (--on-runs; 91 min alone on 2 cores).
disca-export onnx --checkpoint "$runs/predictor" --out "$runs/demo" --no-weights --overwrite
disca-export teacache "$runs/demo" --samples 16
disca-export schedule "$runs/demo" --samples 64 --anchors 8 --on-runs --report docs/schedule
cp "$runs/demo"/* disca/demo/
# Ablation, not shipped (README, Benchmark against the training-free caches): the former predictor, 1 block on the
# last anchor's hidden state (no forecast), every gap up to 7 steps; the predictor shipped before (no --modulate,
# 128 trajectories, 2000 steps) and that one without the rollout loss.
if [ -n "${PREDICTOR_ABLATION:-}" ]; then
    disca-train predictor --student "$runs/student" --out "$runs/predictor-anchor" --trajectories 128 --max-gap 7 \
        --velocity-weight 30 --batch 16 --lr 5e-4 --ema 0.99 --ckpt-every 100 --eval-every 2000 --steps 4000
    disca-export onnx --checkpoint "$runs/predictor-anchor" --out "$runs/bundle-anchor" --no-weights --overwrite
    disca-train predictor --student "$runs/student" --out "$runs/predictor-no-rollout" --forecast \
        --predictor-depth 0 --trajectories 128 --max-gap 5 --velocity-weight 30 --batch 16 --lr 5e-4 --ema 0.99 \
        --ckpt-every 200 --eval-every 2000 --steps 2000
    disca-train predictor --student "$runs/student" --out "$runs/predictor-unmodulated" --forecast \
        --predictor-depth 0 --trajectories 128 --max-gap 5 --velocity-weight 30 --batch 16 --lr 5e-4 --ema 0.99 \
        --ckpt-every 200 --eval-every 2000 --steps 2000 --rollout-weight 1
fi
disca-export onnx --checkpoint "$runs/teacher" --out "$runs/bundle-teacher" --no-weights --overwrite
disca-export onnx --checkpoint "$runs/student-plain" --out "$runs/bundle-plain" --no-weights --overwrite
python scripts/eval_demo.py --bundle disca/demo --teacher "$runs/teacher" --plain-bundle "$runs/bundle-plain" \
    --n 64 --json > "$runs/eval_demo.json"
disca-bench --samples 64 --teacher "$runs/bundle-teacher" --lists searched,warm-up --out docs/bench \
    --anchors 14,13,12,11,10,9,8,7,6,5,4,3 --adaptive 0.1,0.12,0.15,0.2,0.25,0.3 \
    --policies disca,disca-predictor,disca-adaptive,reuse,taylorseer1,taylorseer2,taylorseer1-gaps,teacache,\
first-block,dbcache,dbcache-ts1,dbcache-ts2
