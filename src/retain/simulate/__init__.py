"""The shop simulator (with ground truth and an oracle) and a plain BG/NBD purchase-log generator."""

from retain.simulate.bgnbd import simulate_bgnbd
from retain.simulate.oracle import oracle_probabilities
from retain.simulate.shop import simulate_shop

__all__ = ["oracle_probabilities", "simulate_bgnbd", "simulate_shop"]
