"""privatenet: classifiers whose features do not reveal private attributes, and honest
measurements of how much they still reveal (Li & Cavallaro, ICASSP 2022).

Stable public API: :func:`create_model`, :func:`create_adversary`, :func:`list_models`,
:func:`load_dataset`.
"""

from privatenet.data import load_dataset
from privatenet.errors import PrivatenetError
from privatenet.models import create_adversary, create_model, list_models

__version__ = "0.1.0"

__all__ = ["PrivatenetError", "create_adversary", "create_model", "list_models", "load_dataset"]
