"""Subcommands of the ``hgkeras`` console script, one module each.

Every module defines ``register(subparsers)``, which adds its parser and sets ``func`` to a callable
taking the parsed arguments and returning an exit code. Modules import heavy libraries (keras,
tensorflow) inside that callable, so ``hgkeras --help`` stays fast.
"""
