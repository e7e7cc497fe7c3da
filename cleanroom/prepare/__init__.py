"""Zone O, plaintext: code that runs on a data owner's own machine and reads the raw dataset.

Schema reading and inference, pseudonymisation (holds the join secret), summaries and mock rows,
and the streaming encryption to the room's key. Nothing here runs on the API host or the runner,
and nothing here imports them (import contracts in pyproject.toml).
"""
