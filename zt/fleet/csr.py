"""Certificate requests through etcd, and the signer's policy for them (pure; docs/fleet.md).

A node builds the CSR with a fresh P-256 key that never leaves it, and signs the CSR's DER with its
node key (`node_sig`): etcd's ACL already confines a node to {p}/csr/{node}/, the signature is proof
that the node key's holder asked, on top of it. `decide` is the signer's whole rule, as istiod's:
a node may get the identity of a workload the mesh places on that node, nothing else.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from zt.errors import UsageError
from zt.identity.errors import InvalidSpiffeId
from zt.identity.spiffe import SpiffeId
from zt.state.model import Workload

NODE_NAMESPACE = "zt-system"
NODE_SA_PREFIX = "zt-node-"
_PEM = serialization.Encoding.PEM
_DER = serialization.Encoding.DER


class BadEnvelope(UsageError):
    """A CSR object in etcd that is not the JSON envelope this module writes."""

    reason = "bad_csr"


def node_identity(trust_domain: str, node: str) -> SpiffeId:
    """The node's own identity: spiffe://{td}/ns/zt-system/sa/zt-node-{node}."""
    return SpiffeId(trust_domain, NODE_NAMESPACE, NODE_SA_PREFIX + node)


def is_node_identity(identity: SpiffeId) -> bool:
    return identity.namespace == NODE_NAMESPACE and identity.service_account.startswith(
        NODE_SA_PREFIX
    )


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def build_csr(identity: SpiffeId, key: ec.EllipticCurvePrivateKey) -> bytes:
    """A PEM CSR: empty subject, one URI SAN (the identity), signed by `key`."""
    san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(identity))])
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(san, critical=True)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(_PEM)


def load_private_key(pem: bytes, *, what: str) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{what}: expected an unencrypted PEM EC private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise UsageError(f"{what}: got a {type(key).__name__}, expected an EC private key")
    return key


