"""Sign-in: password hashes, the auth file, the credentials Gradio asks, and the rule that
a non-loopback address needs sign-in."""

from __future__ import annotations

import base64
import hashlib

import pytest

from instantportrait.app import access
from instantportrait.errors import InputError


def test_hash_is_scrypt_of_the_salt_and_verifies_only_the_password():
    salt = b"0123456789abcdef"
    encoded = access.hash_password("s3cret", salt=salt)
    scheme, n, r, p, salt64, key64 = encoded.split("$")
    expected = hashlib.scrypt(b"s3cret", salt=salt, n=int(n), r=int(r), p=int(p), dklen=32)
    assert scheme == "scrypt" and base64.b64decode(key64) == expected
    assert base64.b64decode(salt64) == salt
    assert access.verify_password("s3cret", encoded)
    assert not access.verify_password("s3cret ", encoded)
    # a fresh salt each time: two hashes of one password differ, both verify
    again = access.hash_password("s3cret")
    assert again != access.hash_password("s3cret") and access.verify_password("s3cret", again)


def test_credentials_from_plain_pairs_and_a_file(tmp_path):
    file = tmp_path / "users.txt"
    assert access.write_auth_user(file, "alice", "pw:with:colons") is True
    assert access.write_auth_user(file, "bob", "bob-pw") is True
    assert access.write_auth_user(file, "alice", "new-pw") is False  # replaced, not doubled
    assert oct(file.stat().st_mode & 0o777) == "0o600"
    assert "new-pw" not in file.read_text() and file.read_text().count("alice:") == 1
    users = access.Credentials(access.read_auth_file(file), [access.parse_auth_pair("c:x:y")])
    assert users("alice", "new-pw") and users("bob", "bob-pw") and users("c", "x:y")
    assert not users("alice", "pw:with:colons") and not users("alice", "bob-pw")
    assert not users("nobody", "new-pw") and len(users) == 3


def test_bad_auth_input_is_one_line_without_the_secret(tmp_path):
    file = tmp_path / "users.txt"
    file.write_text("# users\n\nalice:plaintext-password\n")
    with pytest.raises(InputError, match="line 3: not a password hash") as info:
        access.read_auth_file(file)
    assert "plaintext-password" not in str(info.value)
    with pytest.raises(InputError, match="USER:PASSWORD"):
        access.parse_auth_pair("alice")
    with pytest.raises(InputError, match="user name"):
        access.parse_auth_pair("../x:pw")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("localhost", True),
     ("0.0.0.0", False), ("192.168.1.5", False), ("::", False), ("example.org", False)],
)  # fmt: skip
def test_non_loopback_needs_sign_in_or_the_explicit_opt_out(host, loopback):
    assert access.is_loopback(host) is loopback
    access.check_exposure(host, signed_in=True, public_without_auth=False)
    access.check_exposure(host, signed_in=False, public_without_auth=True)
    if loopback:
        access.check_exposure(host, signed_in=False, public_without_auth=False)
    else:
        with pytest.raises(InputError, match="--public-without-auth"):
            access.check_exposure(host, signed_in=False, public_without_auth=False)
