"""Stage 3: finetune the foundation model to continuous robot actions and evaluate the policy
in closed loop (``hlrp.low_level.episodes``, ``.train``, ``.evaluate``, ``.report``)."""

#: What defines a finetuned policy (dotted config keys), with the episodes and ``init`` it
#: learnt from: the finetune rule's digest, and, less ``max_steps``, a run's resume hash.
TRAIN_RESULT_KEYS = (
    "low_level.model",
    "low_level.data",
    "low_level.training",
    "foundation.model.backbone",
    "foundation.model.image_size",
    "seed",
)
