"""Step 6 of the flow: risk + action + session -> allow, step_up or deny (decide.py), from a validated
policy file (file.py), with regulatory exemptions (exemptions.py) and shipped presets (presets/)."""

from riskengine.policy.decide import Decision, Policy, Reason

__all__ = ["Decision", "Policy", "Reason"]
