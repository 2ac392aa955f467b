"""Stage 2: the foundation VLA that predicts latent action codes from an image and an
instruction. Public loading API for stage 3: :mod:`hlrp.foundation.export`."""

#: What defines a trained foundation model (dotted config keys): the train_foundation rule's
#: digest, and, less ``max_steps``, a run's resume hash (with the labels' key).
TRAIN_RESULT_KEYS = ("foundation.model", "foundation.data", "foundation.training", "seed")
