#!/usr/bin/env bash
# The synth10 grid of issue 24, regenerated on world v2 with `cifc-bench sweep` from a clean tree. Every step is
# resumable: run the script again after a kill (or in the next session) and each sweep skips completed runs,
# resumes partial ones and starts the missing ones. Commit each completed run's result.json (and its final state,
# state/after_task_09.safetensors) as it lands. Run it alone: two heavy jobs on 2 cores slow each other tenfold.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=results
METHODS="cidm finetune base lora-m lora-c ewc lwf c-lora custom-diffusion mix-of-show"

# 1. every method x 3 seeds, both tracks (style transfer, editing), after every task. Two runs at a time, one
#    thread each (--jobs 2): two seeds of one baseline took 9.1 (c-lora), 11.4 (mix-of-show) and 12.2
#    (custom-diffusion) min together, from the first run's start to the last result.json written.
cifc-bench sweep --methods $METHODS --seeds 0 1 2 --out $OUT --jobs 2
# runs made before the tracks existed get them from their saved states (a no-op for runs that have them)
for dir in $OUT/synth10/*/s[012]; do
  if [ -f "$dir/result.json" ] && ! grep -q '"editing"' "$dir/result.json"; then
    cifc-bench run --resume "$dir" --tracks style_transfer,editing
  fi
done

# 2. CIDM's ablations, both variants x 3 seeds: its Table 3 switches tsp, tsh and ewa (for release, tsh=false
#    is its enhance term off: methods/cidm/consolidation.py). Two runs at a time, one thread each (--jobs 2):
#    on this 2-core CPU two such runs took 11.3 min together, 5.7 min a run. The thread count changes the floats,
#    not the scores: cidm seed 0 on one thread against two, largest ia cell difference 0.0005
#    (results/synth-check/cidm-thread-count-state-diff-s0.json).
cifc-bench sweep --methods cidm --grid cidm.variant=release --seeds 0 1 2 --out $OUT --tracks none --jobs 2
for switch in tsp tsh ewa; do
  cifc-bench sweep --methods cidm --grid cidm.$switch=false --seeds 0 1 2 --out $OUT --tracks none --jobs 2
  cifc-bench sweep --methods cidm --grid cidm.variant=release cidm.$switch=false --seeds 0 1 2 --out $OUT --tracks none --jobs 2
done

# 3. the regularisation strengths (defaults: EWC 1e3, C-LoRA 1e6), one seed: where each trades
#    learning for forgetting
#    EWC's grid lies below its default: with the Fisher normalised to mean 1, lambda = 10 already gave the
#    default's final ia (30.0 both, ewc/ewc_lambda=10_s0 against ewc/s0)
cifc-bench sweep --methods ewc --grid ewc.ewc_lambda=0.01,0.1,1,10 --seeds 0 --out $OUT --tracks none --jobs 2
cifc-bench sweep --methods c-lora --grid c-lora.reg_lambda=10000,100000,10000000,100000000 --seeds 0 --out $OUT --tracks none --jobs 2

# 4. the pages, from every committed run (no number typed by hand)
cifc-bench leaderboard --protocol synth10 --format md --out docs/results.md
cifc-bench leaderboard --protocol synth10 --format html --out docs/leaderboard
