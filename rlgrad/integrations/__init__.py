"""Integrations of rlgrad's gradient diagnostics with other RL libraries.

* :mod:`rlgrad.integrations.sb3`: a Stable-Baselines3 callback for PPO (and A2C) and SAC
  (needs ``stable-baselines3``, the ``sb3`` extra; imported lazily so that rlgrad itself does
  not depend on it).
"""
