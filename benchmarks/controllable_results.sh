#!/usr/bin/env bash
# Controllable generation with the shipped model: fine-tune and ship the attribute model, and measure every editing
# and attribute-control result the documents cite.
#
#   bash benchmarks/controllable_results.sh [CELEBA_DIR]      # e.g. ../shared/celeba
#
# Run it from the repository root once pretrained/celeba-64 holds the final weights. Runs and kept sample batches
# live under $RUNS (default ~/runs/controllable), outside the work tree. Every stage resumes: the fine-tune from its
# latest checkpoint, the measurements from their kept batches, finished stages are skipped; so rerun the same
# command after an interruption (with a new $RUNS for other base weights). Sample counts: N_CONTROL (2,000 faces per
# guidance weight), N_EDIT (1,000 held-out faces per edit), N_INVERSION (16) and N_GRID (8 faces per edit grid);
# CONFIG and TRAIN_ARGS (extra train_unet.py flags) change the fine-tune. PRECISION is the fine-tune's and the scored
# samples' precision: by default bf16 on a CPU with native bf16 and "no" (float32) elsewhere, as the pipeline runs it.
#  1. the attribute fine-tune (configs/celeba64_edm_attributes.yaml from pretrained/celeba-64: 75 minutes in bf16 on
#     2 Zen 4 cores, about 9.6 hours in float32 on 2 cores without native bf16), shipped as
#     pretrained/celeba-64-attributes with the base model's sampler and steps;
#  2. how much the labels tell the network (label-gain on held-out faces), attribute control at guidance 0/1/3/5 (N_CONTROL faces per weight) with its sweep grid, judged by the
#     attribute classifier (trained again, about 8 minutes, only when its weights are missing), and the model card;
#  3. inversion PSNR, edit grids of the other masks and an interpolation strip of two held-out faces;
#  4. screenshots of every tab of the demo, Attributes included;
#  5. last, as the longest stage: FID-N_EDIT of inpainted (center, eyes) and colorized held-out faces per method.
set -euo pipefail
DATA=${1:-../shared/celeba}
RUNS=${RUNS:-$HOME/runs/controllable}
PY=${PYTHON:-.venv/bin/python}
ACCELERATE=${ACCELERATE:-$(dirname "$PY")/accelerate}
BASE=pretrained/celeba-64
MODEL=pretrained/celeba-64-attributes
FINE_TUNE=$RUNS/celeba64_edm_attributes
CODE=$(cd "$(dirname "$0")/.." && pwd)  # train_unet.py and configs/, wherever the command runs
CONFIG=${CONFIG:-$CODE/configs/celeba64_edm_attributes.yaml}
read -r -a TRAIN_ARGS <<< "${TRAIN_ARGS:-}"
N_CONTROL=${N_CONTROL:-2000} N_EDIT=${N_EDIT:-1000} N_INVERSION=${N_INVERSION:-16} N_GRID=${N_GRID:-8}
PRECISION=${PRECISION:-$("$PY" -c "from pipeline.pipeline_celeba import default_mixed_precision as d; print(d())")}
CLASSIFIER=${CLASSIFIER:-${CELEBA_DIFFUSION_CACHE:-$HOME/.cache/celeba-diffusion}/attribute_classifier.pt}

once() {  # a stage that cannot resume midway: NAME COMMAND..., skipped once it has finished for these weights
  if [[ -e "$RUNS/done/$1" ]]; then echo "$1: finished before"; return; fi
  "${@:2}"
  mkdir -p "$RUNS/done" && touch "$RUNS/done/$1"
}
if [[ ! -f "$BASE/model_index.json" || ! -f results/training_log.jsonl ]]; then
  echo "no $BASE/model_index.json or results/training_log.jsonl: ship the base model first" \
    "(benchmarks/shipped_results.sh)" >&2
  exit 2
fi

