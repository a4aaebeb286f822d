"""`zt ca init|issue|show|serve|rotate|token create`: the CA's state directory from the command line.

With `--etcd` the CA serves a fleet (docs/fleet.md): `init --etcd` bootstraps etcd auth and publishes
the trust bundle, `serve` runs the signer (the only process holding the CA key), `token create`
makes one-time join tokens, `rotate` starts a root rotation the signer then completes.
"""

import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from . import _values
from ._common import reports_errors, sub_app
from ._defaults import CA_DIR, LEAF_LIFETIME, TRUST_DOMAIN
from ._etcd import (
    etcd_flags,
    settings_from,
    with_client,
)
from ._values import parse_duration

if TYPE_CHECKING:  # imported by the commands: `zt --help` loads no cryptography or httpx
    from zt.fleet import rotation
    from zt.fleet.connect import EtcdSettings
    from zt.fleet.etcd import EtcdClient
    from zt.identity.certs import WorkloadCert

__all__ = ["app", "parse_duration"]

app = sub_app("The embedded certificate authority.")
token_app = sub_app("One-time join tokens for fleet nodes.")
app.add_typer(token_app, name="token")

# `init` creates the directory; `issue` and `show` say "no CA in DIR" themselves; the commands
# that talk to etcd check it is there before they do
NewCaDirOpt = Annotated[Path, typer.Option("--ca-dir", help="CA state directory", file_okay=False)]
CaDirOpt = Annotated[
    Path, typer.Option("--ca-dir", help="CA state directory", exists=True, file_okay=False)
]


def operator_settings(
    etcd: str,
    cacert: Path | None,
    cert: Path | None,
    key: Path | None,
    user: str | None,
    password_file: Path | None,
    prefix: str,
) -> "EtcdSettings":
    """The shared --etcd* flags; the CA's commands act as root unless --etcd-user says otherwise."""
    if user is None and password_file is not None:
        user = "root"
    return settings_from(etcd, cacert, cert, key, user, password_file, prefix)


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _read(path: Path | None, what: str) -> bytes | None:
    from zt.identity.errors import CertificateFileError  # noqa: PLC0415

    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CertificateFileError(
            f"{what}: got {str(path)!r}, expected a readable PEM file ({exc.strerror})"
        ) from None


@app.command()
@reports_errors
@etcd_flags(operator_settings, etcd_help="also bootstrap this etcd cluster (URLs)")
def init(
    *,
    ca_dir: NewCaDirOpt = CA_DIR,
    trust_domain: Annotated[
        str, typer.Option(help="SPIFFE trust domain", parser=_values.trust_domain)
    ] = TRUST_DOMAIN,
    force: Annotated[bool, typer.Option(help="replace an existing CA")] = False,
    cert: Annotated[
        Path | None,
        typer.Option(help="operator CA certificate (PEM)", dir_okay=False),
    ] = None,
    key: Annotated[
        Path | None,
        typer.Option(help="operator CA private key (PEM)", dir_okay=False),
    ] = None,
    bundle: Annotated[
        Path | None,
        typer.Option(help="trust bundle peers verify against", dir_okay=False),
    ] = None,
    settings: "EtcdSettings | None",
) -> None:
    """Create a P-256 CA in --ca-dir, or (with --cert/--key) store an operator's CA there. With
    --etcd: also turn on etcd auth (root's password from --etcd-password-file), create zt's roles
    and publish the trust bundle; an existing CA there is then reused unless --force.

    \b
    Example:
      zt ca init --ca-dir /var/lib/zt/ca --trust-domain example.org
    """
    from zt.identity.ca import CertificateAuthority  # noqa: PLC0415
    from zt.identity.errors import CertificateFileError  # noqa: PLC0415

    if settings is not None:
        _init_fleet(ca_dir, trust_domain, force, settings)
        return
    cert_pem, key_pem = _read(cert, "--cert"), _read(key, "--key")
    if (cert_pem is None) != (key_pem is None):
        raise CertificateFileError("--cert and --key: expected both or neither")
    if cert_pem is not None and key_pem is not None:
        ca = CertificateAuthority.import_pem(
            ca_dir,
            cert_pem,
            key_pem,
            trust_domain=trust_domain,
            bundle_pem=_read(bundle, "--bundle"),
            force=force,
        )
    else:
        ca = CertificateAuthority.init(ca_dir, trust_domain, force=force)
    typer.echo(f"CA in {ca_dir}: trust domain {ca.trust_domain}, sha256 {ca.fingerprint}")


