"""The names of a run folder's own files (docs/design.md §4).

A bottom-layer module, so that code below the training package (the image cache, which must
never write into a run folder) can recognise a run folder without importing it.
"""

#: The file that marks a folder as a privatenet run: which command owns it, its fingerprint.
MARKER = "run.json"
#: The exclusive lock of the run's one writer.
LOCK = "run.lock"
#: The results, written last: their presence marks a finished run.
RESULTS = "results.json"
