"""hookkit methods. Each module registers its intervention class(es) with ``register_method``."""

from hookkit.methods.registry import build_method, get_method, method_names, method_parameters, register_method

__all__ = ["build_method", "get_method", "method_names", "method_parameters", "register_method"]
