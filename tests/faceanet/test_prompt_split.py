"""The prompt split against a table written by hand: every protocol prompt and hard cases.

Each row was decided by reading the prompt, not by running the splitter: style goes to both
halves (also inside a longer phrase), the class noun reaches T_context, face phrases leave it
without garbling it, and T_context is never only "front face".
"""

from __future__ import annotations

import pytest

from instantportrait.pipelines.prompt_split import split_prompt

W = "woman"
FF = ", front face"

#: the 40 protocol prompts (identity: a woman) -> (T_context, T_id)
PROTOCOL: dict[str, tuple[str, str]] = {
    "a photo of a person in a snowy forest, front face": (
        "a photo of a woman in a snowy forest" + FF,
        "a woman",
    ),
    "a photo of a person on a beach at sunset, front face": (
        "a photo of a woman on a beach at sunset" + FF,
        "a woman",
    ),
    "a photo of a person in a busy city street at night, front face": (
        "a photo of a woman in a busy city street at night" + FF,
        "a woman",
    ),
    "a photo of a person in a library, front face": (
        "a photo of a woman in a library" + FF,
        "a woman",
    ),
    "a photo of a person in a flower field, front face": (
        "a photo of a woman in a flower field" + FF,
        "a woman",
    ),
    "a photo of a person in front of the Eiffel Tower, front face": (
        "a photo of a woman in front of the Eiffel Tower" + FF,
        "a woman",
    ),
    "a photo of a person in a coffee shop, front face": (
        "a photo of a woman in a coffee shop" + FF,
        "a woman",
    ),
    "a photo of a person on a mountain top, front face": (
        "a photo of a woman on a mountain top" + FF,
        "a woman",
    ),
    "a photo of a person in the rain with an umbrella, front face": (
        "a photo of a woman in the rain with an umbrella" + FF,
        "a woman",
    ),
    "a photo of a person in a kitchen, front face": (
        "a photo of a woman in a kitchen" + FF,
        "a woman",
    ),
    "a photo of a person wearing a red scarf, front face": (
        "a photo of a woman wearing a red scarf" + FF,
        "a woman",
    ),
    "a photo of a person wearing a black suit and tie, front face": (
        "a photo of a woman wearing a black suit and tie" + FF,
        "a woman",
    ),
    "a photo of a person wearing a straw hat, front face": (
        "a photo of a woman wearing a straw hat" + FF,
        "a woman",
    ),
    "a photo of a person wearing a leather jacket, front face": (
        "a photo of a woman wearing a leather jacket" + FF,
        "a woman",
    ),
    "a photo of a person wearing a spacesuit, front face": (
        "a photo of a woman wearing a spacesuit" + FF,
        "a woman",
    ),
    "a photo of a person wearing a chef's uniform, front face": (
        "a photo of a woman wearing a chef's uniform" + FF,
        "a woman",
    ),
    "a photo of a person wearing a hoodie, front face": (
        "a photo of a woman wearing a hoodie" + FF,
        "a woman",
    ),
    # sunglasses on the head are not on the face: the whole phrase is context
    "a photo of a person wearing sunglasses on the head, front face": (
        "a photo of a woman wearing sunglasses on the head" + FF,
        "a woman",
    ),
    "a photo of a person wearing a knitted sweater, front face": (
        "a photo of a woman wearing a knitted sweater" + FF,
        "a woman",
    ),
    "a photo of a person wearing a medieval armor, front face": (
        "a photo of a woman wearing a medieval armor" + FF,
        "a woman",
    ),
    "a photo of a person smiling, front face": ("a photo of a woman" + FF, "a woman, smiling"),
    "a photo of a person laughing, front face": ("a photo of a woman" + FF, "a woman, laughing"),
    "a photo of a person with a serious expression, front face": (
        "a photo of a woman" + FF,
        "a woman, with a serious expression",
    ),
    # hair: mostly outside the face box, drawn by the context model
    "a photo of a person with curly hair, front face": (
        "a photo of a woman with curly hair" + FF,
        "a woman",
    ),
    "a photo of a person with short hair, front face": (
        "a photo of a woman with short hair" + FF,
        "a woman",
    ),
    "a photo of a person holding a cup of coffee, front face": (
        "a photo of a woman holding a cup of coffee" + FF,
        "a woman",
    ),
    "a photo of a person holding a book, front face": (
        "a photo of a woman holding a book" + FF,
        "a woman",
    ),
    "a photo of a person playing a guitar, front face": (
        "a photo of a woman playing a guitar" + FF,
        "a woman",
    ),
    "a photo of a person riding a bicycle, front face": (
        "a photo of a woman riding a bicycle" + FF,
        "a woman",
    ),
    "a photo of a person with a dog, front face": ("a photo of a woman with a dog" + FF, "a woman"),
    # styles: in both halves, also inside a longer phrase
    "an oil painting of a person, front face": (
        "an oil painting of a woman" + FF,
        "a woman, oil painting",
    ),
    "a watercolor painting of a person, front face": (
        "a watercolor painting of a woman" + FF,
        "a woman, watercolor painting",
    ),
    "a pencil sketch of a person, front face": (
        "a pencil sketch of a woman" + FF,
        "a woman, pencil sketch",
    ),
    "a person in the style of a Pixar character, front face": (
        "a woman in the style of a Pixar character" + FF,
        "a woman, in the style of a Pixar character",
    ),
    "a person as an anime character, front face": (
        "a woman as an anime character" + FF,
        "a woman, as an anime character",
    ),
    "a person in a cyberpunk style, front face": (
        "a woman in a cyberpunk style" + FF,
        "a woman, in a cyberpunk style",
    ),
    "a person as a marble statue, front face": (
        "a woman as a marble statue" + FF,
        "a woman, as a marble statue",
    ),
    "a person in a Renaissance portrait, front face": (
        "a woman in a Renaissance portrait" + FF,
        "a woman, in a Renaissance portrait",
    ),
    "a person in pop art style, front face": (
        "a woman in pop art style" + FF,
        "a woman, in pop art style",
    ),
    "a person as a comic book character, front face": (
        "a woman as a comic book character" + FF,
        "a woman, as a comic book character",
    ),
}

