#!/usr/bin/env bash
# Multi-node fine-tuning on SLURM: one `accelerate launch` per node, each starting one process
# per GPU. Submit with: sbatch scripts/slurm_multinode.sh recipes/bert_cls/run.py --config configs/mrpc.yaml
#SBATCH --job-name=recipes
#SBATCH --nodes=2                 # machines
#SBATCH --ntasks-per-node=1       # one launcher per node; it starts the per-GPU processes
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=12:00:00
#SBATCH --output=logs/%x-%j.out
set -euo pipefail

GPUS_PER_NODE=${SLURM_GPUS_ON_NODE:-8}
MAIN_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MAIN_PORT=${MAIN_PORT:-29500}
NUM_PROCESSES=$((SLURM_NNODES * GPUS_PER_NODE))

# Rerunning the same job resumes from the last checkpoint in output_dir (shared filesystem).
srun --kill-on-bad-exit=1 bash -c "accelerate launch \
  --config_file configs/accelerate/multi_node.yaml \
  --num_machines $SLURM_NNODES --num_processes $NUM_PROCESSES \
  --machine_rank \$SLURM_NODEID --main_process_ip $MAIN_ADDR --main_process_port $MAIN_PORT \
  $*"
