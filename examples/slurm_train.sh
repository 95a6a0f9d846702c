#!/bin/bash
# Multi-node vlkit pre-training under SLURM: an example to adapt (partition, account, paths); it is not
# run by vlkit's tests. One torchrun per node starts one training process per GPU; the nodes meet at
# the first node's c10d rendezvous. Submit again after a time-out or pre-emption: the run resumes
# from its newest checkpoint (at any node count; train.batch_size is the global batch).
#
#   sbatch examples/slurm_train.sh                                  # recipes/albef/base.yaml
#   RECIPE=recipes/vlmo/base.yaml OUT=runs/vlmo-base sbatch --nodes 2 examples/slurm_train.sh
#   sbatch examples/slurm_train.sh train.strategy=fsdp              # extra arguments are recipe overrides
#
#SBATCH --job-name=vlkit-train
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=72:00:00
#SBATCH --signal=TERM@300
#SBATCH --output=vlkit-%x-%j.out
# --signal=TERM@300: SIGTERM reaches every process 5 minutes before the limit; vlkit finishes the step,
# writes a checkpoint and exits (status 143).
set -euo pipefail

RECIPE=${RECIPE:-recipes/albef/base.yaml}
OUT=${OUT:-runs/$(basename "${RECIPE%.yaml}")-${SLURM_JOB_NAME}}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)

resume=()
if compgen -G "$OUT/checkpoints/step_*.pt" > /dev/null; then
    resume=(--resume)
fi

export OMP_NUM_THREADS=$(( SLURM_CPUS_PER_TASK / GPUS_PER_NODE ))
srun --kill-on-bad-exit=1 torchrun \
    --nnodes "$SLURM_NNODES" --nproc_per_node "$GPUS_PER_NODE" \
    --rdzv-backend c10d --rdzv-id "$SLURM_JOB_ID" --rdzv-endpoint "$head_node:29500" \
    -m vlkit train "$RECIPE" "$@" --out "$OUT" --no-progress "${resume[@]}"
