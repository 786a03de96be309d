"""FaceA-Net's prompt decoupling T -> (T_context, T_id), rule-based (paper §3.3).

The paper leaves the split to "a properly tuned LLM". Ours is a documented rule set:

* the prompt is cut at commas and semicolons into phrases;
* face phrases (expressions: smiling, laughing, angry...; accessories worn on the face:
  glasses, sunglasses, earrings, makeup, beard...) go to **T_id**; inside a longer phrase the
  matching words are taken out ("a woman smiling in a park" -> T_id "smiling",
  T_c "a woman in a park");
* style phrases (watercolor, oil painting, anime, "in the style of ...") go to **both**;
* everything else (scene, clothing, posture) goes to **T_context**;
* the class noun ("a woman" / "a man") starts T_id, so the inpainting model knows the subject.

Either part can be given by the user instead (``--context-prompt`` / ``--id-prompt``).
"""

from __future__ import annotations

import re

FACE_PATTERNS: tuple[str, ...] = (
    r"(?:big |broad |slight |gentle |warm )?(?:smiling|smiles?|grinning|grin|laughing|laughs?)",
    r"(?:angry|sad|surprised|shocked|crying|frowning|serious|happy|scared|disgusted)"
    r"(?: (?:face|expression|look))?",
    r"(?:with )?(?:eyes|one eye) (?:closed|shut|open)",
    r"(?:with (?:an? )?)?(?:open|closed) mouth",
    r"winking|pouting|sticking (?:the|her|his) tongue out|tongue out",
    r"(?:wearing |with )?(?:a pair of )?(?:round |black |red |thick |thin )?"
    r"(?:sun)?(?:glasses|eyeglasses|spectacles|goggles)",
    r"(?:wearing |with )?(?:red |dark |heavy |light )?(?:lipstick|makeup|eyeliner|eye shadow)",
    r"(?:wearing |with )?(?:gold |silver |pearl |big )?earrings",
    r"(?:with (?:a |an )?)?(?:full |short |long |thick )?"
    r"(?:beard|mustache|moustache|stubble|freckles)",
    r"(?:with (?:an? )?)?(?:\w+ )?(?:expression|facial expression)",
)
STYLE_PATTERNS: tuple[str, ...] = (
    r"in the style of [\w .'-]+",
    r"[\w -]*\bstyle\b",
    r"(?:an? )?(?:watercolou?r|oil|acrylic|ink|pencil|charcoal|digital)"
    r"(?: painting| drawing| sketch| illustration)?",
    r"(?:an? )?(?:anime|manga|cartoon|comic|pixel art|pop art|3d render|clay|lego|sketch|"
    r"illustration|painting|drawing|cyberpunk|steampunk|ukiyo-e|impressionist|cubist)\b[\w ]*",
)
_FACE = re.compile(r"\b(?:" + "|".join(FACE_PATTERNS) + r")\b", re.IGNORECASE)
_STYLE = re.compile(r"^\s*(?:" + "|".join(STYLE_PATTERNS) + r")\s*$", re.IGNORECASE)
_DANGLING = re.compile(r"^(?:and|with|while|,)\s+|\s+(?:and|with|while)$", re.IGNORECASE)


def _clean(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip(" ,;")
    previous = None
    while previous != text:
        previous, text = text, _DANGLING.sub("", text).strip(" ,;")
    return text


def split_prompt(prompt: str, noun: str = "person") -> tuple[str, str]:
    """Split ``prompt`` into ``(T_context, T_id)`` by the rules of the module docstring.

    ``noun`` is the identity's class noun (``man`` / ``woman``); T_id starts with it.
    """
    context: list[str] = []
    identity: list[str] = []
    for raw in re.split(r"[,;]", prompt):
        phrase = _clean(raw)
        if not phrase:
            continue
        if _STYLE.match(phrase):
            context.append(phrase)
            identity.append(phrase)
            continue
        found = [m.group(0).strip() for m in _FACE.finditer(phrase)]
        if found:
            identity.extend(found)
            rest = _clean(_FACE.sub(" ", phrase))
            if rest:
                context.append(rest)
        else:
            context.append(phrase)
    article = "an" if noun[:1].lower() in "aeiou" else "a"
    t_id = ", ".join([f"{article} {noun}", *identity])
    return ", ".join(context), t_id
