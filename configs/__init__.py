"""The run configs shipped with rlgrad, installed as the package data of ``rlgrad.configs``.

This folder is their single copy: ``pyproject.toml`` maps the package ``rlgrad.configs`` onto
it, so ``rlgrad train sac_pendulum`` finds ``sac_pendulum.yaml`` here from any folder, and
``rlgrad configs`` lists them.
"""
