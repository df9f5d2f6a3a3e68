#!/usr/bin/env bash
# Ship a trained run as pretrained/celeba-64 and measure every result the documents cite for it.
#
#   bash benchmarks/shipped_results.sh RUN_DIR [CELEBA_DIR]      # e.g. ~/runs/celeba64_edm ../shared/celeba
#
# Run it from the repository root: it writes pretrained/celeba-64, results/ and model_card.md there. Sample counts:
# N_SWEEP (2000), N_FID (10000), N_PAIRED (200), N_LIKELIHOOD (32 test images), N_SLOW (128) and N_PRIOR (2000
# train images: the denoiser response's prior). PRECISION is the UNet's precision for every score but the
# bf16-vs-fp32 pair: by default bf16 on a CPU with native bf16 and "no" (float32) elsewhere, as the pipeline runs it.
# Each stage resumes: finished sweep points and evaluations are reused, interrupted ones continue from their kept
# sample batches (under $BATCHES, default runs/shipped; a new one for other weights), so rerun the same command after
# an interruption:
#  1. FID-2k of every offered sampler at 20-25 NFE (and EDM's DPM-Solver++ at 10 steps) on the run's weights,
#     shipped; where EDM's DPM-Solver++ at 10 steps, EDM's Euler at 20 and RK45 (N_SLOW samples) differ in spatial
#     frequency from DPM-Solver++ at 20, and which band of each difference moves FID;
#  2. ship: the fastest diffusers scheduler within 5% of the lowest FID-2k at <= 25 NFE becomes the default;
#  3. FID-10k of that default, and of the lowest-FID point at <= 25 NFE (default options) when it is another one,
#     each starting from its sweep point's samples (the same seeds);
#  4. held-out FID/KID with its floor (on the default's FID-10k samples), test-split bits/dim, bf16-vs-fp32 paired
#     KID, the denoiser response;
#  5. samples, a denoising trajectory, the training curve, the model card (with the held-out scores and the targets)
#     and the generated tables.
# Steps 2-5 run once after the first samplers of step 1, so that the headline numbers come early, and again after the
# rest, which reuses every finished stage unless the full sweep chose another default.
# On 2 Zen 4 cores with native bf16 it takes about 8 hours; in float32 on 2 cores without, about 17.
set -euo pipefail
RUN=${1:?usage: bash benchmarks/shipped_results.sh RUN_DIR [CELEBA_DIR]}
DATA=${2:-../shared/celeba}
BATCHES=${BATCHES:-runs/shipped}
PY=${PYTHON:-.venv/bin/python}
MODEL=pretrained/celeba-64
N_SWEEP=${N_SWEEP:-2000} N_FID=${N_FID:-10000} N_PAIRED=${N_PAIRED:-200} N_LIKELIHOOD=${N_LIKELIHOOD:-32}
N_SLOW=${N_SLOW:-128}
PRECISION=${PRECISION:-$("$PY" -c "from pipeline.pipeline_celeba import default_mixed_precision as d; print(d())")}

once() {  # a stage that cannot resume midway: NAME COMMAND..., skipped once it has finished for these batches
  if [[ -e "$BATCHES/done/$1" ]]; then echo "$1: finished before"; return; fi
  "${@:2}"
  mkdir -p "$BATCHES/done" && touch "$BATCHES/done/$1"
}
sweep() {  # sample count, then points
  "$PY" -m benchmarks.fid_vs_nfe --model "$MODEL" --train_data_dir "$DATA" --num_samples "$1" --batch_size 32 \
    --mixed_precision "$PRECISION" --out_dir results/nfe --resume_dir "$BATCHES/nfe" --points "${@:2}"
}
# the run's weights in the shipped folder (with DDPM, which fits every model, until the sweep has chosen)
"$PY" -m pipeline.ship --model "$RUN" --out "$MODEL" --sampler ddpm --steps 20 --replace
# evaluations and samples of earlier weights (a milestone's) give way to this run's
once clear_earlier rm -rf results/eval results/samples
# first the points the two frequency attributions compare, and the attributions, so that they use the kept batches
# while these are at hand (an interrupted evaluation that resumes elsewhere reuses the points' JSONs, not batches)
sweep "$N_SWEEP" edm-dpm++2m:10,20 edm-euler:20
once frequency_attribution "$PY" -m benchmarks.frequency_attribution --train_data_dir "$DATA" \
  --reference "$BATCHES/nfe/edm-dpm++2m-20_n$N_SWEEP" \
  --other "$BATCHES/nfe/edm-dpm++2m-10_n$N_SWEEP" "$BATCHES/nfe/edm-euler-20_n$N_SWEEP" \
  --out results/nfe/frequency_attribution.json
# the adaptive RK45 (float32), the converged ODE, at N_SLOW samples, against the first N_SLOW samples of
# DPM-Solver++ at 20 and 10 steps (the same noises)
sweep "$N_SLOW" ode-rk45,rtol=1e-3,atol=1e-3:1
once frequency_attribution_rk45 "$PY" -m benchmarks.frequency_attribution --train_data_dir "$DATA" \
  --reference "$BATCHES/nfe/ode-rk45,atol=0.001,rtol=0.001-1_n$N_SLOW" \
  --other "$BATCHES/nfe/edm-dpm++2m-20_n$N_SWEEP" "$BATCHES/nfe/edm-dpm++2m-10_n$N_SWEEP" \
  --num_samples "$N_SLOW" \
  --out results/nfe/frequency_attribution_rk45.json
