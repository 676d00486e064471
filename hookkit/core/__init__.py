"""The hook registry: sites, token regions, the attention dispatch and scoped sessions."""

from hookkit.core.intervention import AttnCall, Binding, ForwardContext, HookContext, Intervention, SampleInfo
from hookkit.core.regions import Region, TokenTracker
from hookkit.core.session import Session, attach, get_model_info
from hookkit.core.sites import Site

__all__ = ["AttnCall", "Binding", "ForwardContext", "HookContext", "Intervention", "Region", "SampleInfo", "Session", "Site",
           "TokenTracker", "attach", "get_model_info"]
