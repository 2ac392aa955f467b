# Source this before `snakemake --profile workflow/profiles/lrz ...` (the profile reads these).
#   source workflow/profiles/lrz/env.sh
# Values already set in your shell win over the defaults below.
: "${HLRP_SLURM_ACCOUNT:?set HLRP_SLURM_ACCOUNT to your LRZ project (sbatch --account)}"
export HLRP_SLURM_ACCOUNT
export HLRP_CPU_PARTITION="${HLRP_CPU_PARTITION:-lrz-cpu}"
export HLRP_GPU_PARTITION="${HLRP_GPU_PARTITION:-lrz-hgx-h100-94x4}"
# QOS of the CPU rules: LRZ's lrz-cpu partition wants --qos=cpu; set it empty for none.
export HLRP_CPU_QOS="${HLRP_CPU_QOS-cpu}"
# Closed-loop evaluation (stage 3) runs on the CPU partition; for a GPU node set
# HLRP_EVAL_PARTITION=$HLRP_GPU_PARTITION, HLRP_EVAL_QOS= and the workflow config evaluate.gpu.
export HLRP_EVAL_PARTITION="${HLRP_EVAL_PARTITION:-$HLRP_CPU_PARTITION}"
export HLRP_EVAL_QOS="${HLRP_EVAL_QOS-$HLRP_CPU_QOS}"
