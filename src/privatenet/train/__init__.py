"""Training: the one loop (:mod:`~privatenet.train.loop`), its settings
(:mod:`~privatenet.train.config`), run folders (:mod:`~privatenet.train.rundir`) and
several processes (:mod:`~privatenet.train.distributed`). Checkpoint files are
:mod:`privatenet.storage`; saved networks :mod:`privatenet.models.saving`."""
