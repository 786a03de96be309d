"""The Personalise operations (FaceA-Net): tune one step on the tiny inpainting model, then
repaint a context photo with the tuned person."""

from __future__ import annotations

import pytest

from instantportrait.errors import InputError

pytest.importorskip("peft")


def test_tune_then_repaint_a_context_photo(methods, astronaut_path, grace_hopper_path):
    personaliser = methods.get("faceanet")
    identity = personaliser.tune([astronaut_path], "woman")
    assert personaliser.identities()[-1] == identity
    res = personaliser.generate(identity, "a woman, smiling", context_image=grace_hopper_path,
                                steps=1)  # fmt: skip
    from PIL import Image

    assert res.image.size == Image.open(grace_hopper_path).size
    with pytest.raises(InputError, match="--faceanet-context-model"):
        personaliser.generate(identity, "a woman")
    with pytest.raises(InputError, match="tune a person first"):
        personaliser.generate("../etc", "x", context_image=grace_hopper_path)
    with pytest.raises(InputError, match="1 to 3"):
        personaliser.tune([], "woman")


def test_a_face_free_photo_is_one_line_and_leaves_no_run(methods, tmp_path):
    from PIL import Image

    personaliser = methods.get("faceanet")
    before = personaliser.identities()
    flat = Image.new("RGB", (96, 96), (120, 130, 140))
    with pytest.raises(InputError) as info:
        personaliser.tune([flat], "man")
    assert "\n" not in str(info.value)
    assert personaliser.identities() == before
    assert all((p / "run" / "final").is_dir() for p in personaliser.root.iterdir())
