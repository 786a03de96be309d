"""FaceA-Net's prompt decoupling T -> (T_context, T_id), rule-based (paper §3.3).

The paper leaves the split to "a properly tuned LLM". Ours is a documented rule set, checked
against a hand-written table of every protocol prompt and hard cases
(``tests/faceanet/test_prompt_split.py``):

* the prompt is cut at commas and semicolons into phrases;
* **face phrases** (expressions: smiling, laughing, "a serious expression", eyes closed...;
  things worn on the face: glasses, sunglasses, earrings, make-up, beard, freckles...) go to
  **T_id** and are taken out of T_context, with the words that tied them to the phrase
  ("a woman smiling in a park" -> T_c "a woman in a park", T_id "a woman, smiling").
  Sunglasses *on the head* / *in the hand* (and "holding sunglasses") are not on the face:
  they stay in T_context;
* **style phrases** go to **both** halves, also when they sit inside a longer phrase:
  "an oil painting of a person" (T_id gets "oil painting"), "a person as an anime
  character", "in the style of Van Gogh", "in a cyberpunk style", "in a Renaissance
  portrait", or a phrase that is only a style ("watercolor", "anime style"). A style word
  that describes a place is scenery, not style: "in a cyberpunk city" stays in T_context;
* everything else (scene, clothing, hair, posture, "front face") goes to **T_context**;
* **the class noun reaches both halves**: T_id starts with "a man" / "a woman"; in T_context
  the first generic subject ("a person", "someone") becomes the class noun, and a T_context
  without any subject starts with "a man, " / "a woman, ". T_context is never empty.

Either part can be given by the user instead (``--context-prompt`` / ``--id-prompt``).
"""

from __future__ import annotations

import re

