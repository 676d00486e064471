"""POPE prompt presets (eval-protocols.md §1.3): how each lineage words the question."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PromptPreset:
    """A POPE prompt: the question followed by ``suffix`` (byte-exact protocol data)."""

    name: str
    suffix: str
    source: str

    def format(self, question: str) -> str:
        return question + self.suffix


#: Named POPE prompt presets (§1.3).  The question is used as is (no stripping).
POPE_PROMPT_PRESETS: dict[str, PromptPreset] = {
    "llava15": PromptPreset(
        "llava15",
        "\nAnswer the question using a single word or phrase.",
        "LLaVA-1.5 official eval and lmms-eval post_prompt",
    ),
    "plain": PromptPreset("plain", "", "OPERA / PAI: raw question in the model's chat template"),
    "vcd": PromptPreset("vcd", " Please answer this question with one word.", "VCD"),
}


def get_prompt_preset(name: str) -> PromptPreset:
    """Look up a prompt preset; unknown names raise ``KeyError`` listing the allowed ones."""
    try:
        return POPE_PROMPT_PRESETS[name]
    except KeyError:
        allowed = ", ".join(sorted(POPE_PROMPT_PRESETS))
        raise KeyError(f"unknown POPE prompt preset {name!r}; allowed: {allowed}") from None


def build_pope_prompt(question: str, preset: str = "llava15") -> str:
    """The user-turn text for a POPE question under a named preset (chat templating is the caller's job)."""
    return get_prompt_preset(preset).format(question)
