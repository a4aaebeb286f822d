"""The accepting cases over real loopback sockets: the right identity in either direction."""

from __future__ import annotations

import pytest

from tests.identity.loopback import (
    Outcome,
    Side,
    exchange,
    peer_context,
    plain_server,
    run,
    zt_client,
)
from tests.identity.pki import CLIENT, SERVER, Pki, operator_intermediate
from zt.identity.errors import PeerCertificateUntrusted
from zt.identity.spiffe import SpiffeId
from zt.identity.tls import client_context, server_context

ALLOWED = {"TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256"}


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_mutual_identities(pki: Pki, host: str) -> None:
    sctx = server_context(pki.issue(SERVER))
    cctx = client_context(pki.issue(CLIENT))
    out: Outcome = run(lambda: exchange(sctx, cctx, [SERVER], host=host))
    assert out.server.result == CLIENT  # the server learns who called
    assert out.client.result == SERVER  # the client checked who answered
    assert out.client.read == b"hello cluster.local/ns/shop/sa/client\n"
    for side in (out.server, out.client):
        assert side.version == "TLSv1.3"
        assert side.cipher in ALLOWED


def test_reverse_direction_roles(pki: Pki) -> None:
    """The same two workloads with the roles swapped (each presents its own certificate)."""
    sctx = server_context(pki.issue(CLIENT))
    cctx = client_context(pki.issue(SERVER))
    out = run(lambda: exchange(sctx, cctx, [CLIENT]))
    assert (out.server.result, out.client.result) == (SERVER, CLIENT)


def test_any_expected_identity_matches(pki: Pki) -> None:
    """docs/design.md §2: the destination workload's identity "plus SANs a Service lists"."""
    other = SpiffeId("cluster.local", "shop", "canary")
    sctx = server_context(pki.issue(SERVER))
    cctx = client_context(pki.issue(CLIENT))
    out = run(lambda: exchange(sctx, cctx, [other, SERVER]))
    assert out.client.result == SERVER


def test_server_sends_no_session_tickets(pki: Pki) -> None:
    cctx = client_context(pki.issue(CLIENT))
    out = run(lambda: exchange(server_context(pki.issue(SERVER)), cctx, [SERVER]))
    assert out.client.read is not None and out.client.has_ticket is False
    # control: the same client against a default server does get a ticket, so the check can fail
    plain = peer_context("server", roots=pki.ca.roots_pem, cert=pki.issue(SERVER))
    control = Side()

    async def scenario() -> None:
        async with plain_server(plain) as port:
            await zt_client(cctx, [SERVER], "127.0.0.1", port, control)

    run(scenario)
    assert control.result == SERVER
    assert control.has_ticket is True


def test_expected_identities_may_be_uri_strings(pki: Pki) -> None:
    """Service `subjectAltNames` arrive as strings; a non-SPIFFE entry is simply never matched."""
    sctx = server_context(pki.issue(SERVER))
    cctx = client_context(pki.issue(CLIENT))
    out = run(lambda: exchange(sctx, cctx, ["https://not-spiffe.example/x", str(SERVER)]))
    assert out.client.result == SERVER


def test_operator_intermediate_ca_chain_is_sent(pki: Pki) -> None:
    """With an operator's intermediate, each side sends leaf + intermediate; peers hold only the
    operator's root and still verify both directions."""
    ca = operator_intermediate(pki.now, "cluster.local")
    server, client = ca.issue(SERVER, now=pki.now), ca.issue(CLIENT, now=pki.now)
    assert server.chain_pem and server.roots_pem != server.chain_pem
    out = run(lambda: exchange(server_context(server), client_context(client), [SERVER]))
    assert (out.server.result, out.client.result) == (CLIENT, SERVER)
    # and a zt peer that does not carry the operator's root refuses them
    mesh_client = client_context(pki.issue(CLIENT))
    refused = run(lambda: exchange(server_context(server), mesh_client, [SERVER]))
    assert isinstance(refused.client.result, PeerCertificateUntrusted)
