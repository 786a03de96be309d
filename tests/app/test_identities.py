"""The identity store: each owner's own folder, the same answer for someone else's id as for
an unknown one, deletion of every file, retention by age."""

from __future__ import annotations

import json
import os
import time

import pytest

from instantportrait.app.identities import UNKNOWN, IdentityStore, RetentionSweeper, owner_key
from instantportrait.errors import InputError


def tuned(store: IdentityStore, owner: str, *, age_hours: float = 0.0) -> str:
    """An identity as tuning leaves it (a LoRA file under run/final), ``age_hours`` old."""
    identity, folder = store.create(owner)
    (folder / "run" / "final").mkdir(parents=True)
    (folder / "run" / "final" / "lora.safetensors").write_bytes(b"weights")
    (folder / "photos").mkdir()
    (folder / "photos" / "0.png").write_bytes(b"face")
    meta = folder / "identity.json"
    meta.write_text(json.dumps({"created": time.time() - age_hours * 3600}))
    store.release(folder)
    return identity


def test_an_owner_sees_uses_and_deletes_only_their_own(tmp_path):
    store = IdentityStore(tmp_path / "faceanet")
    a = tuned(store, "user:alice")
    assert store.list("user:alice") == [a] and store.list("user:bob") == []
    with pytest.raises(InputError) as other:
        store.find("user:bob", a)
    with pytest.raises(InputError) as unknown:
        store.find("user:bob", "20990101-000000-abcdef")
    with pytest.raises(InputError) as path:
        store.find("user:bob", "../" + owner_key("user:alice") + "/" + a)
    assert str(other.value) == str(unknown.value) == str(path.value) == UNKNOWN
    with pytest.raises(InputError, match="no such identity"):
        store.delete("user:bob", a)
    assert store.find("user:alice", a).is_dir()
    # names never reach the disk: the owner's folder is a hash
    assert not any("alice" in p.name for p in tmp_path.rglob("*"))


def test_delete_removes_every_file_of_the_identity(tmp_path):
    forgotten = []
    store = IdentityStore(tmp_path / "faceanet", on_remove=forgotten.append)
    keep, gone = tuned(store, "user:alice"), tuned(store, "user:alice")
    folder = store.find("user:alice", gone)
    store.delete("user:alice", gone)
    left = [p for p in tmp_path.rglob("*")]
    assert not any(gone in str(p) for p in left)
    assert forgotten == [folder]  # the cached pipeline is dropped too
    assert store.list("user:alice") == [keep]


def test_retention_removes_only_aged_identities_and_leaves_running_tunings(tmp_path):
    store = IdentityStore(tmp_path / "faceanet")
    old = tuned(store, "user:alice", age_hours=3)
    fresh = tuned(store, "user:bob", age_hours=1)
    running, folder = store.create("user:carol")  # tuning now; created long ago
    (folder / "identity.json").write_text(json.dumps({"created": time.time() - 10 * 3600}))
    sweeper = RetentionSweeper(store, hours=2, interval=3600)
    sweeper.start()  # checked at start
    sweeper.stop()
    assert store.list("user:alice") == [] and store.list("user:bob") == [fresh]
    assert folder.is_dir()
    assert not (tmp_path / "faceanet" / owner_key("user:alice")).exists()
    assert old not in str(list(tmp_path.rglob("*")))


def test_retention_without_a_metadata_file_uses_the_folder_time(tmp_path):
    store = IdentityStore(tmp_path / "faceanet")
    ident = tuned(store, "user:alice")
    folder = store.find("user:alice", ident)
    (folder / "identity.json").unlink()
    past = time.time() - 5 * 3600
    os.utime(folder, (past, past))
    assert store.expire(4) == 1 and store.list("user:alice") == []
