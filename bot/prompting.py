"""From what a user typed to the caption a model sees, checked: the one path for `/pony`, every
button job and the local `ponybot draw`."""

from __future__ import annotations

from collections.abc import Iterable

from bot import policy, tags
from bot.errors import UserFacingError
from bot.options import PonyOptions
from ponybot_core.config import Config, ModelEntry


def render_prompt(
    options: PonyOptions, entry: ModelEntry, config: Config, *, age_restricted: bool,
    blocked_tags: Iterable[str] = (),
) -> tuple[tags.RenderedPrompt, tuple[str, ...]]:
    """Read the user's tags, write them in the model's caption language, and check that
    caption against the channel and the server (bot.policy); also returns the remarks the
    user should see (tags left out, rewritten, never seen by the model)."""
    try:
        prompt = tags.parse_tags(options.tags, options.negative, profile=entry.caption)
        tags.validate(prompt, config.limits)
        rendered = tags.render(prompt, entry, age_restricted=age_restricted)
    except tags.TagError as exc:
        raise UserFacingError(str(exc)) from exc
    policy.check_caption(rendered.positive, config=config, age_restricted=age_restricted,
                         blocked_tags=blocked_tags)
    return rendered, (*prompt.notes, *rendered.notes)
