"""The signer's policy (zt/fleet/csr.py), join tokens (zt/fleet/tokens.py) and CLI durations: pure."""

from __future__ import annotations

import base64
import dataclasses

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cli.ca_cmd import parse_duration
from zt.errors import UsageError
from zt.fleet import csr, tokens
from zt.identity.ca import CertificateAuthority, new_root
from zt.identity.spiffe import SpiffeId

TD = "cluster.local"
NOW = 1_800_000_000.0
FRONTEND = SpiffeId(TD, "default", "frontend")
PLACED_A = frozenset({str(FRONTEND)})


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    key, root = new_root(TD, NOW - 10)
    return CertificateAuthority(root, key, trust_domain=TD)


@pytest.fixture(scope="module")
def node_a(ca: CertificateAuthority) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    key = csr.new_key()
    cert = ca.sign(csr.node_identity(TD, "node-a"), key.public_key(), now=NOW - 5, lifetime=3600)
    return key, cert.public_bytes(serialization.Encoding.PEM)


def _decide(env: csr.Envelope, node_cert: bytes | None, *, placed: frozenset[str] = PLACED_A,
            now: float = NOW) -> csr.Decision:  # fmt: skip
    return csr.decide(
        env, "node-a", placed=placed, node_cert_pem=node_cert, trust_domain=TD, now=now
    )


def _signed(node_key: ec.EllipticCurvePrivateKey, csr_pem: bytes, identity: str) -> csr.Envelope:
    der = x509.load_pem_x509_csr(csr_pem).public_bytes(serialization.Encoding.DER)
    return csr.Envelope(identity, csr_pem, node_key.sign(der, ec.ECDSA(hashes.SHA256())), NOW)


def _csr_with_uris(*uris: str, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None
                   ) -> bytes:  # fmt: skip
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if uris:
        san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris])
        builder = builder.add_extension(san, critical=True)
    signing_key = key or csr.new_key()
    return builder.sign(signing_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def test_allow_a_workload_placed_on_the_node(
    node_a: tuple[ec.EllipticCurvePrivateKey, bytes],
) -> None:
    key, cert = node_a
    _wkey, env = csr.make_request(FRONTEND, key, NOW)
    decision = _decide(csr.Envelope.from_json(env.to_json()), cert)
    assert isinstance(decision, csr.Allow)
    assert decision.identity == FRONTEND


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("garbage", "bad_csr"),
        ("no_san", "bad_csr"),
        ("malformed_san", "bad_csr"),
        ("two_sans", "bad_csr"),
        ("not_spiffe", "bad_csr"),
        ("rsa_key", "bad_csr"),
        ("envelope_mismatch", "bad_csr"),
        ("foreign_td", "foreign_trust_domain"),
        ("no_node_cert", "unknown_node"),
        ("expired_node_cert", "unknown_node"),
        ("other_node_key", "bad_node_signature"),
        ("node_identity", "node_identity"),
        ("not_placed", "workload_not_on_node"),
    ],
)
def test_refusals(case: str, reason: str, node_a: tuple[ec.EllipticCurvePrivateKey, bytes]) -> None:
    key, cert = node_a
    ident, now = str(FRONTEND), NOW
    node_cert: bytes | None = cert
    pem: bytes = csr.build_csr(FRONTEND, csr.new_key())
    signer = key
    if case == "garbage":
        pem = b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
    elif case == "no_san":
        pem = _csr_with_uris()
    elif case == "malformed_san":  # parsed lazily by cryptography: must refuse, not raise
        bad = x509.UnrecognizedExtension(
            x509.oid.ExtensionOID.SUBJECT_ALTERNATIVE_NAME, b"\x04\x01x"
        )
        builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
        pem = (
            builder.add_extension(bad, critical=False)
            .sign(csr.new_key(), hashes.SHA256())
            .public_bytes(serialization.Encoding.PEM)
        )
    elif case == "two_sans":
        pem = _csr_with_uris(ident, "spiffe://cluster.local/ns/default/sa/other")
    elif case == "not_spiffe":
        pem = _csr_with_uris("https://example.com/x")
    elif case == "rsa_key":
        pem = _csr_with_uris(ident, key=rsa.generate_private_key(65537, 2048))
    elif case == "envelope_mismatch":
        ident = "spiffe://cluster.local/ns/default/sa/other"
    elif case == "foreign_td":
        other = SpiffeId("other.domain", "default", "frontend")
        pem, ident = csr.build_csr(other, csr.new_key()), str(other)
    elif case == "no_node_cert":
        node_cert = None
    elif case == "expired_node_cert":
        now = NOW + 7200
    elif case == "other_node_key":
        signer = csr.new_key()
    elif case == "node_identity":
        nid = csr.node_identity(TD, "node-a")
        pem, ident = csr.build_csr(nid, csr.new_key()), str(nid)
    elif case == "not_placed":
        db = SpiffeId(TD, "legacy", "db")
        pem, ident = csr.build_csr(db, csr.new_key()), str(db)
    env = _signed(signer, pem, ident) if case != "garbage" else csr.Envelope(ident, pem, b"x", NOW)
    decision = _decide(env, node_cert, now=now)
    assert isinstance(decision, csr.Refuse), case
    assert decision.reason == reason
    assert "\n" not in decision.message and len(decision.message) > 20


