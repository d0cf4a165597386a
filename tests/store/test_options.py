"""Store URLs and options: parsing, defaults, refusals, credential-free display."""

from __future__ import annotations

from pathlib import Path

import pytest

from pemn.store import StoreConfigError, open_async_store, open_store
from pemn.store.options import FileConfig, RedisConfig, S3Config, StoreOptions, parse_url


def test_defaults() -> None:
    display, opts, config = parse_url("file:///var/store")
    assert display == "file:///var/store"
    assert opts == StoreOptions()
    assert (opts.retain, opts.max_bundle_bytes) == (10, 64 * 1024 * 1024)
    assert config == FileConfig(root=Path("/var/store"))


def test_plain_path_is_a_directory_store(tmp_path: Path) -> None:
    _, _, config = parse_url(str(tmp_path / "s"))
    assert config == FileConfig(root=tmp_path / "s")


def test_query_options_and_keywords() -> None:
    _, opts, config = parse_url(
        "redis://127.0.0.1:6379/2?prefix=app:models&retain=3&timeout=0.5", retain=4
    )
    assert (opts.retain, opts.timeout) == (4, 0.5)  # keywords win over the query
    assert config == RedisConfig(url="redis://127.0.0.1:6379/2", prefix="app:models")
    _, opts, config = parse_url(
        "file:///s?fsync=false&max_bundle_bytes=1000&retries=1&write_timeout=2.5"
    )
    assert (opts.max_bundle_bytes, opts.retries, opts.write_timeout) == (1000, 1, 2.5)
    assert config == FileConfig(root=Path("/s"), fsync=False)


def test_s3_urls() -> None:
    display, _, config = parse_url(
        "s3://my-bucket/a/b?endpoint_url=http://127.0.0.1:9000&region=eu-west-1"
        "&addressing_style=virtual"
    )
    assert config == S3Config(
        bucket="my-bucket",
        prefix="a/b",
        endpoint_url="http://127.0.0.1:9000",
        region="eu-west-1",
        addressing_style="virtual",
    )
    assert display == "s3://my-bucket/a/b?endpoint_url=http://127.0.0.1:9000"
    assert parse_url("s3://my-bucket")[2] == S3Config(bucket="my-bucket")


def test_display_url_has_no_credentials() -> None:
    display, _, config = parse_url("redis://user:pa55@10.0.0.1:6380/1?prefix=p")
    assert display == "redis://10.0.0.1:6380/1?prefix=p"
    assert isinstance(config, RedisConfig) and "pa55" in config.url  # the client gets it
    display, _, _ = parse_url(
        "s3://bkt-1/p?endpoint_url=http://k:s@h:1&aws_secret_access_key=zz&aws_access_key_id=AK"
    )
    assert "zz" not in display and "AK" not in display and "k:s" not in display


@pytest.mark.parametrize(
    ("url", "options", "match"),
    [
        ("ftp://host/x", {}, "unknown store URL scheme 'ftp'"),
        ("file://host/x", {}, "absolute path"),
        ("file:///s?retian=3", {}, "unknown option\\(s\\) retian"),
        ("file:///s", {"colour": "red"}, "unknown option\\(s\\) colour"),
        ("file:///s", {"prefix": "p"}, "unknown option\\(s\\) prefix"),
        ("file:///s?retain=0", {}, "retain=0"),
        ("file:///s?retain=x", {}, "retain='x' is invalid: Input should be a valid integer"),
        ("file:///s", {"retain": 2.5}, "retain=2.5 is invalid: .* valid integer"),
        ("file:///s", {"retain": True}, "retain=True is invalid: expected a number"),
        ("file:///s?timeout=-1", {}, "timeout='-1' is invalid: .* greater than 0"),
        ("file:///s?timeout=inf", {}, "timeout='inf' is invalid"),
        (
            "file:///s?write_timeout=61",
            {},
            "write_timeout='61' is invalid: .* less than or equal to 60",
        ),
        ("file:///s?fsync=maybe", {}, "fsync='maybe' is invalid: .* valid boolean"),
        ("file:///s", {"validator": "inspect"}, "validator='inspect' is invalid: .* callable"),
        ("file:///s?max_bundle_bytes=0", {}, "max_bundle_bytes='0' is invalid"),
        ("redis://h:1/0?prefix=a b", {}, "prefix='a b' is invalid"),
        ("redis://h:1/0?prefix=", {}, "prefix='' is invalid"),
        ("redis://h:1/0", {"prefix": "x*"}, "prefix='x\\*' is invalid"),
        ("s3://Bad_Bucket/p", {}, "bucket='Bad_Bucket' is invalid"),
        ("s3://bucket/../p", {}, "prefix='../p' is invalid"),
        ("s3://bucket/a b", {}, "prefix='a b' is invalid"),
        ("s3://bucket/p?addressing_style=dns", {}, "addressing_style='dns' is invalid"),
        ("", {}, "non-empty string"),
    ],
)
def test_bad_urls_and_options_are_refused(url: str, options: dict, match: str) -> None:
    with pytest.raises(StoreConfigError, match=match) as exc:
        parse_url(url, **options)
    assert exc.value.code == "store.bad_config"


def test_open_refuses_before_connecting() -> None:
    with pytest.raises(StoreConfigError):
        open_store("redis://127.0.0.1:1/0?bogus=1")
    with pytest.raises(StoreConfigError):
        open_async_store("s3://bucket?nope=1")


def test_directory_store_without_create(tmp_path: Path) -> None:
    with pytest.raises(StoreConfigError, match="does not exist"):
        open_store((tmp_path / "missing").as_uri(), create=False)
    with open_store((tmp_path / "new").as_uri()) as s:
        assert (tmp_path / "new" / "heads").is_dir() and (tmp_path / "new" / "versions").is_dir()
        assert s.url == (tmp_path / "new").as_uri()
