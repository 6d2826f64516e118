"""Fail early when a text will not fit in the model's context window.

``check_context(model, lengths_or_prompts, what, hint)`` raises :class:`abft.errors.UserError` when the longest item is
longer than the model's ``max_position_embeddings`` (models without that setting are not checked). Items are token
counts (ints) or objects with ``input_ids`` (e.g. ``Prompt``); ``what`` names them in the message ("a prompt",
"a template prompt (normal)", "a MAUVE text") and ``hint`` says what to change (by default: lower k).

    check_context(model, [len(ids) for ids in texts], "a MAUVE text", "use shorter prefixes")
    -> UserError: a MAUVE text has 2100 tokens, more than the model's context of 2048; use shorter prefixes
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import UserError, param


def context_limit(model) -> int | None:
    """The model's context length (``max_position_embeddings`` of its text config), or None if it has none."""
    return getattr(model.config.get_text_config(), "max_position_embeddings", None)


def check_context(
    model, lengths_or_prompts: Iterable, what: str = "a prompt", hint: str = f"lower {param('k')}"
) -> None:
    """Raise UserError if the longest of `lengths_or_prompts` (ints or objects with `input_ids`) exceeds the context."""
    limit = context_limit(model)
    if not limit:
        return
    longest = max((n if isinstance(n, int) else len(n.input_ids) for n in lengths_or_prompts), default=0)
    if longest > limit:
        raise UserError(f"{what} has {longest} tokens, more than the model's context of {limit}; {hint}")
