"""From what a user typed to the caption a model sees, checked: the path for `/pony`, ✏️ Edit
and the local `ponybot draw` (through ponybot_request.jobs.build_job)."""

from __future__ import annotations

from collections.abc import Iterable

from ponybot_core.config import Config, ModelEntry
from ponybot_request import policy, tags
from ponybot_request.errors import UserFacingError
from ponybot_request.options import PonyOptions


def render_prompt(
    options: PonyOptions, entry: ModelEntry, config: Config, *, age_restricted: bool,
    blocked_tags: Iterable[str] = (), quality_prefix: bool = True,
) -> tuple[tags.RenderedPrompt, tuple[str, ...]]:
    """Read the user's tags, write them in the model's caption language (after its card's
    quality prefix unless the server turned it off), and apply the channel's and the server's
    policy to that caption (ponybot_request.policy.apply); also returns the remarks the user
    should see (tags left out, rewritten, never seen)."""
    try:
        prompt = tags.parse_tags(options.tags, options.negative, profile=entry.caption)
        tags.validate(prompt, config.limits)
        rendered = tags.render(prompt, entry, age_restricted=age_restricted,
                               quality_prefix=quality_prefix)
    except tags.TagError as exc:
        raise UserFacingError(str(exc)) from exc
    allowed = policy.apply(rendered.positive, rendered.negative, model=entry, config=config,
                           age_restricted=age_restricted, blocked_tags=blocked_tags)
    if (allowed.positive, allowed.negative) != (rendered.positive, rendered.negative):
        rendered = rendered.model_copy(update={"positive": allowed.positive,
                                               "negative": allowed.negative})
    return rendered, (*prompt.notes, *rendered.notes, *allowed.notes)