# 1. the fine-tune (its run directory's checkpoints make it resumable), then the shipped folder
resume=()
ls -d "$FINE_TUNE"/checkpoint-* >/dev/null 2>&1 && resume=(--resume_from_checkpoint latest)
once fine_tune "$ACCELERATE" launch --num_cpu_threads_per_process 2 --mixed_precision "$PRECISION" \
  "$CODE/train_unet.py" \
  --config "$CONFIG" --train_data_dir "$DATA" --output_dir "$FINE_TUNE" --init_from "$BASE" "${TRAIN_ARGS[@]}" \
  "${resume[@]}"
read -r SAMPLER STEPS < <("$PY" - <<'EOF'
from pipeline.pipeline_folder import load_pipeline
from pipeline.sampling.schedulers import default_sampler
pipe = load_pipeline("pretrained/celeba-64", channels_last=False)
print(default_sampler(pipe), pipe.config.default_num_inference_steps)
EOF
)
once ship "$PY" -m pipeline.ship --model "$FINE_TUNE" --out "$MODEL" --sampler "$SAMPLER" --steps "$STEPS" --replace

# 2. does the network read its labels, and does guidance give the attributes asked for (judged by the classifier)
"$PY" -m benchmarks.attribute_control label-gain --model "$MODEL" --train_data_dir "$DATA" \
  --out results/attributes/label_gain.json
[[ -f "$CLASSIFIER" ]] || "$PY" -m benchmarks.attribute_control classifier --train_data_dir "$DATA" \
  --weights "$CLASSIFIER" --out results/attributes/classifier.json
"$PY" -m benchmarks.attribute_control control --model "$MODEL" --train_data_dir "$DATA" --guidance 0 1 3 5 \
  --num_samples "$N_CONTROL" --weights "$CLASSIFIER" --mixed_precision "$PRECISION" --resume_dir "$RUNS/control" \
  --grid results/attributes/control_grid.png --out results/attributes/control.json
# the card counts the base model's training and the fine-tune as one log (results/attributes/training_log.jsonl),
# joined where the fine-tune started
BASE_STEP=$("$PY" -c 'from pipeline.training_log import read_training_log as read
print(read("results/training_log.jsonl")["step"])')
mkdir -p results/attributes && cp results/training_log.jsonl results/attributes/training_log.jsonl
"$PY" -m pipeline.training_log --log results/attributes/training_log.jsonl \
  --update_from "$FINE_TUNE/training_log.jsonl" \
  --restart_step "$BASE_STEP" \
  --restart_note "attribute fine-tune ($(basename "$CONFIG")) from the EMA weights of step $BASE_STEP"
"$PY" -m pipeline.model_card --model "$MODEL" --attribute_control results/attributes/control.json \
  --training_log results/attributes/training_log.jsonl --grid results/attributes/control_grid.png \
  --out "$MODEL/README.md"

# 3. how exactly inversion gives a face back, the other masks and an interpolation strip, on held-out faces
once inversion "$PY" -m benchmarks.inversion_psnr --model "$BASE" --train_data_dir "$DATA" --steps 10 20 50 100 \
  --num_images "$N_INVERSION" --out results/edit/inversion_psnr.json

for MASK in left right top bottom random; do
  once "inpaint_$MASK" "$PY" -m pipeline.edit inpaint --model "$BASE" --celeba "$DATA" --split test \
    --num_images "$N_GRID" --mask "$MASK" --method repaint --steps 50 --jump_length 5 --jump_n_sample 3 \
    --out "results/edit/inpaint_$MASK"
done
once interpolate "$PY" -m pipeline.edit interpolate --model "$BASE" --celeba "$DATA" --split test --num_images 2 \
  --frames 8 --out results/edit/interpolate

# 4. the demo, every tab
once screenshots "$PY" -m benchmarks.demo_screenshots --model "$BASE" --attributes_model "$MODEL" --celeba "$DATA" \
  --out results/demo

# 5. how natural the edits are
"$PY" -m benchmarks.edit_fid --model "$BASE" --train_data_dir "$DATA" --tasks center eyes colorize \
  --methods repaint pc --num_images "$N_EDIT" --steps 50 --mixed_precision "$PRECISION" --resume_dir "$RUNS/edit" \
  --out_dir results/edit