def _init_fleet(
    directory: Path,
    trust_domain: str,
    force: bool,
    settings: "EtcdSettings",
) -> None:
    from zt.errors import UsageError  # noqa: PLC0415
    from zt.fleet import acl, rotation  # noqa: PLC0415
    from zt.identity.ca import CertificateAuthority  # noqa: PLC0415

    password, prefix = settings.password, settings.prefix
    if password is None:
        raise UsageError("--etcd-password-file: required with --etcd (root's etcd password)")
    if force or not (directory / "ca.pem").exists():
        ca = CertificateAuthority.init(directory, trust_domain, force=force)
    else:
        ca = CertificateAuthority.load(directory)

    async def go(client: "EtcdClient") -> "rotation.Bundle":
        await acl.bootstrap(client, prefix, password)
        return await rotation.publish_bundle(
            client, prefix, ca.trust_domain, rotation.bundle_roots(directory)
        )

    published = with_client(settings, go)
    typer.echo(
        f"CA in {directory}: trust domain {ca.trust_domain}, sha256 {ca.fingerprint}; "
        f"etcd auth on, bundle generation {published.generation} at {prefix}/ca/bundle"
    )


@app.command()
@reports_errors
@etcd_flags(operator_settings)
def serve(
    *,
    ca_dir: CaDirOpt = CA_DIR,
    settings: "EtcdSettings",
    leaf_lifetime: Annotated[
        float,
        typer.Option(
            help="workload certificate lifetime: 24h, 90m, ... (seconds; at least 1h)",
            parser=_values.duration(floor=3600.0),
            metavar="DURATION",
        ),
    ] = LEAF_LIFETIME,
    quiet: Annotated[bool, typer.Option("--quiet", help="log only refusals and errors")] = False,
) -> None:
    """Run the signer: answer CSRs and join requests through etcd; complete root rotations.

    \b
    Example:
      zt ca serve --ca-dir /var/lib/zt/ca --etcd https://10.0.0.1:2379 \\
        --etcd-cacert etcd-ca.pem --etcd-password-file root.pw
    """
    import contextlib  # noqa: PLC0415
    import logging  # noqa: PLC0415

    from zt.fleet.signer import Signer  # noqa: PLC0415

    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)

    async def go(client: "EtcdClient") -> None:
        await Signer(client, settings.prefix, ca_dir, leaf_lifetime=leaf_lifetime).run()

    with contextlib.suppress(KeyboardInterrupt):
        with_client(settings, go)


@app.command()
@reports_errors
@etcd_flags(operator_settings)
def rotate(
    *,
    ca_dir: CaDirOpt = CA_DIR,
    settings: "EtcdSettings",
    switch_after: Annotated[
        float,
        typer.Option(
            help="how long nodes get to fetch the new bundle before it signs: 60s, 5m, ... "
            "(seconds)",
            parser=_values.duration(),
            metavar="DURATION",
        ),
    ] = 60.0,
    retire_after: Annotated[
        float | None,
        typer.Option(
            help="drop the old root this long after the switch: 1h, 7d, ... (default: when the "
            "last leaf it signed expires; nodes renew onto the new root at the switch)",
            parser=_values.duration(),
            metavar="DURATION",
        ),
    ] = None,
) -> None:
    """Start a root rotation: a new root joins the bundle now; the running signer signs with it
    after --switch-after and drops the old root once the last leaf it signed has expired (or
    --retire-after the switch).

    \b
    Example:
      zt ca rotate --ca-dir /var/lib/zt/ca --etcd https://etcd1:2379 \\
        --etcd-cacert etcd-ca.pem --etcd-password-file root.pw --switch-after 5m
    """
    import time  # noqa: PLC0415

    from zt.fleet import rotation  # noqa: PLC0415
    from zt.identity.ca import CertificateAuthority  # noqa: PLC0415

    rotation.introduce(ca_dir, switch_after=switch_after, retire_after=retire_after)
    ca = CertificateAuthority.load(ca_dir)

    async def go(client: "EtcdClient") -> "rotation.Bundle":
        return await rotation.publish_bundle(
            client, settings.prefix, ca.trust_domain, rotation.bundle_roots(ca_dir)
        )

    bundle = with_client(settings, go)
    rotation.mark_published(ca_dir, bundle.roots, time.time())
    state = rotation.read_state(ca_dir)
    switch_at = None if state is None else state.switch_at
    when = "when it published the bundle" if switch_at is None else f"at {_iso(switch_at)}"
    typer.echo(
        f"new root introduced: bundle generation {bundle.generation} holds "
        f"{len(bundle.roots)} roots; the signer switches {when}"
    )


