# Source before `snakemake --profile workflow/profiles/lrz --profile ci/slurm/profile ...`:
# the lrz profile reads its account, partitions and QOS from these variables.
# The test cluster has one partition, `local`, and no accounting: an empty account makes the
# Slurm executor submit without --account; the QOS is LRZ's (without accounting slurmctld
# does not check it).
export HLRP_SLURM_ACCOUNT=""
export HLRP_CPU_PARTITION="${HLRP_SLURM_PARTITION:-local}"
export HLRP_GPU_PARTITION="${HLRP_SLURM_PARTITION:-local}"
export HLRP_CPU_QOS="${HLRP_CPU_QOS-cpu}"
export HLRP_EVAL_PARTITION="$HLRP_CPU_PARTITION"
export HLRP_EVAL_QOS="$HLRP_CPU_QOS"
# Variables of an enclosing Slurm job would leak into the submissions.
for _v in $(env | grep -oE '^(SLURM|SBATCH|SRUN)_[A-Z_]+' || true); do unset "$_v"; done
unset _v