ship_and_score() {  # ship the sweep's default, score it, write the samples, the model card and the tables
  "$PY" -m pipeline.ship --model "$RUN" --out "$MODEL" --from_sweep results/nfe/summary.json --replace
  # sampler and steps of the shipped default ("default") and of the lowest-FID point at <= 25 NFE ("best")
  read -r DEFAULT BEST < <("$PY" - <<'EOF'
import json
from pipeline.pipeline_folder import load_pipeline
from pipeline.sampling.schedulers import default_sampler
pipe = load_pipeline("pretrained/celeba-64", channels_last=False)
points = [p for p in json.load(open("results/nfe/summary.json"))["points"] if p["nfe"] <= 25 and "," not in p["sampler"]]
best = min((p for p in points if p["num_samples"] == max(q["num_samples"] for q in points)), key=lambda p: p["fid"])
print(f"{default_sampler(pipe)}:{pipe.config.default_num_inference_steps} {best['sampler']}:{best['steps']}")
EOF
  )
  local point
  for point in $(printf '%s\n' "${DEFAULT/:/-}" "${BEST/:/-}" | sort -u); do
    once "fid10k_$point" "$PY" -m pipeline.evaluate --model "$MODEL" --train_data_dir "$DATA" \
      --num_samples "$N_FID" --batch_size 32 --scheduler "${point%-*}" --steps "${point##*-}" \
      --mixed_precision "$PRECISION" --resume_dir "$BATCHES/fid10k_$point" \
      --reuse_batches "$BATCHES/nfe/${point}_n$N_SWEEP" --out "results/eval/fid10k_$point.json"
  done
  local default=${DEFAULT/:/-}
  once "heldout_$default" "$PY" -m benchmarks.heldout_eval --model "$MODEL" --train_data_dir "$DATA" \
    --mixed_precision "$PRECISION" --batch_size 32 --resume_dir "$BATCHES/heldout_$default" \
    --reuse_batches "$BATCHES/fid10k_$default" --out results/heldout/celeba-64.json
  # in batches of 8, each one adaptive ODE solve, kept under $BATCHES/likelihood: an interruption loses at most one
  once likelihood "$PY" -m pipeline.likelihood --model "$MODEL" --train_data_dir "$DATA" --split test \
    --num_images "$N_LIKELIHOOD" --batch_size 8 --resume_dir "$BATCHES/likelihood" --out results/likelihood.json
  once "bf16_pair_$default" bf16_pair "$default"
  once denoiser_response "$PY" -m benchmarks.denoiser_response --model "$MODEL" --train_data_dir "$DATA" \
    --prior_images "${N_PRIOR:-2000}" --out results/denoiser_response/celeba-64.json

  "$PY" -m benchmarks.model_summary --config configs/celeba64_edm.yaml --out results/model_summary.json
  "$PY" -m pipeline.generate --model "$MODEL" --num_images 64 --out "results/samples/$default"
  "$PY" -m pipeline.trajectory --model "$MODEL" --scheduler ddim --steps 20 --out results/samples/trajectory.png
  # the run's log (joined at its restart record to the log of the run it was warm-restarted from, if any)
  "$PY" -m pipeline.training_log --log results/training_log.jsonl --update_from "$RUN/training_log.jsonl" \
    --plot results/training_curve.png
  "$PY" -m pipeline.model_card --model "$MODEL" --eval results/eval/fid10k_*.json \
    "results/nfe/${default}_n$N_SWEEP.json" --likelihood results/likelihood.json \
    --heldout results/heldout/celeba-64.json --targets results --training_log results/training_log.jsonl \
    --grid "results/samples/$default/grid_x4.png" --out model_card.md
  "$PY" -m pipeline.evaluation.results_tables
}
bf16_pair() {  # paired KID of bf16 against float32 sampling on the first N_PAIRED seeds of the default's FID-10k
  local paired
  for paired in no bf16; do
    "$PY" -m pipeline.evaluate --model "$MODEL" --train_data_dir "$DATA" --num_samples "$N_PAIRED" --batch_size 32 \
      --mixed_precision "$paired" --resume_dir "$BATCHES/precision_$1/$paired" \
      --reuse_batches "$BATCHES/fid10k_$1" --out "$BATCHES/precision_$1/$paired.json"
  done
  "$PY" -m benchmarks.paired_kid --train_data_dir "$DATA" --batches "$BATCHES/precision_$1/no" \
    "$BATCHES/precision_$1/bf16" --out results/bench/bf16_paired_kid.json
}
# the rest of the sweep in two parts: the default is shipped and scored after the first, so that the headline numbers
# come early; after the second it is chosen again from every point, and the stages of an unchanged default are reused
sweep "$N_SWEEP" ddpm:20 ddim:20 ddim-clip:20
ship_and_score
sweep "$N_SWEEP" dpm++2m:20 euler:20 heun:13 unipc:20 pc:10 ode-heun:13 edm-dpm++2m-sde:20
ship_and_score
