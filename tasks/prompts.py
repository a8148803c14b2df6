"""Prompt text -> token ids, the way LongBench's pred.py does it.

Order matters for parity: the raw prompt (with BOS when enabled) is middle-truncated in tokens to the
budget, by decoding the first and last halves and joining the strings; only then is it wrapped in the chat
template (when enabled for the model and allowed for the task). An answer prefix (RULER style) goes after
the wrapper, i.e. into the assistant turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class Tokenizer(Protocol):
    """The part of a Hugging Face tokenizer that prompt building uses."""

    bos_token_id: int | None
    eos_token_id: int | None
    pad_token_id: int | None
    chat_template: str | None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str: ...

    def apply_chat_template(self, conversation: list[dict], **kwargs) -> str: ...


def tokenizer_adds_bos(tokenizer: Tokenizer) -> bool:
    """Whether plain `tokenizer(text)` starts with BOS (what the official pipeline gets by default)."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer.encode("a", add_special_tokens=True)[:1] == [bos]


@dataclass(frozen=True)
class PromptBuilder:
    """Builds token ids for one model's tokenizer and settings."""

    tokenizer: Tokenizer
    use_chat_template: bool
    add_bos: bool

    def __post_init__(self) -> None:
        if self.use_chat_template and not self.tokenizer.chat_template:
            raise ValueError("use_chat_template is on but the tokenizer has no chat template; set it to false.")
        if self.add_bos and self.tokenizer.bos_token_id is None:
            raise ValueError("add_bos is on but the tokenizer has no BOS token; set it to false.")

    def encode_raw(self, text: str) -> list[int]:
        """Token ids of a prompt without chat wrapping (BOS first when enabled)."""
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return [self.tokenizer.bos_token_id, *ids] if self.add_bos else ids

    def truncate_middle(self, text: str, budget: int) -> tuple[str, bool]:
        """Keep the first and last budget//2 tokens (BOS counted, as officially) when the prompt exceeds budget."""
        ids = self.encode_raw(text)
        if len(ids) <= budget:
            return text, False
        half = budget // 2
        decode = self.tokenizer.decode
        return decode(ids[:half], skip_special_tokens=True) + decode(ids[-half:], skip_special_tokens=True), True

    def chat_applies(self, chat_template_allowed: bool) -> bool:
        return self.use_chat_template and chat_template_allowed

    def build(
        self, text: str, *, chat_template_allowed: bool = True, answer_prefix: str = "", budget: int | None = None
    ) -> tuple[list[int], bool]:
        """Token ids of the final prompt and whether it was truncated."""
        truncated = False
        if budget is not None:
            text, truncated = self.truncate_middle(text, budget)
        if not self.chat_applies(chat_template_allowed):
            return self.encode_raw(text + answer_prefix), truncated
        wrapped = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
        )
        # The template text spells out its own special tokens (BOS included), so add none.
        return self.tokenizer.encode(wrapped + answer_prefix, add_special_tokens=False), truncated
