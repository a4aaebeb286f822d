"""`zt ca init|issue|show|serve|rotate|token create`: the CA's state directory from the command line.

With `--etcd` the CA serves a fleet (docs/fleet.md): `init --etcd` bootstraps etcd auth and publishes
the trust bundle, `serve` runs the signer (the only process holding the CA key), `token create`
makes one-time join tokens, `rotate` starts a root rotation the signer then completes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import re
import time
from pathlib import Path
from typing import Annotated

import typer

from zt.errors import UsageError
from zt.fleet import acl, join, rotation
from zt.fleet.connect import EtcdSettings
from zt.fleet.etcd import EtcdClient
from zt.fleet.signer import Signer
from zt.identity._files import FileWriteError
from zt.identity.ca import (
    DEFAULT_DIR,
    DEFAULT_LEAF_LIFETIME,
    DEFAULT_TRUST_DOMAIN,
    CertificateAuthority,
)
from zt.identity.certs import WorkloadCert
from zt.identity.errors import CertificateFileError
from zt.identity.spiffe import SpiffeId

from ._common import reports_errors
from ._etcd import (
    DEFAULT_PREFIX,
    CacertOpt,
    CertOpt,
    EtcdOpt,
    KeyOpt,
    PasswordFileOpt,
    PrefixOpt,
    UserOpt,
    settings_from,
    with_client,
)

app = typer.Typer(help="The embedded certificate authority.", no_args_is_help=True)
token_app = typer.Typer(help="One-time join tokens for fleet nodes.", no_args_is_help=True)
app.add_typer(token_app, name="token")

DirOpt = Annotated[Path, typer.Option("--dir", help="CA state directory")]

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(flag: str, text: str, *, floor: float = 0.0) -> float:
    """`90s`, `30m`, `24h`, `7d` or plain seconds; at least `floor` seconds."""
    m = _DURATION.fullmatch(text.strip())
    if m is None:
        raise UsageError(f"{flag}: got {text!r}, expected a duration like 90s, 30m, 24h or 7d")
    seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds < floor:
        raise UsageError(f"{flag}: got {text!r}, expected at least {floor:.0f}s")
    return seconds


def operator_settings(
    etcd: str,
    cacert: Path | None,
    cert: Path | None,
    key: Path | None,
    user: str | None,
    password_file: Path | None,
    prefix: str,
) -> EtcdSettings:
    """The shared --etcd* flags; the CA's commands act as root unless --etcd-user says otherwise."""
    if user is None and password_file is not None:
        user = "root"
    return settings_from(etcd, cacert, cert, key, user, password_file, prefix)


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _read(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CertificateFileError(f"{what} {path}: {exc.strerror}") from None


@app.command()
@reports_errors
def init(
    *,
    directory: DirOpt = DEFAULT_DIR,
    trust_domain: Annotated[str, typer.Option(help="SPIFFE trust domain")] = DEFAULT_TRUST_DOMAIN,
    force: Annotated[bool, typer.Option(help="replace an existing CA")] = False,
    cert: Annotated[Path | None, typer.Option(help="operator CA certificate (PEM)")] = None,
    key: Annotated[Path | None, typer.Option(help="operator CA private key (PEM)")] = None,
    bundle: Annotated[Path | None, typer.Option(help="trust bundle peers verify against")] = None,
    etcd: Annotated[
        str | None, typer.Option("--etcd", help="also bootstrap this etcd cluster (URLs)")
    ] = None,
    etcd_cacert: CacertOpt = None,
    etcd_cert: CertOpt = None,
    etcd_key: KeyOpt = None,
    etcd_user: UserOpt = None,
    etcd_password_file: PasswordFileOpt = None,
    etcd_prefix: PrefixOpt = DEFAULT_PREFIX,
) -> None:
    """Create a P-256 CA in DIR, or (with --cert/--key) store an operator's CA there. With --etcd:
    also turn on etcd auth (root's password from --etcd-password-file), create zt's roles and
    publish the trust bundle; an existing CA in DIR is then reused unless --force."""
    if etcd is not None:
        settings = operator_settings(etcd, etcd_cacert, etcd_cert, etcd_key, etcd_user,
                                     etcd_password_file, etcd_prefix)  # fmt: skip
        _init_fleet(directory, trust_domain, force, settings)
        return
    cert_pem, key_pem = _read(cert, "--cert"), _read(key, "--key")
    if (cert_pem is None) != (key_pem is None):
        raise CertificateFileError("--cert and --key: expected both or neither")
    if cert_pem is not None and key_pem is not None:
        ca = CertificateAuthority.import_pem(
            directory,
            cert_pem,
            key_pem,
            trust_domain=trust_domain,
            bundle_pem=_read(bundle, "--bundle"),
            force=force,
        )
    else:
        ca = CertificateAuthority.init(directory, trust_domain, force=force)
    typer.echo(f"CA in {directory}: trust domain {ca.trust_domain}, sha256 {ca.fingerprint}")


def _init_fleet(
    directory: Path,
    trust_domain: str,
    force: bool,
    settings: EtcdSettings,
) -> None:
    password, prefix = settings.password, settings.prefix
    if password is None:
        raise UsageError("--etcd-password-file: required with --etcd (root's etcd password)")
    if force or not (directory / "ca.pem").exists():
        ca = CertificateAuthority.init(directory, trust_domain, force=force)
    else:
        ca = CertificateAuthority.load(directory)

    async def go(client: EtcdClient) -> rotation.Bundle:
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
def serve(
    *,
    directory: DirOpt = DEFAULT_DIR,
    etcd: EtcdOpt,
    etcd_cacert: CacertOpt = None,
    etcd_cert: CertOpt = None,
    etcd_key: KeyOpt = None,
    etcd_user: UserOpt = None,
    etcd_password_file: PasswordFileOpt = None,
    etcd_prefix: PrefixOpt = DEFAULT_PREFIX,
    leaf_lifetime: Annotated[
        str, typer.Option(help="workload certificate lifetime (e.g. 24h; at least 1h)")
    ] = "24h",
    quiet: Annotated[bool, typer.Option("--quiet", help="log only refusals and errors")] = False,
) -> None:
    """Run the signer: answer CSRs and join requests through etcd; complete root rotations."""
    lifetime = parse_duration("--leaf-lifetime", leaf_lifetime, floor=3600.0)
    settings = operator_settings(etcd, etcd_cacert, etcd_cert, etcd_key, etcd_user,
                                 etcd_password_file, etcd_prefix)  # fmt: skip
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)

    async def go(client: EtcdClient) -> None:
        await Signer(client, settings.prefix, directory, leaf_lifetime=lifetime).run()

    with contextlib.suppress(KeyboardInterrupt):
        with_client(settings, go)