#: hard cases: (prompt, noun) -> (T_context, T_id)
HARD: dict[tuple[str, str], tuple[str, str]] = {
    ("a woman smiling in a park, wearing a red dress", W): (
        "a woman in a park, wearing a red dress",
        "a woman, smiling",
    ),
    ("a man wearing sunglasses on a beach, watercolor painting", "man"): (
        "a man on a beach, watercolor painting",
        "a man, wearing sunglasses, watercolor painting",
    ),
    # no subject at all: the class noun starts T_context
    ("in a library, reading a book", "man"): ("a man, in a library, reading a book", "a man"),
    # only a face phrase: T_context is the class noun, not empty
    ("smiling", W): ("a woman", "a woman, smiling"),
    ("sunglasses", "man"): ("a man", "a man, sunglasses"),
    # a possessive face phrase leaves no "a woman with her"
    ("a woman with her eyes closed, in a garden", W): (
        "a woman, in a garden",
        "a woman, with her eyes closed",
    ),
    ("a person wearing sunglasses on the head at the beach", W): (
        "a woman wearing sunglasses on the head at the beach",
        "a woman",
    ),
    ("a man holding sunglasses in a shop", "man"): ("a man holding sunglasses in a shop", "a man"),
    # a style word describing a place is scenery
    ("a person in a cyberpunk city at night", W): (
        "a woman in a cyberpunk city at night",
        "a woman",
    ),
    ("portrait of someone laughing, anime style", "man"): (
        "portrait of a man, anime style",
        "a man, laughing, anime style",
    ),
    ("an oil painting of a man with a beard wearing a hat", "man"): (
        "an oil painting of a man wearing a hat",
        "a man, oil painting, with a beard",
    ),
    ("a girl wearing glasses and red lipstick in a cafe", W): (
        "a girl in a cafe",
        "a woman, wearing glasses, red lipstick",
    ),
    ("a person in the style of Van Gogh, smiling", W): (
        "a woman in the style of Van Gogh",
        "a woman, in the style of Van Gogh, smiling",
    ),
    ("close-up of a person with freckles and a surprised expression, studio lighting", W): (
        "close-up of a woman, studio lighting",
        "a woman, with freckles, surprised expression",
    ),
    ("a man in a portrait studio, wearing a suit", "man"): (
        "a man in a portrait studio, wearing a suit",
        "a man",
    ),
}


def test_the_table_covers_every_shipped_protocol_prompt():
    from instantportrait.evaluation.protocols import load_protocol

    shipped = {p.text for p in load_protocol("faceanet").prompts}
    assert shipped == set(PROTOCOL)


@pytest.mark.parametrize("prompt", list(PROTOCOL))
def test_protocol_prompt_split(prompt):
    assert split_prompt(prompt, W) == PROTOCOL[prompt]


@pytest.mark.parametrize("key", list(HARD), ids=[k[0][:40] for k in HARD])
def test_hard_prompt_split(key):
    assert split_prompt(*key) == HARD[key]


def test_every_style_prompt_sends_its_style_to_both_halves():
    # the 10 style prompts of the protocol: T_id must carry more than the class noun
    for prompt in PROTOCOL:
        if "photo of" in prompt:
            continue
        got_c, got_id = split_prompt(prompt, W)
        assert got_id != "a woman", prompt
        assert got_id.split(", ", 1)[1].lower() in got_c.lower(), prompt
