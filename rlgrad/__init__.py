"""rlgrad: score-function and pathwise policy gradients, with gradient-variance diagnostics."""

__version__ = "0.1.0"
