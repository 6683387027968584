"""The V1 run's caption builder, transcribed for golden tests: what caption a training image got.

Source: github.com/LunNova/translunar-diffusion @ 06e6206f38e51f9175bc0dbc60371cb3a96d845e (the
first commit, 2022-09-28). `training_caption` is the caption part of
data/metadata/metadata.py's `load_images_using_metadata`, line for line, minus file handling;
`METADATA_PARAMS` is configs/training-txt2img.yaml's data.params.train.params.metadata_params,
copied by hand from that file (not from our config.toml, which the tests compare against it).
"""

from __future__ import annotations

import random

METADATA_PARAMS: dict = {
    "shuffle_tag_p": 0.5,
    "blacklist_tags": [
        "animated", "barely pony related", "equestria girls", "irl human", "human", "ych",
        "machine learning generated", "nazi", "oc:aryanne", "racial slur", "racist",
        "drama bait", "deviantart stamp", "text only", "forced meme", "not pony related",
        "comic", "speech bubble", "speech", "image macro", "dialogue", "tumblr", "explicit",
        "questionable", "fetish", "immobile", "morbidly obese", "hyper", "inflation", "jailbait",
        "implied foalcon", "foalcon", "diaper", "diaper fetish",
    ],
    "non_caption_tags": [
        "absurd resolution", "absurd res", "high res", "alternate version", "commission",
        "ych result", "scene interpretation", "shipping", "straight", "lesbian", "gay",
        "crossover", "recolor", "trace", "source needed", "alicorn oc", "oc", "oc only",
        "canon x oc", "busty oc", "anthro oc", "solo female", "solo male", "commission",
        "textless version", "derpibooru exclusive", "edit", "color edit",
        "story in the comments", "translated in the comments", "clopfic in the comments",
        "discussion in the comments", "derail in the comments",
    ],
    # YAML mappings keep their order through OmegaConf.to_container: this is the order applied.
    "replacements": {
        "princess cadance": "cadance", "princess luna": "luna", "nightmare moon": "nmm",
        "shining armor": "shiny", "gleaming shield": "gs", "queen chrysalis": "chrissy",
        "princess celestia": "celestia", "twilight sparkle": "twilight",
        "rainbow dash": "dashie", "pinkie pie": "pinkie", "applejack": "aj",
        "vinyl scratch": "vinyl", "octavia melody": "octavia", "tempest shadow": "tshadow",
        "lyra heartstrings": "lyra", "maud pie": "maud", "izzy moonbow": "izzy",
        "big macintosh": "bigmac", "derpy hooves": "derpy", "starlight glimmer": "glim",
        "apple bloom": "abloom", "sunset shimmer": "sunshim", "sweetie belle": "sbelle",
        "soarin'": "soarin", "artist:": "by:", ":": "=",
    },
    "abs_min_score": 50,
    "min_score": 200,
    "score_tags": [3200, 1600, 800, 600, 400, 300, 200, 150, 100, 50, 25, 5],
    "tag_bonus_scores": {
        "solo": 100, "duo": 100, "space pony": 50, "plane pony": 50, "robot": 50,
        "robot pony": 50, "pride flag": 50, "transgender pride flag": 50, "nightmare moon": 50,
        "princess luna": 50, "queen chrysalis": 50, "monochrome": -75, "grayscale": -75,
        "sketch": -75,
    },
}
# The function's default; the config does not set it.
TAG_SEPARATOR = ", "


def training_caption(tags: list[str], score: int, rng: random.Random) -> str | None:
    """The caption the image got, or None if training left the image out."""
    p = METADATA_PARAMS
    if score < p["abs_min_score"]:
        return None
    tags = list(tags)
    for i in p["score_tags"]:
        if score >= i:
            tags.append(f"scr{i}")
            break
    for k, v in p["tag_bonus_scores"].items():
        if k in tags:
            score += int(v)
    if score < p["min_score"]:
        return None
    if any(x for x in p["blacklist_tags"] if x in tags):
        return None
    non_caption = set(p["non_caption_tags"])
    tags = [t for t in tags if t not in non_caption]
    if rng.random() < p["shuffle_tag_p"]:
        rng.shuffle(tags)
    else:
        tags.sort()  # the real key (lun.local.tag_sort) is unpublished; order is not compared
    caption = TAG_SEPARATOR.join(tags)
    for rk, rv in p["replacements"].items():
        caption = caption.replace(rk, rv)
    return caption
