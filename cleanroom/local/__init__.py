"""Zone O: a member's own machine, public mock data only.

`cleanroom plugin test` and `cleanroom job test` run plugins in a local sandbox container against
the mock rows of the owners' published schemas. No room key, no real data, no API server code.
"""
