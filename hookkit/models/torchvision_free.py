"""Processors that stand in for transformers processors needing torchvision (LLaVA-OneVision, Mistral3, InternVL).

Without torchvision, ``AutoProcessor`` cannot load these families' processors: they insist on a video processor,
and every video processor in transformers 5 requires torchvision (so does each fast image processor). Passing
``video_processor=None`` does not help either: ``ProcessorMixin.__init__`` type-checks every slot named in the
signature and rejects ``None``. Here:

* ``TorchvisionFreeProcessor``, a mixin for a processor that stands in for a transformers one with the same
  components minus the video slot, and saves a folder with the layout of a real checkpoint;
* ``TorchvisionFreeAdapter``, whose ``load_processor`` returns the real processor whenever ``AutoProcessor`` can
  build it and the stand-in otherwise (one warning per family), or an ``InputError`` naming the pip command.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, ClassVar

import transformers as T

from hookkit.errors import InputError
from hookkit.models.families import FamilyAdapter, torchvision_install_hint

log = logging.getLogger(__name__)

_WARNED: set[str] = set()  # families whose fallback has been announced in this process


class TorchvisionFreeProcessor:
    """Mixin for a ``ProcessorMixin`` subclass that stands in for a transformers processor needing torchvision.

    ``ProcessorMixin`` derives its sub-processor slots from the ``__init__`` signature, so a subclass whose
    ``__init__`` lists only ``image_processor`` and ``tokenizer`` is built, saved and reloaded without a video
    processor. Saving writes the *real* class name into ``processor_config.json`` and, for families whose real
    checkpoints carry one, a ``video_preprocessor_config.json`` naming the family's video processor (an existing one
    is kept). The folder is then laid out like a hub checkpoint: without torchvision ``AutoProcessor`` fails on it
    where it fails on a hub checkpoint (importing the video processor), with torchvision it finds every component
    the real processor needs, and ``from_checkpoint`` rebuilds the stand-in from it anywhere.
    """

    #: the transformers processor class this one stands in for
    stands_in_for: ClassVar[str]
    #: the PIL-backend image processor in transformers' top level (the fast one needs torchvision)
    pil_image_processor: ClassVar[str]
    #: the video processor type real checkpoints name, or None for image-only families
    video_processor_type: ClassVar[str | None] = None

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["processor_class"] = self.stands_in_for
        return out

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> list[str]:
        files = super().save_pretrained(save_directory, **kwargs)
        video_config = Path(save_directory) / "video_preprocessor_config.json"
        if self.video_processor_type is not None and not video_config.exists():
            video_config.write_text(json.dumps({"video_processor_type": self.video_processor_type,
                                                "processor_class": self.stands_in_for}, indent=2) + "\n")
        return files

    @classmethod
    def from_checkpoint(cls, source: str | Path) -> Any:
        """Build the stand-in from a checkpoint: its tokenizer, the PIL image processor of its image processor
        config, and the processor settings (placeholder counts, chat template) of its ``processor_config.json``."""
        tokenizer = T.AutoTokenizer.from_pretrained(source)
        image_processor = getattr(T, cls.pil_image_processor).from_pretrained(source)
        processor_dict, _ = cls.get_processor_dict(source)
        return cls.from_args_and_dict([image_processor, tokenizer], processor_dict)


class TorchvisionFreeAdapter(FamilyAdapter):
    """An adapter whose processor falls back to a torchvision-free stand-in (``fallback_processor``)."""

    fallback_processor: ClassVar[type[TorchvisionFreeProcessor]]

    def load_processor(self, source: str) -> Any:
        """The real processor when ``AutoProcessor`` builds it, else the stand-in, else an ``InputError``."""
        try:
            return super().load_processor(source)
        except Exception as exc:  # noqa: BLE001 - typically torchvision missing for the video/fast image processor
            real_error = exc
        fallback = self.fallback_processor
        try:
            processor = fallback.from_checkpoint(source)
        except Exception as exc:  # noqa: BLE001 - reported together with the first failure
            raise InputError(
                f"the processor of {source} could not be loaded: transformers' {fallback.stands_in_for} failed "
                f"({type(real_error).__name__}: {real_error}) and hookkit's torchvision-free {fallback.__name__} "
                f"failed too ({type(exc).__name__}: {exc}). The real processor needs torchvision: "
                f"{torchvision_install_hint()}") from exc
        if self.family not in _WARNED:
            _WARNED.add(self.family)
            reason = (str(real_error).strip().splitlines() or [type(real_error).__name__])[0]
            log.warning("%s: transformers' %s cannot be built here (%s); using hookkit's torchvision-free %s "
                        "(the same image placeholders and inputs; no video)", self.family, fallback.stands_in_for,
                        reason[:300], fallback.__name__)
        return processor
