"""SpiffeId: the one accepted form, and errors that name the value and the expected form."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zt.errors import UsageError
from zt.identity.errors import InvalidSpiffeId, InvalidTrustDomain
from zt.identity.spiffe import SpiffeId, trust_domain


def test_parse_format_principal() -> None:
    sid = SpiffeId.parse("spiffe://cluster.local/ns/bookinfo/sa/reviews")
    assert sid == SpiffeId("cluster.local", "bookinfo", "reviews")
    assert str(sid) == "spiffe://cluster.local/ns/bookinfo/sa/reviews"
    assert sid.principal == "cluster.local/ns/bookinfo/sa/reviews"
    assert SpiffeId.from_principal(sid.principal) == sid


def test_ordering_and_hashing() -> None:
    a = SpiffeId("td", "a", "z")
    b = SpiffeId("td", "b", "a")
    assert sorted([b, a]) == [a, b]
    assert {a, SpiffeId.parse(str(a))} == {a}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "must start with 'spiffe://'"),
        ("SPIFFE://td/ns/a/sa/b", "must start with 'spiffe://'"),
        ("https://td/ns/a/sa/b", "must start with 'spiffe://'"),
        ("spiffe://td/ns/a", "path must be exactly /ns/<namespace>/sa/<service-account>"),
        ("spiffe://td/ns/a/sa/b/extra", "path must be exactly"),
        ("spiffe://td/sa/a/ns/b", "path must be exactly"),
        ("spiffe://td/ns/a/sa/b/", "path must be exactly"),
        ("spiffe://TD/ns/a/sa/b", "trust domain 'TD'"),
        ("spiffe://td:8080/ns/a/sa/b", "trust domain 'td:8080'"),
        ("spiffe://user@td/ns/a/sa/b", "trust domain 'user@td'"),
        ("spiffe:///ns/a/sa/b", "trust domain ''"),
        ("spiffe://td/ns//sa/b", "namespace ''"),
        ("spiffe://td/ns/../sa/b", "namespace '..'"),
        ("spiffe://td/ns/./sa/b", "namespace '.'"),
        ("spiffe://td/ns/a%2F/sa/b", "namespace 'a%2F'"),
        ("spiffe://td/ns/a/sa/b?q=1", "service account 'b?q=1'"),
        ("spiffe://td/ns/a/sa/b#frag", "service account 'b#frag'"),
        ("spiffe://td/ns/a/sa/", "service account ''"),
        ("spiffe://td/ns/a/sa/" + "x" * 2048, "longer than 2048 bytes"),
    ],
)
def test_rejects_with_value_and_expected_form(text: str, problem: str) -> None:
    with pytest.raises(InvalidSpiffeId) as err:
        SpiffeId.parse(text)
    msg = str(err.value)
    assert repr(text) in msg or len(text) > 2048
    assert "expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>" in msg
    assert problem in msg
    assert isinstance(err.value, UsageError)
    assert err.value.exit_code == 2
    assert err.value.reason == "invalid_spiffe_id"


def test_constructor_validates_too() -> None:
    with pytest.raises(InvalidSpiffeId, match="namespace 'a/b'"):
        SpiffeId("td", "a/b", "sa")


def test_trust_domain_validation() -> None:
    assert trust_domain("cluster.local") == "cluster.local"
    with pytest.raises(InvalidTrustDomain, match=r"got 'Cluster\.Local', expected lowercase"):
        trust_domain("Cluster.Local")


_td = st.from_regex(r"[a-z0-9._-]{1,30}", fullmatch=True)
_seg = st.from_regex(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,30}", fullmatch=True)


@given(_td, _seg, _seg)
def test_roundtrip(td: str, ns: str, sa: str) -> None:
    sid = SpiffeId(td, ns, sa)
    assert SpiffeId.parse(str(sid)) == sid
    assert SpiffeId.from_principal(sid.principal) == sid


@given(st.text(max_size=80))
def test_parse_never_raises_anything_else(text: str) -> None:
    try:
        sid = SpiffeId.parse(text)
    except InvalidSpiffeId:
        return
    assert str(sid) == text
