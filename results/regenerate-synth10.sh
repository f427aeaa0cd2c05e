#!/usr/bin/env bash
# The synth10 grid on protocol 3.0 (issue 34), made with `cifc-bench sweep` from a clean tree. Every step is
# resumable: run the script again after a kill (or in the next session) and each sweep skips completed runs,
# resumes partial ones and starts the missing ones. Commit each completed run's result.json (and the seed-0 final
# state, state/after_task_09.safetensors) as it lands. Run it alone: two heavy jobs on 2 cores slow each other
# tenfold. The runs of protocol 2.0 are kept in results/archive/synth10-2.0 (leaderboards leave them out by version).
#
# One run at a time (--jobs 1), each with its evaluation worker (--eval-workers 1, the protocol's default): the
# run's process trains task j+1 on one thread while the worker generates the images of state j on the other.
# `base` cannot depend on the seed: the sweep runs it once. Measured cost: results/synth-check/grid_cost.py.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=results
export OMP_NUM_THREADS=1  # the run's process; its worker takes the second core
METHODS="cidm lora-m mix-of-show custom-diffusion lora-c ewc lwf c-lora"

# 1. every method x 3 seeds, both tracks (style transfer, editing), after every task. The runs that decide the
#    protocol's own targets land first (finetune's margin over base and its forgetting), then one seed of every
#    method (a whole leaderboard early), then the other seeds.
#    The upper-bound reference (replay, issue 37) closes the seed-0 row; the five methods of issue 37's order axis
#    take their other seeds before the rest (step 3).
cifc-bench sweep --methods finetune base --seeds 0 1 2 --out $OUT
cifc-bench sweep --methods $METHODS replay --seeds 0 --out $OUT
cifc-bench sweep --methods cidm lora-m mix-of-show --seeds 1 2 --out $OUT

# 2. issue 37 (open) before issue 34's remaining runs (that issue is blocked on its owner's decisions): the task
#    order as an axis, five methods in two more orders x 3 seeds (the protocol's order is step 1's runs), one seed
#    at a time so that every method's order row fills in early; custom-diffusion's protocol-order seeds 1 and 2
#    (30 min and more each) after the first seed's order runs; then the upper-bound reference's other seeds
#    (replay: 39 min each, its cumulative budget trains 55 tasks' steps)
for seed in 0 1 2; do
  cifc-bench sweep --methods finetune cidm lora-m custom-diffusion mix-of-show --orders reversed random:1 \
    --seeds $seed --out $OUT --tracks none
  if [ "$seed" = 0 ]; then
    cifc-bench sweep --methods custom-diffusion --seeds 1 2 --out $OUT
  fi
done
cifc-bench sweep --methods replay --seeds 1 2 --out $OUT

# 3. the other methods' seeds 1 and 2
cifc-bench sweep --methods $METHODS --seeds 1 2 --out $OUT

# 4. CIDM's ablations, both variants x 3 seeds: its Table 3 switches tsp, tsh and ewa (for release, tsh=false is
#    its enhance term off: methods/cidm/consolidation.py), and ccs=false: multi-concept requests prompted plainly,
#    so that region synthesis's effect on neglect is measured paired
cifc-bench sweep --methods cidm --grid cidm.variant=release --seeds 0 1 2 --out $OUT --tracks none
for switch in tsp tsh ewa ccs; do
  cifc-bench sweep --methods cidm --grid cidm.$switch=false --seeds 0 1 2 --out $OUT --tracks none
  cifc-bench sweep --methods cidm --grid cidm.variant=release cidm.$switch=false --seeds 0 1 2 --out $OUT --tracks none
done

# 5. the regularisation strengths (defaults: EWC 1e3, C-LoRA 1e6), one seed: where each trades learning for
#    forgetting
cifc-bench sweep --methods ewc --grid ewc.ewc_lambda=0.01,0.1,1,10 --seeds 0 --out $OUT --tracks none
cifc-bench sweep --methods c-lora --grid c-lora.reg_lambda=10000,100000,10000000,100000000 --seeds 0 --out $OUT --tracks none

# 6. the pages, from every committed run (no number typed by hand)
cifc-bench leaderboard --protocol synth10 --format md --out docs/results/synth10.md
cifc-bench leaderboard --protocol synth10 --format html --out docs/results/leaderboard