#: words that may lead a face phrase and are removed with it
_LEAD = r"(?:(?:with|wearing|has|having)\s+)?(?:(?:a\s+pair\s+of|an?|her|his|their)\s+)?"
FACE_PATTERNS: tuple[str, ...] = (
    r"(?:(?:big|broad|slight|gentle|warm|wide|bright)\s+)?"
    r"(?:smiling|smiles?|grinning|grin|laughing|laughs?)",
    r"(?:angry|sad|surprised|shocked|crying|frowning|serious|happy|scared|disgusted|pensive)"
    r"(?:\s+(?:face|look|(?:facial\s+)?expression))?",
    r"(?:eyes|one\s+eye)\s+(?:closed|shut|wide\s+open|open)",
    r"(?:closed|open)\s+(?:eyes|mouth)",
    r"mouth\s+(?:open|closed)",
    r"winking|pouting|(?:sticking\s+(?:the|her|his|their)\s+)?tongue\s+out",
    r"(?:(?:round|black|red|thick|thin|dark|aviator|reading|golden)\s+)*"
    r"(?:sun)?(?:glasses|eyeglasses|spectacles|goggles)",
    r"(?:(?:red|dark|heavy|light|pink|bold)\s+)*(?:lipstick|make-?up|eyeliner|eye\s+shadow)",
    r"(?:(?:gold|silver|pearl|big|hoop)\s+)*earrings|nose\s+ring",
    r"(?:(?:full|short|long|thick|grey|gray|white|red)\s+)*"
    r"(?:beard|mustache|moustache|stubble|freckles)",
    r"(?:[\w-]+\s+)?(?:facial\s+)?expression",
)
_STYLE_WORDS = (
    r"anime|manga|cartoon|comic(?:\s+book)?|pixel\s+art|pop\s+art|line\s+art|digital\s+art|"
    r"concept\s+art|3d\s+render|cyberpunk|steampunk|vaporwave|ukiyo-e|impressionist|cubist|"
    r"expressionist|surrealist|art\s+deco|art\s+nouveau|baroque|renaissance|gothic|noir|"
    r"pixar|disney|ghibli|studio\s+ghibli|low\s+poly|claymation|watercolou?r|sketch|"
    r"illustration|oil\s+painting|painting|drawing"
)
_MEDIA = r"oil|watercolou?r|acrylic|ink|pencil|charcoal|crayon|pastel|digital|gouache|chalk"
_ARTWORK = (
    r"character|characters|statue|sculpture|figurine|figure|doll|cartoon|painting|drawing|"
    r"sketch|illustration|avatar|toy|puppet|portrait|fresco|mosaic|comic|anime"
)
STYLE_PATTERNS: tuple[str, ...] = (
    # "in the style of a Pixar character", "in the style of Van Gogh"
    r"in\s+the\s+style\s+of\s+(?:(?:an?|the)\s+)?[\w'.-]+(?:\s+(?-i:[A-Z])[\w'.-]*)*"
    r"(?:\s+(?:character|characters|painting|paintings|art|artwork|movie|film|cartoon|"
    r"illustration|comic|animation))?",
    # "in a cyberpunk style", "anime style", "in pop art style"
    r"(?:in\s+)?(?:an?\s+)?(?:(?!(?:the|in|of|an?|person|man|woman)\b)[\w-]+\s+){1,3}"
    r"style(?!\s+of)",
    # "an oil painting (of)", "a pencil sketch (of)"
    r"(?:an?\s+)?(?:" + _MEDIA + r")\s+(?:painting|drawing|sketch|illustration|portrait|art)",
    # "a painting of", "a cartoon of", "an anime drawing of"
    r"(?:an?\s+)?(?:(?:" + _STYLE_WORDS + r")\s+)?"
    r"(?:painting|drawing|sketch|illustration|cartoon|caricature|render|rendering)(?=\s+of\b)",
    # "as an anime character", "as a marble statue", "as a comic book character"
    r"as\s+(?:an?\s+)?(?:[\w-]+\s+){0,2}(?:" + _ARTWORK + r")",
    # "in a Renaissance portrait", "in an anime drawing"
    r"in\s+(?:an?\s+)?(?:[\w-]+\s+){0,2}"
    r"(?:portrait|painting|drawing|sketch|illustration|cartoon|comic|anime|fresco|mosaic)"
    r"(?!\s+(?:studio|shop|gallery|museum|room|class))",
)
_FACE = re.compile(r"\b" + _LEAD + r"(?:" + "|".join(FACE_PATTERNS) + r")\b", re.IGNORECASE)
_STYLE_IN = re.compile(r"\b(?:" + "|".join(STYLE_PATTERNS) + r")\b", re.IGNORECASE)
_STYLE_ONLY = re.compile(
    r"^(?:an?\s+)?(?:(?:" + _STYLE_WORDS + r")\s*)+(?:\s+(?:style|art|painting|render))?$",
    re.IGNORECASE,
)
#: a face accessory that is not on the face ("sunglasses on the head", "holding sunglasses")
_OFF_FACE_AFTER = re.compile(
    r"\s+(?:on(?:\s+top\s+of)?|atop|in|around)\s+(?:the|her|his|their|a)\s+"
    r"(?:head|hair|forehead|hand|hands|neck|collar|shirt|pocket|table|lap)\b",
    re.IGNORECASE,
)
_OFF_FACE_BEFORE = re.compile(
    r"\b(?:holding|carrying|selling|buying|cleaning)\s+(?:(?:a\s+pair\s+of|an?|her|his|their|"
    r"some)\s+)?$",
    re.IGNORECASE,
)
_SUBJECT = re.compile(
    r"\b(?:person|people|man|men|woman|women|guy|girl|boy|lady|gentleman|someone|somebody|"
    r"individual|child|kid|he|she|self-portrait)\b",
    re.IGNORECASE,
)
_GENERIC = re.compile(
    r"\b(?:(?P<art>an?|the)\s+)?(?P<word>person|individual)\b|\b(?P<some>someone|somebody)\b",
    re.IGNORECASE,
)
_MARK = "\x00"
_CONNECTOR = r"(?:and|or|with|while)"


