"""hookkit methods. Each module registers its intervention class(es) with ``register_method``."""

from hookkit.methods.registry import build_method, get_method, method_names, method_parameters, register_method

# Importing a method module registers it.
from hookkit.methods import noop, var, vhr  # noqa: E402,F401  isort: skip
from hookkit.methods import alora, lora, moh  # noqa: E402,F401  isort: skip  (issue 5)
from hookkit.methods import longheads  # noqa: E402,F401  isort: skip  (issue 6)

__all__ = ["build_method", "get_method", "method_names", "method_parameters", "register_method"]
