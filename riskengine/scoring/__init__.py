"""Step 5 of the flow: signals -> risk. The scorers (model.py), the compiled trees they run on (trees.py),
and the registry they are loaded from (registry.py)."""