def test_envelope_round_trip_and_garbage() -> None:
    env = csr.Envelope("spiffe://td/ns/a/sa/b", b"PEM", b"\x01\x02", 5.0)
    assert csr.Envelope.from_json(env.to_json()) == env
    for bad in (
        b"{",
        b"[]",
        b'{"identity": 1}',
        b'{"identity":"x","csr":"y","node_sig":"!!","created":1}',
    ):
        with pytest.raises(csr.BadEnvelope):
            csr.Envelope.from_json(bad)


def test_join_csr_must_be_the_node_identity() -> None:
    key = csr.new_key()
    ok = csr.decide_join(csr.build_csr(csr.node_identity(TD, "n1"), key), "n1", TD)
    assert isinstance(ok, csr.Allow)
    wrong = csr.decide_join(csr.build_csr(csr.node_identity(TD, "n2"), key), "n1", TD)
    assert isinstance(wrong, csr.Refuse) and wrong.reason == "bad_csr"


# --- tokens ---------------------------------------------------------------------------------------


def test_token_format_round_trip() -> None:
    tok = tokens.Token.new()
    text = str(tok)
    assert text.startswith("ztjoin-") and len(tok.id) == 8 and len(tok.secret) == 43
    assert (
        base64.urlsafe_b64decode(tok.secret + "=")
        and len(base64.urlsafe_b64decode(tok.secret + "=")) == 32
    )
    assert tokens.Token.parse(text + "\n") == tok
    with pytest.raises(tokens.BadToken, match="--token"):
        tokens.Token.parse("ztjoin-xyz.abc")


def test_token_checks() -> None:
    rec = tokens.TokenRecord("n1", NOW + 60, tokens.sha256("s"))
    assert tokens.TokenRecord.from_json(rec.to_json()) == rec
    assert tokens.TokenRecord.from_json(b"nope") is None
    assert tokens.check(rec, "abcd0123", "n1", NOW) is None
    cases = {
        "token_unknown": (None, "n1", NOW),
        "token_used": (dataclasses.replace(rec, used_at=NOW - 1), "n1", NOW),
        "token_expired": (rec, "n1", NOW + 61),
        "token_foreign_node": (rec, "n2", NOW),
    }
    for reason, (record, node, now) in cases.items():
        refusal = tokens.check(record, "abcd0123", node, now)
        assert refusal is not None and refusal.reason == reason
        assert "zt ca token create" in refusal.message and "\n" not in refusal.message


def test_durations() -> None:
    assert parse_duration("--x", "90s") == 90
    assert parse_duration("--x", "30m") == 1800
    assert parse_duration("--x", "24h") == 86400
    assert parse_duration("--x", "45") == 45
    with pytest.raises(UsageError, match="--leaf-lifetime: got '10m', expected at least 3600s"):
        parse_duration("--leaf-lifetime", "10m", floor=3600)
    with pytest.raises(UsageError, match="--x: got 'soon'"):
        parse_duration("--x", "soon")
