"""The record of every setting that moves a task's scores, kept with results and reference scores."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tasks.fingerprints import settings_digest


@dataclass(frozen=True)
class TaskSettings:
    """How one task's prompts were built, decoded and scored."""

    task: str
    model: str
    data_source: str  # "hub:THUDM/LongBench@<commit>", a data folder, or "synthetic"
    #: middle-truncation budget of the raw prompt (None: not truncated); a prompt that would still not fit
    #: the model with its new tokens after chat wrapping is truncated further, to fit
    max_prompt_tokens: int | None
    use_chat_template: bool  # effective for this task (off for the official skip list)
    add_bos: bool  # BOS prepended to the raw prompt (chat prompts carry the template's own)
    max_new_tokens: int
    stop_on_newline: bool
    first_line_cut: bool
    metric: str
    code_sim_backend: str
    eos_token_ids: tuple[int, ...]
    newline_token_ids: tuple[int, ...]
    context_length: int | None = None  # synthetic tasks only, from here down
    needle_depth: float | None = None
    seed: int | None = None
    haystack: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def key(self) -> str:
        """Short hash of everything that changes a sample's score (the data folder's path does not)."""
        fields = {k: v for k, v in self.to_dict().items() if k != "data_source"}
        return settings_digest(fields, 12)
