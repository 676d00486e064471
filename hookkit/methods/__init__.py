"""hookkit methods, one file each. They are listed in ``hookkit.registry.METHODS`` and imported on first use."""

from hookkit.methods.registry import build_method, get_method, method_names, method_parameters, register_method

__all__ = ["build_method", "get_method", "method_names", "method_parameters", "register_method"]
