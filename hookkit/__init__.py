"""hookkit: exact, fast, composable inference-time interventions for Hugging Face LVLMs and LLMs.

    import hookkit
    model, processor = hookkit.load("tiny-llava")
    with hookkit.attach(model, hookkit.methods.VHR(alpha=2.0)) as session:
        ...
"""

from hookkit.core import AttnCall, HookContext, Intervention, Region, Session, Site, attach, get_model_info
from hookkit.errors import AttachError, ConfigError, HookkitError, InputError, UnsupportedModelError
from hookkit.models.loading import load

__version__ = "0.1.0"

__all__ = ["AttachError", "AttnCall", "ConfigError", "HookContext", "HookkitError", "InputError", "Intervention",
           "Region", "Session", "Site", "UnsupportedModelError", "attach", "get_model_info", "load", "__version__"]
