#!/bin/bash
# The GPU measurements of RESULTS.md in one command per recipe and backend (each well under 10 minutes on
# an H100): ALBEF-base (256 px) and VLMo-base (224 px) at batch 64 and 128 per GPU, bf16, compile off and
# on, CUDA graphs (compile mode reduce-overhead, batch 128), the chosen attention backend (ALBEF also with
# packed text, eager); then a table of every bench.json under OUT.
#
#   bash benchmarks/gpu_bench.sh albef xformers [OUT]     # also: sdpa, math (math: batch 64, eager only)
#   bash benchmarks/gpu_bench.sh vlmo sdpa [OUT]
#   python benchmarks/collect_bench.py OUT                # the table again, from the saved files
#
# On a machine without network: put the xformers wheel (and any missing pure-Python dependency wheels,
# e.g. webdataset) in ./wheels; they are installed from there first.
set -euo pipefail

RECIPE=${1:?usage: gpu_bench.sh albef|vlmo xformers|sdpa|math [OUT]}
BACKEND=${2:?usage: gpu_bench.sh albef|vlmo xformers|sdpa|math [OUT]}
OUT=${3:-${OUT:-bench-gpu}}
STEPS=${STEPS:-50}
WARMUP=${WARMUP:-20}

if compgen -G "wheels/*.whl" > /dev/null; then
    pip install --quiet --no-deps --no-index wheels/*.whl
fi
python -c "import vlkit" 2>/dev/null || pip install --quiet --no-deps --no-build-isolation -e .
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

mkdir -p "$OUT"
python -m vlkit bench "recipes/$RECIPE/base.yaml" --flops-only --batch-size 8 --out "$OUT/$RECIPE-flops"
batches="64 128"
compiles="false true"
if [ "$BACKEND" = math ]; then batches=64; compiles=false; fi
for batch in $batches; do
    for compile in $compiles; do
        name="$RECIPE-$BACKEND-b$batch-compile_$compile"
        echo "== $name"
        python -m vlkit bench "recipes/$RECIPE/base.yaml" "encoder.attention=$BACKEND" "train.compile=$compile" \
            --batch-size "$batch" --steps "$STEPS" --warmup "$WARMUP" --out "$OUT/$name" \
            || echo "!! $name failed (see above)"
    done
done
if [ "$BACKEND" != math ]; then  # CUDA graphs: compiled blocks captured per text-length bucket
    name="$RECIPE-$BACKEND-b128-reduce_overhead"
    echo "== $name"
    python -m vlkit bench "recipes/$RECIPE/base.yaml" "encoder.attention=$BACKEND" train.compile=true \
        train.compile_mode=reduce-overhead --batch-size 128 --steps "$STEPS" --warmup "$WARMUP" --out "$OUT/$name" \
        || echo "!! $name failed (see above)"
fi
if [ "$RECIPE" = albef ] && [ "$BACKEND" != math ]; then  # packed text on, eager (packing and compile exclude each other)
    for batch in $batches; do
        name="$RECIPE-$BACKEND-b$batch-pack_text"
        echo "== $name"
        python -m vlkit bench "recipes/$RECIPE/base.yaml" "encoder.attention=$BACKEND" encoder.pack_text=true \
            --batch-size "$batch" --steps "$STEPS" --warmup "$WARMUP" --out "$OUT/$name" \
            || echo "!! $name failed (see above)"
    done
fi
python benchmarks/collect_bench.py "$OUT"
