"""Mistral3 (Mistral-Small-3.1 layout): Pixtral tower + patch merger + Mistral decoder.

Image token id: ``config.image_token_index`` (alias ``image_token_id``). Each image is resized so its longest edge
fits ``size["longest_edge"]``, with both sides a multiple of ``patch_size * spatial_merge_size`` (the merger fuses
``spatial_merge_size``² patches into one feature), and becomes ``rows × ([IMG] × cols + [IMG_BREAK])`` with the
last ``[IMG_BREAK]`` replaced by ``[IMG_END]``. Only the ``[IMG]`` slots receive image features
(``Mistral3Model.get_placeholder_mask``); the break/end markers are text, as in the model.

**Without torchvision.** transformers maps ``mistral3`` to ``PixtralProcessor``, which is declared
``@requires(backends=("torchvision", "torch"))``: without torchvision ``transformers.PixtralProcessor`` is a
placeholder that raises on use, and its module cannot even be imported (it imports the torchvision image
processor). ``PixtralImageOnlyProcessor`` re-implements it on ``ProcessorMixin``: the same ``__init__`` settings
(saved under the same ``processor_config.json`` keys), the same ``_process_images`` (the image processor is called
with ``patch_size * spatial_merge_size``) and the same ``replace_image_token`` layout, with the PIL image processor
``PixtralImageProcessorPil``. Its one omission is ``_get_num_multimodal_tokens`` (a serving helper hookkit does not
call).
"""

from __future__ import annotations

from typing import Any

import transformers as T

from hookkit.models.tiny import IMAGE_TOKEN_ID, INIT, TEXT_CONFIG, TinySpec, generic_template, make_tokenizer
from hookkit.models.torchvision_free import TorchvisionFreeAdapter, TorchvisionFreeProcessor


class PixtralImageOnlyProcessor(TorchvisionFreeProcessor, T.ProcessorMixin):
    """Torchvision-free equivalent of ``PixtralProcessor`` (transformers 5, ``processing_pixtral.py``)."""

    stands_in_for = "PixtralProcessor"
    pil_image_processor = "PixtralImageProcessorPil"
    text_kwargs = {"return_tensors": "pt"}
    images_kwargs = {"return_tensors": "pt"}

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, patch_size: int = 16,
                 spatial_merge_size: int = 1, chat_template: str | None = None, image_token: str = "[IMG]",
                 image_break_token: str = "[IMG_BREAK]", image_end_token: str = "[IMG_END]", **kwargs: Any):
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        self.patch_size = patch_size
        self.spatial_merge_size = spatial_merge_size
        self.image_token = image_token
        self.image_break_token = image_break_token
        self.image_end_token = image_end_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        self.image_break_token_id = tokenizer.convert_tokens_to_ids(image_break_token)
        self.image_end_token_id = tokenizer.convert_tokens_to_ids(image_end_token)

    @property
    def image_token_ids(self) -> list[int]:
        return [self.image_token_id, self.image_break_token_id, self.image_end_token_id]

    def _process_images(self, images: Any, **images_kwargs: Any) -> Any:
        # One feature per merged patch: the image is resized to multiples of the merged patch size.
        images_kwargs["patch_size"] = self.patch_size * self.spatial_merge_size
        return super()._process_images(images, **images_kwargs)

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs: Any) -> str:
        merged = self.patch_size * self.spatial_merge_size
        height, width = (int(v) for v in image_inputs["image_sizes"][image_idx])
        row = [self.image_token] * (width // merged) + [self.image_break_token]
        tokens = row * (height // merged)
        tokens[-1] = self.image_end_token
        return "".join(tokens)

    @property
    def model_input_names(self) -> list[str]:
        return self.tokenizer.model_input_names + self.image_processor.model_input_names + ["image_sizes"]


# ---------------------------------------------------------------- tiny twin
PIXTRAL_BREAK, PIXTRAL_END = 501, 502
PIXTRAL_PATCH, PIXTRAL_MERGE, PIXTRAL_MAX_EDGE = 14, 2, 112  # an 80x120 image: 4 rows x 3 columns = 12 [IMG]


def _mistral3_config() -> T.PretrainedConfig:
    # Mistral-Small-3.1 has no sliding window (sliding_window null); the tiny twin follows it.
    return T.Mistral3Config(
        vision_config=dict(model_type="pixtral", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, image_size=PIXTRAL_MAX_EDGE, patch_size=PIXTRAL_PATCH,
                           initializer_range=INIT),
        text_config=T.MistralConfig(**TEXT_CONFIG, sliding_window=None).to_dict(), image_token_index=IMAGE_TOKEN_ID,
        spatial_merge_size=PIXTRAL_MERGE, vision_feature_layer=-1, initializer_range=INIT,
    )


def _mistral3_processor() -> PixtralImageOnlyProcessor:
    template = generic_template("[IMG]")
    tok = make_tokenizer({"[IMG]": IMAGE_TOKEN_ID, "[IMG_BREAK]": PIXTRAL_BREAK, "[IMG_END]": PIXTRAL_END},
                         chat_template=template, add_bos=True)
    ip = T.PixtralImageProcessorPil(size={"longest_edge": PIXTRAL_MAX_EDGE},
                                    patch_size={"height": PIXTRAL_PATCH, "width": PIXTRAL_PATCH})
    return PixtralImageOnlyProcessor(image_processor=ip, tokenizer=tok, patch_size=PIXTRAL_PATCH,
                                     spatial_merge_size=PIXTRAL_MERGE, chat_template=template)


class Mistral3Adapter(TorchvisionFreeAdapter):
    family = "mistral3"
    model_types = ("mistral3",)
    image_token_attrs = ("image_token_index", "image_token_id")
    fallback_processor = PixtralImageOnlyProcessor
    tiny_models = (TinySpec("tiny-mistral3", "mistral3", _mistral3_config, "Mistral3ForConditionalGeneration",
                            _mistral3_processor, "Pixtral + Mistral, [IMG] rows with [IMG_BREAK]/[IMG_END]"),)
