#!/usr/bin/env bash
# The positive-review recipe of docs/RLHF.md (TRL's gpt2-sentiment example on the shipped models), end to end:
# a sentiment classifier and a pairwise reward model, then PPO (full and LoRA), DPO and GRPO on models/tiny-gpt2.
# Writes runs/recipe/*; about 5 minutes on 2 cores. Usage: npm run build:ts && bash scripts/rlhf-recipe.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/recipe}
cli="node dist/cli/main.js"
mkdir -p "$out"
$cli finetune --model models/tiny-distilbert --data builtin:sentiment-sentences --epochs 3 --out "$out/sentiment" --overwrite --quiet
$cli reward --model models/tiny-distilbert --epochs 2 --out "$out/reward" --overwrite --quiet
$cli ppo --model models/tiny-gpt2 --reward-model "$out/sentiment" --steps 40 --batch-size 16 --response-length 16 --out "$out/ppo" --overwrite --quiet
$cli ppo --model models/tiny-gpt2 --reward-model "$out/sentiment" --steps 40 --batch-size 16 --response-length 16 --lora --out "$out/ppo-lora" --overwrite --quiet
$cli dpo --model models/tiny-gpt2 --epochs 1 --out "$out/dpo" --overwrite --quiet
$cli grpo --model models/tiny-gpt2 --reward-model "$out/sentiment" --steps 40 --batch-size 4 --num-generations 8 --response-length 16 --out "$out/grpo" --overwrite --quiet
