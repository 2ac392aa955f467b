"""Stage 1: latent action quantization (LAQ). Public loading API: :mod:`hlrp.laq.export`."""

#: What defines a trained LAQ (dotted config keys): the train_laq rule's digest, and, less
#: ``max_steps``/``epochs``, a run's resume hash (:func:`hlrp.laq.train.resume_hash`).
TRAIN_RESULT_KEYS = ("laq.model", "laq.data", "laq.training", "seed")
