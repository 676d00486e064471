"""hookkit methods. Each module registers its intervention class(es) with ``register_method``."""

from hookkit.methods.registry import build_method, get_method, method_names, method_parameters, register_method

# Importing a method module registers it.
from hookkit.methods import noop  # noqa: E402,F401  isort: skip

__all__ = ["build_method", "get_method", "method_names", "method_parameters", "register_method"]
