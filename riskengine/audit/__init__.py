"""Step 7 of the flow: the tamper-evident audit trail (chain.py) and the operator tools over it (trail.py)."""