@app.command()
@reports_errors
def rotate(
    *,
    directory: DirOpt = DEFAULT_DIR,
    etcd: EtcdOpt,
    etcd_cacert: CacertOpt = None,
    etcd_cert: CertOpt = None,
    etcd_key: KeyOpt = None,
    etcd_user: UserOpt = None,
    etcd_password_file: PasswordFileOpt = None,
    etcd_prefix: PrefixOpt = DEFAULT_PREFIX,
    switch_after: Annotated[
        str, typer.Option(help="how long nodes get to fetch the new bundle before it signs")
    ] = "60s",
    retire_after: Annotated[
        str | None,
        typer.Option(
            help="drop the old root this long after the switch (default: when the last leaf it "
            "signed expires; nodes renew onto the new root at the switch)"
        ),
    ] = None,
) -> None:
    """Start a root rotation: a new root joins the bundle now; the running signer signs with it
    after --switch-after and drops the old root once the last leaf it signed has expired (or
    --retire-after the switch).

    Example: zt ca rotate --dir /var/lib/zt/ca --etcd https://etcd1:2379 --etcd-cacert etcd-ca.pem
    --etcd-password-file root.pw --switch-after 5m"""
    after = parse_duration("--switch-after", switch_after)
    retire = None if retire_after is None else parse_duration("--retire-after", retire_after)
    settings = operator_settings(etcd, etcd_cacert, etcd_cert, etcd_key, etcd_user,
                                 etcd_password_file, etcd_prefix)  # fmt: skip
    rotation.introduce(directory, switch_after=after, retire_after=retire)
    ca = CertificateAuthority.load(directory)

    async def go(client: EtcdClient) -> rotation.Bundle:
        return await rotation.publish_bundle(
            client, settings.prefix, ca.trust_domain, rotation.bundle_roots(directory)
        )

    bundle = with_client(settings, go)
    rotation.mark_published(directory, bundle.roots, time.time())
    state = rotation.read_state(directory)
    switch_at = None if state is None else state.switch_at
    when = "when it published the bundle" if switch_at is None else f"at {_iso(switch_at)}"
    typer.echo(
        f"new root introduced: bundle generation {bundle.generation} holds "
        f"{len(bundle.roots)} roots; the signer switches {when}"
    )


@token_app.command("create")
@reports_errors
def token_create(
    *,
    node: Annotated[str, typer.Option(help="the node this token may join (its --node name)")],
    ttl: Annotated[str, typer.Option(help="how long the token stays usable (e.g. 1h)")] = "1h",
    etcd: EtcdOpt,
    etcd_cacert: CacertOpt = None,
    etcd_cert: CertOpt = None,
    etcd_key: KeyOpt = None,
    etcd_user: UserOpt = None,
    etcd_password_file: PasswordFileOpt = None,
    etcd_prefix: PrefixOpt = DEFAULT_PREFIX,
) -> None:
    """Print a one-time join token for NODE (one line): give it to `zt node join --token`."""
    seconds = parse_duration("--ttl", ttl)
    settings = operator_settings(etcd, etcd_cacert, etcd_cert, etcd_key, etcd_user,
                                 etcd_password_file, etcd_prefix)  # fmt: skip

    async def go(client: EtcdClient) -> str:
        return str(await join.create_token(client, settings.prefix, node, ttl=seconds))

    typer.echo(with_client(settings, go))


@app.command()
@reports_errors
def issue(
    spiffe: Annotated[str, typer.Option(help="spiffe://<td>/ns/<ns>/sa/<sa>")],
    out: Annotated[Path, typer.Option(help="writes OUT.pem, OUT.key, OUT-bundle.pem")],
    directory: DirOpt = DEFAULT_DIR,
    lifetime: Annotated[float, typer.Option(help="seconds")] = DEFAULT_LEAF_LIFETIME,
) -> None:
    """Issue a workload certificate from the CA in DIR."""
    identity = SpiffeId.parse(spiffe)
    cert = CertificateAuthority.load(directory).issue(identity, now=time.time(), lifetime=lifetime)
    for path in _write_set(cert, out):
        typer.echo(str(path))


def _write_set(cert: WorkloadCert, out: Path) -> tuple[Path, Path, Path]:
    """Each file is written atomically; if one fails, the files of the set this run created are
    removed too, so a failed issue never leaves a key without its certificate."""
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
    directory: DirOpt = DEFAULT_DIR,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output")] = False,
) -> None:
    """Subject, fingerprint, validity and the identities this CA issued."""
    ca = CertificateAuthority.load(directory)
    latest: dict[str, float] = {}
    for rec in ca.issued():
        latest[rec.identity] = max(latest.get(rec.identity, 0.0), rec.not_after)
    doc = {
        "directory": str(directory),
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