@token_app.command("create")
@reports_errors
@etcd_flags(operator_settings)
def token_create(
    *,
    node: Annotated[
        str,
        typer.Option(
            help="the node this token may join (its --node name)", parser=_values.node_name
        ),
    ],
    ttl: Annotated[
        float,
        typer.Option(
            help="how long the token stays usable: 1h, 30m, ... (seconds)",
            parser=_values.duration(floor=1.0),
            metavar="DURATION",
        ),
    ] = 3600.0,
    settings: "EtcdSettings",
) -> None:
    """Print a one-time join token for NODE (one line): give it to `zt node join --token`.

    \b
    Example:
      zt ca token create --node node1 --ttl 1h --etcd https://10.0.0.1:2379 \\
        --etcd-cacert etcd-ca.pem --etcd-password-file root.pw
    """
    from zt.fleet import join  # noqa: PLC0415

    async def go(client: "EtcdClient") -> str:
        return str(await join.create_token(client, settings.prefix, node, ttl=ttl))

    typer.echo(with_client(settings, go))


@app.command()
@reports_errors
def issue(
    spiffe: Annotated[
        str, typer.Option(help="spiffe://<td>/ns/<ns>/sa/<sa>", parser=_values.spiffe_id)
    ],
    out: Annotated[
        Path,
        typer.Option(help="writes OUT.pem, OUT.key, OUT-bundle.pem", parser=_values.out_prefix),
    ],
    ca_dir: NewCaDirOpt = CA_DIR,
    lifetime: Annotated[
        float,
        typer.Option(
            help="certificate lifetime: 24h, 90m, ... (seconds)",
            parser=_values.duration(floor=1.0),
            metavar="DURATION",
        ),
    ] = LEAF_LIFETIME,
) -> None:
    """Issue a workload certificate from the CA in --ca-dir.

    \b
    Example:
      zt ca issue --ca-dir /var/lib/zt/ca --out ./echo \\
        --spiffe spiffe://cluster.local/ns/default/sa/echo
    """
    import time  # noqa: PLC0415

    from zt.errors import UsageError  # noqa: PLC0415
    from zt.identity.ca import CertificateAuthority  # noqa: PLC0415
    from zt.identity.spiffe import SpiffeId  # noqa: PLC0415

    if out.parent.resolve() == ca_dir.resolve():  # `--out DIR/ca` would overwrite the CA's key
        raise UsageError(f"--out: got {str(out)!r}, expected a path outside --ca-dir {ca_dir}")
    identity = SpiffeId.parse(spiffe)
    cert = CertificateAuthority.load(ca_dir).issue(identity, now=time.time(), lifetime=lifetime)
    for path in _write_set(cert, out):
        typer.echo(str(path))


def _write_set(cert: "WorkloadCert", out: Path) -> tuple[Path, Path, Path]:
    """Each file is written atomically; if one fails, the files of the set this run created are
    removed too, so a failed issue never leaves a key without its certificate."""
    from zt.identity._files import FileWriteError  # noqa: PLC0415

    paths = [out.with_name(out.name + suffix) for suffix in (".pem", ".key", "-bundle.pem")]
    existed = {p for p in paths if p.exists()}
    try:
        return cert.write(out)
    except FileWriteError:
        for path in paths:
            if path not in existed:
                path.unlink(missing_ok=True)
        raise


@app.command()
@reports_errors
def show(
    ca_dir: NewCaDirOpt = CA_DIR,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output")] = False,
) -> None:
    """Subject, fingerprint, validity and the identities this CA issued.

    \b
    Example:
      zt ca show --ca-dir /var/lib/zt/ca --json
    """
    from zt.identity.ca import CertificateAuthority  # noqa: PLC0415

    ca = CertificateAuthority.load(ca_dir)
    latest: dict[str, float] = {}
    for rec in ca.issued():
        latest[rec.identity] = max(latest.get(rec.identity, 0.0), rec.not_after)
    doc = {
        "directory": str(ca_dir),
        "trust_domain": ca.trust_domain,
        "subject": ca.cert.subject.rfc4514_string(),
        "sha256_fingerprint": ca.fingerprint,
        "not_before": _iso(ca.cert.not_valid_before_utc.timestamp()),
        "not_after": _iso(ca.cert.not_valid_after_utc.timestamp()),
        "issued": [{"identity": i, "latest_not_after": _iso(t)} for i, t in sorted(latest.items())],
    }
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    for field in ("directory", "trust_domain", "subject", "sha256_fingerprint"):
        typer.echo(f"{field}: {doc[field]}")
    typer.echo(f"validity: {doc['not_before']} .. {doc['not_after']}")
    typer.echo(f"issued identities: {len(latest)}")
    for identity, t in sorted(latest.items()):
        typer.echo(f"  {identity} (latest valid until {_iso(t)})")
