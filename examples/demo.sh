#!/usr/bin/env bash
# The whole tipsprog pipeline on a generated 3-center cohort, one patient held out for predict, and a second
# cohort from two new centers evaluated as an external validation set. The held-out patient is segmented and embedded
# with the others but left out of the encoder's self-supervised pre-training (--fit-ids) and of fuse-train (no
# clinical or outcome row), so no fitted step sees its scan; the external cohort reuses the encoder without --fit.
# Usage: bash examples/demo.sh [OUTPUT_DIR]   (make demo runs it inside the project's .venv)
set -euo pipefail
out=${1:-demo-out}
n=${DEMO_PATIENTS:-300}
rm -rf "$out"
mkdir -p "$out"
cd "$out"
start=$SECONDS
step() { printf '\n\033[1m== %s\033[0m (%ds)\n' "$1" $((SECONDS - start)); }

step "synth: $((n + 1)) patients, 3 centers"
tipsprog synth --out cohort --n $((n + 1)) --centers 3 --seed 7
held_out=$(tail -n 1 cohort/cohort.csv | cut -d, -f1)
for table in cohort clinical outcomes; do
  grep -v "^${held_out}," "cohort/${table}.csv" > "cohort/train_${table}.csv"
done
{ head -n 1 cohort/clinical.csv; grep "^${held_out}," cohort/clinical.csv; } > held_out_clinical.csv

step "segment (classic backend)"
tipsprog segment cohort/cohort.csv --out seg.h5
step "radiomics (pyradiomics, original image, all classes)"
tipsprog radiomics seg.h5 --out radiomics.h5
step "embed (self-supervised 3D encoder, masked-volume reconstruction, pre-trained on the training patients only)"
tipsprog embed seg.h5 --out embed.h5 --fit --fit-ids cohort/train_cohort.csv
step "external cohort: ${DEMO_EXTERNAL:-100} patients from 2 new centers, same feature pipeline and encoder"
tipsprog synth --out external --n "${DEMO_EXTERNAL:-100}" --centers 2 --seed 8 --prefix ext-
tipsprog segment external/cohort.csv --out external/seg.h5
tipsprog radiomics external/seg.h5 --out external/radiomics.h5
tipsprog embed external/seg.h5 --out external/embed.h5 --weights embed.pt
step "fuse-train (clinical, biomarkers, radiomics, embeddings; 5-fold CV stratified by event and center)"
tipsprog fuse-train seg.h5 radiomics.h5 embed.h5 --clinical cohort/train_clinical.csv --outcomes cohort/train_outcomes.csv --out model
step "evaluate (out-of-fold and external, bootstrap 95% CIs, clinical scores, oracle)"
tipsprog evaluate model --out report --truth cohort/truth.csv --truth external/truth.csv --bootstrap "${DEMO_BOOTSTRAP:-1000}" \
  --test external/seg.h5 --test external/radiomics.h5 --test external/embed.h5 --clinical external/clinical.csv --outcomes external/outcomes.csv
step "predict the held-out patient ${held_out}"
tipsprog predict --ct "cohort/images/${held_out}.nii.gz" --clinical held_out_clinical.csv --model model
printf '\nDemo finished in %d s. Report: %s/report/report.md\n' $((SECONDS - start)) "$out"
