"""The synthetic, labelled event generator: users, their legitimate traffic, and attacks on them."""

from riskengine.datasets.synth.stream import *  # noqa: F403  (the generator's entry points)
from riskengine.datasets.synth.stream import __all__  # noqa: F401