@dataclass(frozen=True)
class Envelope:
    """{p}/csr/{node}/{req}: what a node asks for, and its node key's signature over the CSR DER."""

    identity: str
    csr_pem: bytes
    node_sig: bytes
    created: float

    def to_json(self) -> bytes:
        doc = {
            "identity": self.identity,
            "csr": self.csr_pem.decode("ascii"),
            "node_sig": base64.b64encode(self.node_sig).decode("ascii"),
            "created": self.created,
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Envelope:
        try:
            doc = json.loads(data)
            identity, csr, sig, created = (
                doc["identity"],
                doc["csr"],
                doc["node_sig"],
                doc["created"],
            )
            if not (isinstance(identity, str) and isinstance(csr, str) and isinstance(sig, str)):
                raise TypeError("identity, csr and node_sig must be strings")
            return cls(identity, csr.encode("ascii"), base64.b64decode(sig, validate=True),
                       float(created))  # fmt: skip
        except (ValueError, KeyError, TypeError, binascii.Error, UnicodeError) as exc:
            raise BadEnvelope(
                f"CSR object: expected JSON {{identity, csr, node_sig, created}} ({exc})"
            ) from None


def make_request(
    identity: SpiffeId, node_key: ec.EllipticCurvePrivateKey, now: float
) -> tuple[ec.EllipticCurvePrivateKey, Envelope]:
    """A fresh workload key and the envelope asking for `identity` with it."""
    key = new_key()
    csr_pem = build_csr(identity, key)
    der = x509.load_pem_x509_csr(csr_pem).public_bytes(_DER)
    sig = node_key.sign(der, ec.ECDSA(hashes.SHA256()))
    return key, Envelope(str(identity), csr_pem, sig, now)


# --- the signer's decision ------------------------------------------------------------------------


@dataclass(frozen=True)
class Allow:
    identity: SpiffeId
    public_key: ec.EllipticCurvePublicKey


@dataclass(frozen=True)
class Refuse:
    reason: str
    message: str


Decision = Allow | Refuse


def parse_csr(csr_pem: bytes) -> tuple[SpiffeId, ec.EllipticCurvePublicKey, bytes] | Refuse:
    """The CSR's one SPIFFE URI SAN, its P-256 public key and its DER; or a `bad_csr` refusal."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
        good_sig = csr.is_signature_valid
    except ValueError as exc:
        return Refuse("bad_csr", f"the CSR does not parse ({exc}); send a PEM PKCS#10 request")
    if not good_sig:
        return Refuse("bad_csr", "the CSR's self-signature does not verify; rebuild the request")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        return Refuse("bad_csr", "the CSR key is not ECDSA P-256; zt issues P-256 leaves only")
    try:
        ext = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        uris = ext.value.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        # extensions are parsed lazily, here: a node's malformed SAN must not stop the signer
        return Refuse("bad_csr", f"the CSR's extensions do not parse ({exc}); rebuild the request")
    if len(uris) != 1:
        return Refuse("bad_csr", f"the CSR must carry exactly one URI SAN, got {uris!r}")
    try:
        identity = SpiffeId.parse(uris[0])
    except InvalidSpiffeId as exc:
        return Refuse("bad_csr", str(exc))
    return identity, key, csr.public_bytes(_DER)


def _node_key_signed(node_cert_pem: bytes, der: bytes, sig: bytes) -> bool:
    try:
        key = x509.load_pem_x509_certificate(node_cert_pem).public_key()
    except ValueError:
        return False
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return False
    try:
        key.verify(sig, der, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def placed_identities(workloads: Iterable[Workload], node: str) -> frozenset[str]:
    """SPIFFE ids of the workloads the mesh places on `node`."""
    return frozenset(w.identity for w in workloads if w.node == node)


def decide(
    envelope: Envelope,
    node: str,
    *,
    placed: frozenset[str],
    node_cert_pem: bytes | None,
    trust_domain: str,
    now: float,
) -> Decision:
    """Whether `node` may have the certificate it asks for. `placed` = placed_identities(node);
    `node_cert_pem` = the node's joined certificate ({p}/ca/nodes/{node}) or None."""
    parsed = parse_csr(envelope.csr_pem)
    if isinstance(parsed, Refuse):
        return parsed
    identity, key, der = parsed
    if str(identity) != envelope.identity:
        return Refuse("bad_csr", f"the envelope names {envelope.identity}, the CSR {identity}")
    if identity.trust_domain != trust_domain:
        return Refuse(
            "foreign_trust_domain",
            f"{identity} is not in this CA's trust domain {trust_domain!r}; "
            "check the node's trust domain (its bundle in the state dir)",
        )
    if node_cert_pem is None:
        return Refuse(
            "unknown_node",
            f"node {node!r} has not joined (no certificate in the CA's node list); "
            f"run `zt node join --node {node}` with a token from `zt ca token create`",
        )
    unexpired = _node_cert_valid(node_cert_pem, now)
    if unexpired is not None:
        return unexpired
    if not _node_key_signed(node_cert_pem, der, envelope.node_sig):
        return Refuse(
            "bad_node_signature",
            f"node_sig does not verify with node {node!r}'s joined key; the node's state dir "
            "does not hold the key it joined with: join the node again",
        )
    if is_node_identity(identity):
        return Refuse(
            "node_identity",
            f"{identity} is a node identity; node certificates are issued only by `zt node join`",
        )
    if str(identity) not in placed:
        return Refuse(
            "workload_not_on_node",
            f"the mesh places no workload with identity {identity} on node {node!r}; "
            "a node gets certificates only for its own workloads (check the workload's node field)",
        )
    return Allow(identity, key)


def _node_cert_valid(node_cert_pem: bytes, now: float) -> Refuse | None:
    try:
        cert = x509.load_pem_x509_certificate(node_cert_pem)
    except ValueError:
        return Refuse("unknown_node", "the node's joined certificate does not parse; re-join it")
    if not cert.not_valid_before_utc.timestamp() <= now < cert.not_valid_after_utc.timestamp():
        return Refuse("unknown_node", "the node's joined certificate has expired; re-join the node")
    return None


def decide_join(csr_pem: bytes, node: str, trust_domain: str) -> Allow | Refuse:
    """A join request's CSR must ask for exactly the node identity of the token's node."""
    parsed = parse_csr(csr_pem)
    if isinstance(parsed, Refuse):
        return parsed
    identity, key, _der = parsed
    want = node_identity(trust_domain, node)
    if identity != want:
        return Refuse("bad_csr", f"a join CSR must ask for {want}, got {identity}")
    return Allow(identity, key)
