"""The Personalise operations (FaceA-Net): tune one step on the tiny inpainting model, then
repaint a context photo with the tuned person."""

from __future__ import annotations

import pytest

from instantportrait.errors import InputError

pytest.importorskip("peft")


def test_tune_then_repaint_a_context_photo(methods, astronaut_path, grace_hopper_path):
    personaliser = methods.get("faceanet")
    identity = personaliser.tune("user:ann", [astronaut_path], "woman")
    assert personaliser.identities("user:ann")[-1] == identity
    res = personaliser.generate("user:ann", identity, "a woman, smiling",
                                context_image=grace_hopper_path, steps=1)  # fmt: skip
    from PIL import Image

    assert res.image.size == Image.open(grace_hopper_path).size
    with pytest.raises(InputError, match="no context model") as info:
        personaliser.generate("user:ann", identity, "a woman")
    assert "--" not in str(info.value)  # a web user has no command line
    with pytest.raises(InputError, match="tune a person first"):
        personaliser.generate("user:ann", "../etc", "x", context_image=grace_hopper_path)
    with pytest.raises(InputError, match="1 to 3"):
        personaliser.tune("user:ann", [], "woman")
    # the uploaded photos are gone once tuning ends; the LoRA stays
    folder = personaliser.store.find("user:ann", identity)
    assert not (folder / "photos").exists() and (folder / "run" / "final").is_dir()


def test_a_face_free_photo_is_one_line_and_leaves_no_run(methods, astronaut_path):
    from PIL import Image

    personaliser = methods.get("faceanet")
    before = personaliser.identities("user:ann")
    flat = Image.new("RGB", (96, 96), (120, 130, 140))
    with pytest.raises(InputError) as info:
        personaliser.tune("user:ann", [astronaut_path, flat], "man")
    # the web user's words: which photo, no server path, no command-line option
    assert str(info.value).startswith("photo 2: no face found")
    assert "/" not in str(info.value) and "--" not in str(info.value)
    assert personaliser.identities("user:ann") == before
    owners = [p for p in personaliser.root.iterdir()]
    assert all((i / "run" / "final").is_dir() for o in owners for i in o.iterdir())


def test_limits_per_owner_are_one_line_each(methods, astronaut_path):
    """A second tuning of one owner while the first runs, and one past the stored cap."""
    personaliser = methods.get("faceanet")
    with personaliser._tuning_job("user:cy"):  # cy's first tuning is running
        with pytest.raises(InputError, match="already running") as info:
            personaliser.tune("user:cy", [astronaut_path], "woman")
        assert "\n" not in str(info.value)
        assert personaliser.identities("user:cy") == []
        with personaliser._tuning_job("user:dee"):  # another owner is not held back
            pass
    cap, personaliser.max_identities = personaliser.max_identities, 1
    try:
        personaliser.tune("user:cy", [astronaut_path], "woman", steps=1)
        with pytest.raises(InputError, match="delete one first"):
            personaliser.tune("user:cy", [astronaut_path], "woman", steps=1)
        personaliser.delete("user:cy", personaliser.identities("user:cy")[0])
        personaliser.tune("user:cy", [astronaut_path], "woman", steps=1)  # room again
    finally:
        personaliser.max_identities = cap


def test_keep_photos_keeps_them_beside_the_identity_until_it_is_deleted(methods, astronaut_path):
    personaliser = methods.get("faceanet")
    personaliser.keep_photos = True
    try:
        identity = personaliser.tune("user:eve", [astronaut_path, astronaut_path], "woman")
    finally:
        personaliser.keep_photos = False
    folder = personaliser.store.find("user:eve", identity)
    assert sorted(p.name for p in (folder / "photos").iterdir()) == ["0.png", "1.png"]
    personaliser.delete("user:eve", identity)
    assert not folder.exists() and personaliser.identities("user:eve") == []
