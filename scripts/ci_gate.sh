#!/usr/bin/env bash
# Regression gate: train delo and finetune on a small subset of tuxpaint_mixed
# and compare their metrics with the references committed in tests/references.
#
# Usage: bash scripts/ci_gate.sh           check against the references
#        bash scripts/ci_gate.sh --write   rewrite the references from a new run
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mode="${1:-check}"
out="${CMML_GATE_OUT:-$(mktemp -d)}"
# Five training and five test samples per class, two epochs of batch 8 per
# task (six optimizer steps): a short run whose numbers still move when
# training, masking or the metrics change.
run_options=(--protocol tuxpaint_mixed --subset 5 --seed 0 --out "$out" --quiet
             --set train.epochs=2 --set train.batch_size=8)

cmml-bench data prepare tuxpaint emoji

for method in finetune delo; do
    cmml-bench run --method "$method" "${run_options[@]}"
    run_dir="$out/tuxpaint_mixed/$method/seed0"
    reference="tests/references/tuxpaint_mixed_subset5_${method}.json"
    if [ "$mode" = "--write" ]; then
        cmml-bench check "$run_dir" --write-reference "$reference"
    else
        cmml-bench check "$run_dir" --reference "$reference" --tolerance 2.0
    fi
done