def _clean(text: str) -> str:
    """Whitespace collapsed; leading/trailing connectors and separators dropped."""
    text = re.sub(r"\s+", " ", text).strip(" ,;")
    previous = None
    while previous != text:
        previous = text
        text = re.sub(rf"^{_CONNECTOR}\s+|\s+{_CONNECTOR}$", "", text, flags=re.IGNORECASE)
        text = text.strip(" ,;")
    return text


def _article(noun: str) -> str:
    return "an" if noun[:1].lower() in "aeiou" else "a"


def _face_spans(phrase: str, taken: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Face phrases of ``phrase`` that overlap no style span and sit on the face."""
    spans = []
    for m in _FACE.finditer(phrase):
        s, e = m.span()
        if any(s < te and ts < e for ts, te in taken):
            continue
        if _OFF_FACE_AFTER.match(phrase, e) or _OFF_FACE_BEFORE.search(phrase[:s]):
            continue
        spans.append((s, e))
    return spans


def _without(phrase: str, spans: list[tuple[int, int]]) -> str:
    """``phrase`` with the spans and the connectors that tied them to it removed."""
    out = phrase
    for s, e in sorted(spans, reverse=True):
        out = out[:s] + _MARK + out[e:]
    previous = None
    while previous != out:
        previous = out
        out = re.sub(rf"{_MARK}\s*(?:and|or|,)?\s*{_MARK}", _MARK, out, flags=re.IGNORECASE)
        out = re.sub(rf"\s+(?:and|or|with|while)\s*{_MARK}", _MARK, out, flags=re.IGNORECASE)
    return _clean(out.replace(_MARK, " "))


def _id_text(span: str) -> str:
    """A span as it goes into T_id: whitespace collapsed, a leading article / "of" dropped."""
    text = re.sub(r"\s+", " ", span).strip()
    text = re.sub(r"\s+of$", "", text, flags=re.IGNORECASE)
    return re.sub(r"^(?:an?|and)\s+(?=\S+\s)", "", text, flags=re.IGNORECASE)


def _with_noun(context: str, noun: str) -> str:
    """T_context naming the class noun: the first generic subject replaced, else prepended."""
    article = _article(noun)

    def swap(m: re.Match) -> str:
        if m.group("some"):
            return f"{article} {noun}"
        art = m.group("art")
        if art is None:
            return noun
        return f"{article if art.lower() in ('a', 'an') else art} {noun}"

    if _GENERIC.search(context):
        return _GENERIC.sub(swap, context, count=1)
    if _SUBJECT.search(context):
        return context
    return f"{article} {noun}, {context}" if context else f"{article} {noun}"


def split_prompt(prompt: str, noun: str = "person") -> tuple[str, str]:
    """Split ``prompt`` into ``(T_context, T_id)`` by the rules of the module docstring.

    ``noun`` is the identity's class noun (``man`` / ``woman``); T_id starts with it and
    T_context names it.
    """
    context: list[str] = []
    identity: list[str] = []
    for raw in re.split(r"[,;]", prompt):
        phrase = re.sub(r"\s+", " ", raw).strip()
        if not phrase:
            continue
        if _STYLE_ONLY.match(phrase):
            context.append(phrase)
            identity.append(_id_text(phrase))
            continue
        styles = [m.span() for m in _STYLE_IN.finditer(phrase)]
        faces = _face_spans(phrase, styles)
        for s, e in sorted(styles + faces):
            identity.append(_id_text(phrase[s:e]))
        rest = _without(phrase, faces)
        if rest:
            context.append(rest)
    t_id = [f"{_article(noun)} {noun}"]
    for part in identity:
        if part.lower() not in (p.lower() for p in t_id):
            t_id.append(part)
    return _with_noun(", ".join(context), noun), ", ".join(t_id)
