"""Idefics3 and SmolVLM: SigLIP tower with pixel shuffle; images are split into tiles plus a global image.

Only ``<image>`` slots count as the image region; the ``<fake_token_around_image>`` and ``<row_r_col_c>``
markers around them are text, as in the model's own ``inputs_merger``.
"""

from __future__ import annotations

from hookkit.models.adapters import FamilyAdapter, register_adapter


@register_adapter
class Idefics3Adapter(FamilyAdapter):
    family = "idefics3"
    model_types = ("idefics3", "smolvlm")
