"""Training: the one loop (:mod:`~privatenet.train.loop`), its settings
(:mod:`~privatenet.train.config`) and run files and checkpoints
(:mod:`~privatenet.train.checkpoint`)."""
