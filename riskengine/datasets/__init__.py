"""Event streams to train and evaluate on: the synthetic generator (synth/) and the public RBA dataset (rba.py)."""
