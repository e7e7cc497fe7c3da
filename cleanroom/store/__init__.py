"""Zone A, persistence: the API host's database and content-addressed blob store (ciphertext only).

`db` opens the database and applies migrations (`dialect`: SQLite by default, or PostgreSQL, and every
difference between them), `blobs` stores ciphertext by hash, `sweep` is the
only code that deletes a blob. One query module per resource (`orgs`, `room`, `web_sessions`,
`datasets`, `plugins`, `approvals`, `jobs`, `releases`, `runners`, `ledger`, `audit`) holds every SQL
statement the API runs: keyword-only functions over a connection from `Store.read()` or `Store.tx()`
(the caller decides the transaction) that return plain values. No SQL lives outside this package, so
another database implements these modules and nothing else.
"""
