"""Name rules: bad names are refused by every operation, before any I/O."""

from __future__ import annotations

import pytest

from pemn.store import MAX_NAME_LENGTH, InvalidName, Store, validate_content_id, validate_name
from tests.store.bundles import bundle
from tests.store.conftest import Target

BAD_NAMES = [
    "",
    ".",
    "..",
    "../x",
    "../../etc/passwd",
    ".hidden",
    "a/b",
    "a\\b",
    "/abs",
    "x:blob:" + "0" * 64,  # key injection: would address a blob in Redis
    "x:heads",
    "heads/../x",
    "*",
    "a*",
    "a?b",
    "{tag}",
    "a b",
    " a",
    "a\n",
    "a\x00b",
    "a\tb",
    "a\x7fb",
    "Upper",
    "é",
    "-lead",
    "_lead",
    "%2e%2e",
    "a" * (MAX_NAME_LENGTH + 1),
]
GOOD_NAMES = ["a", "0", "a" * MAX_NAME_LENGTH, "fashion-mnist.mlp_v2", "x..y", "1.0"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidName) as exc:
        validate_name(name, store="file:///s")
    assert exc.value.code == "store.invalid_name"
    assert "allowed: 1-128 characters from a-z 0-9 . _ -" in str(exc.value)
    assert "file:///s" in str(exc.value)
    assert isinstance(exc.value, ValueError)


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_good_names_pass(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", [None, 5, b"abc", ["a"]])
def test_names_must_be_strings(name: object) -> None:
    with pytest.raises(InvalidName, match="must be a string"):
        validate_name(name)


def test_message_says_what_is_wrong() -> None:
    with pytest.raises(InvalidName, match="it contains '/'"):
        validate_name("a/b")
    with pytest.raises(InvalidName, match="it is empty"):
        validate_name("")
    with pytest.raises(InvalidName, match="it has 129 characters"):
        validate_name("a" * 129)
    with pytest.raises(InvalidName, match=r"it starts with '\.'"):
        validate_name(".x")
    with pytest.raises(InvalidName) as exc:
        validate_name("z" * 500)
    assert len(str(exc.value)) < 300  # a huge name is shortened in the message


def test_content_ids() -> None:
    good = "sha256:" + "ab" * 32
    assert validate_content_id(good) == good
    for bad in ("", "sha256:" + "AB" * 32, "sha256:" + "ab" * 31, "sha1:" + "ab" * 20, None):
        with pytest.raises(InvalidName, match="invalid content id"):
            validate_content_id(bad)


def test_every_operation_refuses_bad_names_before_any_io(store: Store, target: Target) -> None:
    calls = [
        lambda n: store.put(n, bundle(1)),
        lambda n: store.put(n, bundle(1), if_match="*"),
        lambda n: store.rollback(n, 1),
        lambda n: store.get(n),
        lambda n: store.get(n, version=1),
        lambda n: store.versions(n),
        lambda n: store.info(n),
        lambda n: store.delete(n),
    ]
    for name in BAD_NAMES:
        for call in calls:
            with pytest.raises(InvalidName):
                call(name)
    assert store.list() == []
    assert target.raw.version_keys() == set()
