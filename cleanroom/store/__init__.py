"""Zone A, persistence: the API host's database and content-addressed blob store (ciphertext only).

`db` opens the database and applies migrations, `blobs` stores ciphertext by hash, `sweep` is the
only code that deletes a blob. Route handlers reach the database through this package.
"""
