#!/usr/bin/env bash
# The demo model's recipe: teacher -> Restricted MeanFlow student (+ a plain MeanFlow student
# for comparison) -> cache predictor -> the bundle shipped in disca/demo/ -> its evaluation.
# Every stage resumes from its checkpoint when run again. On the 2-core CPU development
# machine, the stages took the times in the README (Training > The demo model).
set -euo pipefail
runs=${RUNS:-runs}

disca-train teacher --preset demo --out "$runs/teacher" --batch 16 --lr 5e-4 --ema 0.999 \
    --ckpt-every 50 --eval-every 1000 --steps "${TEACHER_STEPS:-11100}"
# --end-steps 0 --identity-gaps: the shipped student predates the r = 0 fix and --ode-gaps, today's defaults
# (README, Training > What made distillation collapse, Distilling longer)
disca-train distill --teacher "$runs/teacher" --out "$runs/student" --batch 8 --lr 2e-4 --max-gap 2 \
    --ema 0.99 --ckpt-every 25 --eval-every 200 --steps "${STUDENT_STEPS:-200}" --end-steps 0 --identity-gaps
disca-train distill --teacher "$runs/teacher" --out "$runs/student-plain" --plain --batch 8 --lr 2e-4 \
    --ema 0.99 --ckpt-every 25 --eval-every 400 --steps "${STUDENT_STEPS:-200}" --identity-gaps
# The shipped predictor: the forecast predictor, 0 blocks (the fusion MLP corrects TaylorSeer's first-order forecast
# of the hidden state from the last two anchors), trained on the anchor lists' own (previous anchor, anchor, step)
# triples with a loss relative to the forecast's error.
disca-train predictor --student "$runs/student" --out "$runs/predictor" --forecast --predictor-depth 0 \
    --trajectories 128 --max-gap 5 --velocity-weight 30 --batch 16 --lr 5e-4 --ema 0.99 --ckpt-every 200 \
    --eval-every 2000 --steps "${PREDICTOR_STEPS:-2000}"
disca-export onnx --checkpoint "$runs/predictor" --out disca/demo --no-weights --overwrite
disca-export teacache disca/demo --samples 16
disca-export schedule disca/demo --samples 16 --anchors 8 --report docs/schedule
# Ablation, not shipped (README, Benchmark against the training-free caches): the former predictor, 1 block on the
# last anchor's hidden state (no forecast), every gap up to 7 steps; and the shipped one + the rollout loss.
if [ -n "${PREDICTOR_ABLATION:-}" ]; then
    disca-train predictor --student "$runs/student" --out "$runs/predictor-anchor" --trajectories 128 --max-gap 7 \
        --velocity-weight 30 --batch 16 --lr 5e-4 --ema 0.99 --ckpt-every 100 --eval-every 2000 --steps 4000
    disca-export onnx --checkpoint "$runs/predictor-anchor" --out "$runs/bundle-anchor" --no-weights --overwrite
    # the shipped predictor's recipe + the loss on sampled-through runs of cached steps
    disca-train predictor --student "$runs/student" --out "$runs/predictor-rollout1" --forecast --predictor-depth 0 \
        --trajectories 128 --max-gap 5 --velocity-weight 30 --batch 16 --lr 5e-4 --ema 0.99 --ckpt-every 200 \
        --eval-every 2000 --steps 2000 --rollout-weight 1
fi
disca-export onnx --checkpoint "$runs/teacher" --out "$runs/bundle-teacher" --no-weights --overwrite
disca-export onnx --checkpoint "$runs/student-plain" --out "$runs/bundle-plain" --no-weights --overwrite
python scripts/eval_demo.py --bundle disca/demo --teacher "$runs/teacher" --plain-bundle "$runs/bundle-plain" \
    --n 64 --json > "$runs/eval_demo.json"
disca-bench --samples 64 --teacher "$runs/bundle-teacher" --lists searched,warm-up --out docs/bench \
    --policies disca,disca-adaptive,reuse,taylorseer1,taylorseer2,teacache,first-block,dbcache,dbcache-ts1,dbcache-ts2
