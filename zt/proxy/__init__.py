"""The asyncio HBONE data plane: the two flows every caller uses (outbound: route → tunnel or TCP;
inbound: admit → dial → relay), the driver of one TLS connection ↔ one sans-IO core, the TCP ↔
stream relay, the client pool and the HBONE server.

Public API (what other rooms use):

    from zt.proxy.client import dial, open_tunnel
        await dial(target: SocketAddr, ctx: ssl.SSLContext, *, peer_check: PeerCheck | None,
                   settings: HboneSettings | None = None, timeout=10.0) -> HboneDriver
            # raises zt.identity TlsError subclasses (refused / untrusted / wrong identity) or
            # DialFailed; returns once the server's first HTTP/2 bytes arrived (it took our cert)
        await open_tunnel(driver, request: ConnectRequest, *, timeout=10.0) -> HboneStream
            # raises TunnelRefused(status, detail) for a non-200 answer
    from zt.proxy.tls import server_peer_check, client_peer_check
        server_peer_check(expected: Sequence[SpiffeId]) -> PeerCheck   # client side
        client_peer_check(trust_domain: str) -> PeerCheck              # server side
    from zt.proxy.pool import HbonePool, PoolKey
        PoolKey(source: SpiffeId, expected: frozenset[SpiffeId], destination: SocketAddr)
        HbonePool(connector: async (PoolKey) -> HboneDriver, *, idle_timeout=300.0, clock=None)
        await pool.open(key, request) -> HboneStream ; await pool.acquire(key) -> HboneDriver
        pool.reap(now) -> int ; pool.connections(key) ; pool.dials ; await pool.close()
    from zt.proxy.outbound import OutboundFlow            -- one outbound flow for every caller
        OutboundFlow(route: (app, destination) -> Route, identity: SpiffeId,
                     open_tunnel: HbonePool.open, connect: Connector = connect_direct,
                     dial_timeout=10.0, observe: (app, destination, Route) -> Observer)
        await flow.carry(app: TcpSource, peer, destination, announce=...) -> Outcome
            # route (pure) → pooled HBONE tunnel / TCP splice / refusal (the app is reset)
    from zt.proxy.inbound import InboundFlow, Arrival, Admission  -- one inbound flow
        InboundFlow(admit: (Arrival) -> Admission = allow_all, *, connect: Connector,
                    dial_timeout=10.0, observe: (Arrival) -> Observer, track: Track)
        await flow.tunnel(stream) -> Outcome      # a CONNECT: admit, dial, 200, relay
        await flow.plaintext(client, arrival) -> Outcome   # admit, dial, splice
        Admission.allow(policy, connection) | Admission.deny(error: ZtError, flags, policy):
            the status comes from the error's class (PolicyDenied → 401, loop guard → 400, ...)
    from zt.proxy.flow import Outcome, Observer, Connector, connect_direct
        Outcome(flags, error, policy, to_client, from_client): one connection's end, in
        ztunnel's response flags; Observer.opened(progress) / ended(outcome) (exactly once)
        Connector = async (SocketAddr, timeout) -> connected non-blocking socket (the node makes
        it inside the pod's netns, marked)
    from zt.proxy.server import HboneServer
        HboneServer(ctx, *, peer_check: PeerCheck, flow: InboundFlow | None = None,
                    settings=None, on_limit=None, on_connection=None)
        await server.start(listen: SocketAddr, *, limits: AcceptLimits) -> SocketAddr
        await server.start_on(sock, *, group: ConnectionGroup) ; await server.shutdown(deadline)
        server.connections_accepted / peer_refusals / statuses (Counter) / tunnels / drivers
        server.limit_hits (Counter: HTTP/2 limits peers went past, zt/hbone/limits.py)
    from zt.proxy.accept import AcceptLoop, AcceptLimits, ConnectionGroup, serve_tls, serve_held
        zt's accept loop for every listener: handshake deadline (TLS made after the first
        byte), half-open caps per source and in total, per-group connection cap, EMFILE
        back-off with a reserve fd, keepalive, handler exceptions counted (never raised)
    from zt.proxy.guard import StandaloneAdmission
        the `zt hbone serve` admit function: no CONNECT aimed at the server itself or at zt's
        ports on this host (400), only destinations an --allow list names (401)
    from zt.proxy.socks5 import serve
        await serve(flow: OutboundFlow, reader, writer): RFC 1928 CONNECT, then the flow
    from zt.proxy.relay import relay, reset_tcp, TcpRelay
        await relay(stream, reader, writer) -> RelayResult(tcp_to_stream, stream_to_tcp, outcome)
        TcpRelay(): the relay's TCP side as a transport's protocol from the start (no
            StreamReader): `loop.create_connection(lambda: tcp, sock=s)` or a `create_server`
            factory; it keeps early bytes/EOF/loss until tcp.begin(stream); tcp.done (future:
            outcome), tcp.result() -> RelayResult, tcp.cancel() (reset both sides)
    from zt.proxy.forward import TcpToHbone
        TcpToHbone.via(pool, key, authority) (the outbound flow with a fixed route);
        await start(listen) -> SocketAddr; close()
    from zt.proxy.splice import splice
        await splice((reader, writer), (reader, writer)) -> SpliceResult(a_to_b, b_to_a, outcome)
    HboneStream: await read() (b"" = END_STREAM) / acknowledge() (after the socket took the
        bytes) / await write(data) / write_eof() / reset(code) / was_reset / buffered
        callback form (instead of read/write): attach(sink: StreamSink) / try_write(data) -> int
        / sink / unacknowledged
    relay/splice take the asyncio streams over (buffered bytes and EOF first, then a
        `zt.proxy.tcpside.TcpSide` BufferedProtocol on the transport): don't read or write those
        streams yourself while they run; reset_tcp(writer) / writer.close() still work.
    HboneDriver: usable / alive / goaway / streams / peer / close(reason, abort=True) /
        start_drain(deadline_seconds) / closed (future) / close_reason
        cork() -> bool / uncork(): hold writes so a burst leaves in one TLS record (uncork only
        when cork() returned True; data_received is always corked)
"""
