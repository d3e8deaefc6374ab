"""One module per ``rlgrad`` sub-command.

Each module defines ``register(subparsers)``, which adds its parser and sets ``func`` to a
callable ``(args) -> exit code``. :mod:`rlgrad.cli` discovers the modules, so adding a
command means adding a module here. Modules import heavy dependencies (torch, gymnasium)
inside their command functions, so ``rlgrad --help`` stays fast.
"""
