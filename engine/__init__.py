"""The library layer under the command line: config -> object builders, the run wrapper (fit + test +
metrics.json), atomic artefact writers, run facts, and which errors are the user's.

``experiments/`` (the CLI) and ``federation/`` import this package; it imports neither.
"""
