#!/usr/bin/env bash
# Ship an intermediate checkpoint of a training run that continues, with the measurements the documents cite for it.
#
#   bash benchmarks/milestone_results.sh PIPELINE_DIR RUN_DIR STEP [CELEBA_DIR]
#   # e.g. ~/runs/celeba64_edm/checkpoint-12000/pipeline ~/runs/celeba64_edm 12000 ../shared/celeba
#
# PIPELINE_DIR is the EMA pipeline a checkpoint saved, RUN_DIR the run (its training_log.jsonl), STEP the weights'
# step as results/training_log.jsonl counts it (a warm-restarted run's steps count on from its restart). Run it from
# the repository root. It brings results/training_log.jsonl and the training curve up to STEP, ships the weights as
# pretrained/celeba-64 with EDM's DPM-Solver++(2M) at 20 steps, measures their FID-2k (N_FID samples; resumable:
# rerun the same command after an interruption), draws 64 samples, and writes the model card (labelled as an
# intermediate checkpoint) and the generated tables. About 20 minutes on 2 CPU cores. A finished run gets
# benchmarks/shipped_results.sh instead.
set -euo pipefail
SOURCE=${1:?usage: bash benchmarks/milestone_results.sh PIPELINE_DIR RUN_DIR STEP [CELEBA_DIR]}
RUN=${2:?usage: bash benchmarks/milestone_results.sh PIPELINE_DIR RUN_DIR STEP [CELEBA_DIR]}
STEP=${3:?usage: bash benchmarks/milestone_results.sh PIPELINE_DIR RUN_DIR STEP [CELEBA_DIR]}
DATA=${4:-../shared/celeba}
BATCHES=${BATCHES:-runs/milestone}
PY=${PYTHON:-.venv/bin/python}
MODEL=pretrained/celeba-64
POINT=edm-dpm++2m-20
N_FID=${N_FID:-2000}
if (( N_FID >= 1000 && N_FID % 1000 == 0 )); then LABEL=fid$((N_FID / 1000))k; else LABEL=fid$N_FID; fi
if [[ ! -f "$SOURCE/model_index.json" ]]; then
  echo "$SOURCE is not a saved pipeline folder (no model_index.json)" >&2
  exit 2
fi

"$PY" -m pipeline.training_log --log results/training_log.jsonl --update_from "$RUN/training_log.jsonl" \
  --shipped_step "$STEP"  # before any work starts
"$PY" -m pipeline.ship --model "$SOURCE" --out "$MODEL" --sampler edm-dpm++2m --steps 20 --replace
"$PY" -m pipeline.evaluate --model "$MODEL" --train_data_dir "$DATA" --num_samples "$N_FID" --batch_size 32 \
  --resume_dir "$BATCHES/step-$STEP/$LABEL" --out "results/eval/${LABEL}_$POINT.json"
"$PY" -m pipeline.generate --model "$MODEL" --num_images 64 --out "results/samples/$POINT"
"$PY" -m pipeline.training_log --log results/training_log.jsonl --plot results/training_curve.png
"$PY" -m pipeline.model_card --model "$MODEL" --eval "results/eval/${LABEL}_$POINT.json" \
  --training_log results/training_log.jsonl --training_step "$STEP" --grid "results/samples/$POINT/grid_x4.png" \
  --in_progress --out model_card.md
"$PY" -m pipeline.evaluation.results_tables
