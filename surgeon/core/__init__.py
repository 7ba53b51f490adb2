"""The surgery pipeline, one module a stage, each importing only earlier ones:

    trace ─▶ propagate ─▶ groups ─▶ rank ─▶ plan ─▶ rebuild ─▶ verify

`labels` (per-tensor channel labels) and `atoms` (index spaces, couplings, union-find) are the
data structures the handlers in `surgeon.ops` fill while `propagate` walks a traced graph.
"""
