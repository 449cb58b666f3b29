"""One typed settings object for the whole hub.

Sources, strongest first: explicit keyword arguments, ``STRONGROOM_*`` environment variables
(nested with ``__``, e.g. ``STRONGROOM_OIDC__ISSUER``), an optional TOML file named by
``STRONGROOM_CONFIG`` (default ``./strongroom.toml`` when present), then the embedded defaults,
which keep everything under ``./var/``.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .addresses import internal_host
from .archive.storage.config import StorageSettings  # the one storage model ([archive.storage])
from .keyfiles import read_or_create


class OidcSettings(BaseModel):
    """An external OpenID Provider (e.g. Life Science AAI). Disabled while ``issuer`` is empty."""

    issuer: str = ""
    client_id: str = ""
    client_secret: SecretStr = SecretStr("")
    display_name: str = "Life Science Login"
    scopes: str = "openid profile email"
    # REFEDS MFA profile: an id_token whose ``acr`` is not in this list is a single-factor login.
    mfa_acr_values: list[str] = ["https://refeds.org/profile/mfa"]
    # Plain-http issuers are refused unless they are loopback (the test provider runs on 127.0.0.1).
    allow_insecure_loopback: bool = True


class PasswordHashSettings(BaseModel):
    """argon2id cost of new password hashes. The defaults are argon2-cffi's, RFC 9106's low-memory
    profile; lower them only for test suites (they make local passwords cheaper to brute-force)."""

    time_cost: int = Field(3, ge=1)
    memory_kib: int = Field(65536, ge=8)
    parallelism: int = Field(4, ge=1)


class SecuritySettings(BaseModel):
    session_idle_minutes: int = 30
    session_max_hours: int = 12
    fresh_mfa_minutes: int = 10
    login_attempts_per_window: int = 5  # failed logins per account (every address together) in the window
    # Failed logins per client address in the window (every account together): a much higher ceiling that slows
    # password spraying without letting one address's typos lock out the others behind it (docs/security.md)
    login_attempts_per_address: int = Field(100, ge=1)
    login_window_seconds: int = 300
    token_max_days: int = 90
    # How an accepted API-token use is audited (docs/security.md): "window" = one token.used event and one
    # last_used_at write per token per window of token_use_window_seconds (reads take no write lock);
    # "every" = on every request. Refused uses, revocation and expiry are checked and audited every time.
    token_use_audit: Literal["window", "every"] = "window"
    token_use_window_seconds: int = Field(60, ge=1, le=86_400)
    # The web server's cache of token -> user -> readable projects across requests (docs/security.md, "The
    # decision cache"): dropped by every committed change to tokens, users, memberships, roles or projects in any
    # process. Off: every request reads them from the database. Unset: on with SQLite, where every process sees a
    # change before the writer's commit returns; off with PostgreSQL, where the change reaches other processes by
    # NOTIFY just after the commit (a request decided in that gap, usually well under a millisecond, still sees the
    # state before it): set true to accept that gap for the speed.
    decision_cache: bool | None = None
    # None = decided from base_url: secure cookies everywhere except plain-http loopback development.
    cookie_secure: bool | None = None
    max_body_bytes: int = 1_048_576
    password_hash: PasswordHashSettings = Field(default_factory=PasswordHashSettings)


class JobSettings(BaseModel):
    embedded: bool = True  # run jobs inside `strongroom serve`; turn off when running `strongroom worker`s
    lease_seconds: int = 30
    poll_seconds: float = 0.5
    extra_modules: list[str] = []  # modules that register more job kinds when imported
    keep_done_days: int = Field(7, ge=1)  # finished jobs are pruned after this long (hourly `jobs.prune`)
    keep_failed_days: int = Field(30, ge=1)  # failed ones stay longer: someone may still look into them
    # `strongroom worker` exits 4 (its supervisor starts a new one) once this many attempts, abandoned past their
    # kind's time limit, still run in it: Python cannot stop their threads
    max_hung_attempts: int = Field(3, ge=1)
    metrics_port: int = 0  # Prometheus metrics of `strongroom worker` on this port (0: off)
    metrics_host: str = "127.0.0.1"


class ArchiveSettings(BaseModel):
    storage: StorageSettings = Field(default_factory=StorageSettings)
    # Protects the archive private key files; empty → derived from the hub secret.
    key_passphrase: SecretStr = SecretStr("")
    keys_dir: Path | None = None  # default <var_dir>/keys
    part_size: int = 128 * (65536 + 28)  # upload part: 128 whole crypt4gh segments (8 MiB; S3 wants ≥ 5 MiB)
    ingest_workers: int = 2


class TrustedVisaIssuer(BaseModel):
    """A GA4GH visa issuer whose ``ControlledAccessGrants`` visas may open downloads.

    A visa is considered only when its ``iss`` equals ``issuer`` and its header ``jku`` is one of
    this issuer's entries: keys are never fetched from any other URL.
    """

    issuer: str
    jku: str
    # Accessions (SRD-…) this issuer may grant; empty = any dataset of this hub.
    datasets: list[str] = []
    # The login (OIDC) issuers whose subject identifiers this issuer's visas carry in ``sub``: a visa then
    # binds only to an account of one of them. Empty: any account with that subject (``sub`` strings are
    # unique per login issuer only; set this when more than one login issuer is configured).
    subject_issuers: list[str] = []


class AccessSettings(BaseModel):
    """Entitlements and GA4GH visas (issued by the hub, and accepted from trusted issuers)."""

    trusted_visa_issuers: list[TrustedVisaIssuer] = []
    # True: a visa counts only when its ``sub`` equals the caller's subject (their login's ``sub``).
    # False: "broker-bound" — whoever presents the passport is trusted to be its subject.
    visa_subject_must_match: bool = True
    visa_key_file: Path | None = None  # the hub's visa signing key; default <var_dir>/keys/visa-signing.jwk
    jwks_cache_seconds: int = 300
    jwks_timeout_seconds: float = 5.0
    max_visas: int = 200  # per request
    max_visa_bytes: int = 16_384
    max_jwks_fetches: int = 10  # per request
    visa_leeway_seconds: int = 60  # clock skew allowed on exp / iat / asserted
    # Plain-http jku URLs are refused unless they are loopback (test issuers run on 127.0.0.1).
    allow_insecure_loopback_jku: bool = True
    entitlement_reminder_days: int = 14  # reminder e-mail this many days before an entitlement ends


class NotifySettings(BaseModel):
    """Outgoing e-mail. With ``host`` empty (the embedded default) e-mails are written to the log."""

    host: str = ""
    port: int = 587
    from_address: str = "strongroom@localhost"
    starttls: bool = True
    username: str = ""
    password: SecretStr = SecretStr("")
    timeout_seconds: float = 10.0


class ImagingSettings(BaseModel):
    """The DICOM destination and imports (``strongroom dicom serve``, ``strongroom import dicom``)."""

    dicom_host: str = "127.0.0.1"  # address the project destinations listen on (0.0.0.0 on a real hub)
    spool_dir: Path | None = None  # default <var_dir>/dicom-spool: received objects until archived
    # The key that seals the pseudonym key store (original identifiers). Keep it apart from the
    # database and its backups; default <var_dir>/keys/pseudonym-keystore.key (mode 0600).
    keystore_key_file: Path | None = None
    workers: int = 0  # de-identification processes; 0 = one per CPU
    fsync: bool = True  # make each received object durable before acknowledging it
    # A site's choice for senders that want bursts acknowledged fast: while senders are connected, up to this
    # many acknowledged objects wait in the spool, unverified; past it, or once the senders disconnect, they go
    # to verification. Measured (benchmarks/README.md): acknowledgements +50 %, end to end -20 %. 0 (the
    # default): each object goes to verification as soon as it is acknowledged. Nothing is published unverified.
    receive_backlog: int = Field(0, ge=0)
    # When a sender gets its success status: "deidentified" (the default) once the object is de-identified and
    # durable, so an object that cannot be de-identified is refused with a failure status; "received" (a site's
    # choice) once the original is durable in the spool, de-identified afterwards in the verification pool, as
    # other PACS acknowledge. Then a sender learns of an unprocessable object only from the import report (the
    # batch's rejected count and reasons). With a receive_backlog, bursts are acknowledged at the speed of the
    # network layer and the disk (benchmarks/README.md). Nothing is archived or published before verification.
    acknowledge: Literal["deidentified", "received"] = "deidentified"
    # The verification pool's CPU priority beside the receiving process: "low" (the default: nice 10) or, a
    # site's choice, "idle" (Linux SCHED_IDLE: it runs only on CPU time nothing else wants, so a sender's next
    # object never waits behind verification; measured in benchmarks/README.md). With "idle", a host kept busy
    # by other programs holds verification and publication back until it is quiet again (the spool keeps the
    # acknowledged objects durable meanwhile); "low" still gives the pool a share.
    pool_priority: Literal["low", "idle"] = "low"
    max_pdu: int = 131072  # maximum PDU we receive: fewer, larger reads (storescu's default is 16 KiB)
    publish_idle_seconds: float = 10.0  # publish a new dataset version once imports are quiet this long
    refresh_seconds: float = 2.0  # how often `dicom serve` re-reads destinations and allowed senders
    metrics_port: int = 0  # Prometheus metrics of `dicom serve` on this port (0: off)
    metrics_host: str = "127.0.0.1"


class DicomwebSettings(BaseModel):
    """``[dicomweb]`` (see docs/dicomweb.md): DICOMweb per project."""

    # the largest STOW-RS request body (every other route keeps [security] max_body_bytes)
    stow_max_bytes: int = Field(2 * 1024**3, ge=1024)


class AuditSettings(BaseModel):
    """Checkpoints that anchor the audit chain outside the database (``strongroom audit checkpoint``)."""

    # Append-only JSON lines, one signed checkpoint each; default <var_dir>/audit-checkpoints.jsonl.
    # Put it where the database's operators cannot rewrite it (another host's mount, chattr +a).
    checkpoint_file: Path | None = None
    # Events describing something already done (a download's end, a refusal) that could not be written
    # because the database did not answer wait here, fsync'd, until replayed into the chain (JSON lines;
    # default <var_dir>/audit-outbox.jsonl; docs/operations.md "Audit outbox").
    outbox_file: Path | None = None
    # Ed25519 key that signs checkpoints; default <var_dir>/keys/audit-anchor.key (mode 0600).
    anchor_key_file: Path | None = None
    # Also write each checkpoint to the archive's S3 bucket (when storage is S3), under Object Lock
    # retention when the bucket has it enabled, else as a write-once key.
    checkpoint_to_s3: bool = True
    s3_prefix: str = "audit-checkpoints/"
    s3_retention_days: int = 3650


# A known_hosts line ("host[,host…] type base64 [comment]") or just "type base64": the server's key, pinned.
_SSH_HOST_KEY = (r"^([^\s@#][^\s]*\s+)?(ssh-ed25519|ssh-ed448|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|"
                 r"sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com)"
                 r"\s+[A-Za-z0-9+/]+=*(\s[^\x00-\x1f]*)?$")


class AirlockS3Credential(BaseModel):
    """A partner bucket the airlock may export to (``[airlock.s3.<name>]``); a project's ``s3`` destination
    names it by ``credential``, so keys never enter project settings. Objects go under ``prefix``. Only the
    projects listed in ``projects`` may choose it."""

    model_config = ConfigDict(extra="forbid")

    endpoint_url: str = ""  # empty: AWS
    bucket: str = Field(min_length=3)
    access_key: SecretStr = SecretStr("")
    secret_key: SecretStr = SecretStr("")
    region: str = "us-east-1"
    prefix: str = ""
    verify_tls: bool | str = True  # true, false (never in production) or a CA bundle path
    connect_timeout: float = Field(5.0, gt=0)
    read_timeout: float = Field(60.0, gt=0)
    max_attempts: int = Field(5, ge=1)
    projects: list[str] = []  # slugs of the projects it serves; none listed: none (deny by default)

    def serves(self, slug: str) -> bool:
        return slug in self.projects


class AirlockSftpCredential(BaseModel):
    """A partner SFTP server the airlock may export to (``[airlock.sftp.<name>]``), pinned whole by the operator:
    where the hub connects (``host``, ``port``), as whom (``username``, the hub's key), the host key the server
    must present (never trusted on first use) and the ``directory`` files go under. A project's ``sftp``
    destination names it by ``credential`` and adds only the partner's crypt4gh key and a sub-folder, so no
    project points the hub's connections elsewhere. Only the projects listed in ``projects`` may choose it."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.:-]+$")
    port: int = Field(22, ge=1, le=65535)
    username: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    host_key: str = Field(max_length=16_000, pattern=_SSH_HOST_KEY)
    directory: str = Field(".", min_length=1, max_length=500, pattern=r"^[^\x00-\x1f\x7f]+$")
    private_key_file: Path
    passphrase: SecretStr = SecretStr("")
    connect_timeout: float = Field(10.0, gt=0)
    projects: list[str] = []  # slugs of the projects it serves; none listed: none (deny by default)

    def serves(self, slug: str) -> bool:
        return slug in self.projects


class AirlockSettings(BaseModel):
    """Credentials of the airlock's external destinations, by name, each bound to the projects it serves (see
    docs/airlock.md)."""

    s3: dict[str, AirlockS3Credential] = {}
    sftp: dict[str, AirlockSftpCredential] = {}
    outbox_days: int = Field(30, ge=1, le=3650)  # an outbox file nobody downloaded is deleted after this


class ComputeMachine(BaseModel):
    """A bookable machine (``[compute.machines.<name>]``), e.g. a DGX-2 with 16 GPUs. Its Slurm reservations
    hold its GPUs as a cluster licence ``slurm_license`` (Slurm 22.05 reservations cannot hold GRES) or, when
    empty, as ``TRES=gres/gpu=N`` on ``slurm_nodes`` (Slurm ≥ 23.02)."""

    model_config = ConfigDict(extra="forbid")

    gpus: int = Field(ge=1, le=1024)
    description: str = ""
    slurm_nodes: str = ""  # e.g. "dgx2"; empty: the machine's name
    slurm_license: str = ""  # e.g. "dgx2_gpu" (Licenses=dgx2_gpu:16 in slurm.conf)


class ComputeSlurmSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = False  # off: bookings live only on the hub (their reservations say "not configured")
    scontrol: str = "scontrol"
    slurm_conf: Path | None = None  # SLURM_CONF for scontrol; default: Slurm's own
    timeout_seconds: float = Field(30.0, gt=0)


class ComputeSettings(BaseModel):
    """GPU booking (``[compute]``, see docs/compute.md)."""

    model_config = ConfigDict(extra="forbid")

    machines: dict[str, ComputeMachine] = {}
    over_budget: Literal["refuse", "allow_and_notify"] = "refuse"
    timezone: str = "Europe/Stockholm"  # the 09:00 / 12:00 rules are local time
    max_weeks: int = Field(12, ge=1, le=104)  # longest single booking
    horizon_weeks: int = Field(26, ge=1, le=520)  # how far ahead the earliest slot is searched
    slurm: ComputeSlurmSettings = Field(default_factory=ComputeSlurmSettings)


def internal_address(host: str, subnet: str) -> str | None:
    """Why ``host`` (a name or an IP address) names the hub's own machine or its internals, or None: loopback,
    link-local (the cloud's metadata service), unspecified, multicast, or inside the workspaces' ``subnet`` (each
    workspace's host side is the hub machine itself), or an IPv6 address carrying such an IPv4 address (IPv4-mapped,
    -translated or -compatible, NAT64, 6to4, Teredo: ``addresses``). A name is judged by its spelling only
    (``localhost``): to judge where a name leads, ``outside_addresses``."""
    return internal_host(host, subnet)


class NotOutside(ValueError):
    """A host the hub must not dial for a project: it is, or resolves to, the hub's machine or its internals. The
    message says which kind (loopback, link-local, ...), never the addresses."""


def outside_addresses(host: str, port: int, subnet: str) -> list[str]:
    """The addresses ``host`` resolves to now (an IP address: itself; none: []), in the resolver's order of
    preference, when not one of them is internal (``internal_address``, per address); else ``NotOutside``. Dial one
    of these, not the name: the name may resolve elsewhere by the time it is dialled (DNS rebinding)."""
    if (why := internal_address(host, subnet)) is not None:
        raise NotOutside(f"is {why}")
    try:
        found = socket.getaddrinfo(host.strip().strip("[]"), port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):  # no such name, no resolver; a label too long
        return []
    addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
    for address in addresses:
        if (why := internal_address(address, subnet)) is not None:
            raise NotOutside(f"resolves to an address that is {why}")
    return addresses


class WorkspacePackageMirror(BaseModel):
    """A package index a project's notebook workspaces may install from (``[workspaces.package_mirrors.<name>]``),
    pinned whole by the operator: its PEP 503 simple index ``url``. A project's ``workspace_package_mirror``
    setting names it, so no project points a workspace's egress rules at an address of its choosing. Only the
    projects listed in ``projects`` may choose it."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=500)
    projects: list[str] = []  # slugs of the projects it serves; none listed: none (deny by default)

    @field_validator("url")
    @classmethod
    def _simple_index(cls, value: str) -> str:
        value = value.strip()
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL of a PEP 503 simple index")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ValueError("must carry no credentials, query or fragment")
        try:
            _ = parts.port  # raises ValueError on a bad port
        except ValueError:
            raise ValueError("has an invalid port") from None
        return value.rstrip("/") + "/"

    def serves(self, slug: str) -> bool:
        return slug in self.projects

    def endpoint(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        assert parts.hostname
        return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


class WorkspaceSettings(BaseModel):
    """Notebook workspaces (``[workspaces]``, see docs/workspaces.md)."""

    model_config = ConfigDict(extra="forbid")

    launcher: Literal["local", "slurm"] = "local"  # local: a process on the hub's machine; slurm: sbatch
    python: str = ""  # the interpreter that runs JupyterLab (default: the hub's own)
    # A hub running as root runs each local workspace under a uid (and the same gid) of its own from this
    # range, leased at start (never two live workspaces on one uid) and released at stop; no account or group
    # of the machine's user directory may use it (those uids are skipped). Well above system and normal users.
    uid_range: tuple[int, int] = (2_000_000, 2_099_999)
    # LEGACY, test machines only: "" runs every local workspace as root without any capability — one shared
    # identity, so workspaces do NOT keep out of each other's files, mounts and processes. Unset (the default):
    # a uid per workspace from uid_range. A user name (the former default "nobody") is refused: one shared
    # account let any workspace read every other's scratch, data mount and tokens (docs/workspaces.md).
    run_as: str | None = None
    # namespace: each workspace in its own network namespace with nftables rules (root, `ip`, `nft`);
    # none: no egress control at all, refused unless allow_unisolated (development only, labelled on the pages)
    isolation: Literal["namespace", "none"] = "namespace"
    allow_unisolated: bool = False
    subnet: str = "10.213.0.0/16"  # carved into one /30 per workspace (host side .1, workspace .2)
    hub_url: str = ""  # what a workspace calls the hub; default http://<the veth's host side>:<port>
    hub_port: int = Field(0, ge=0, le=65535)  # the hub's port the workspace may reach; 0: settings.port
    # Where browsers reach the workspaces: an origin (scheme://host[:port]) whose HOST is not the hub's (cookies
    # ignore ports), e.g. https://workspaces.hub.example, routed to this hub by the reverse proxy: a notebook's
    # pages never run on the hub's own origin. Unset: localhost for a hub at 127.0.0.1 and the reverse (same scheme
    # and port); for any other hub, workspaces cannot be opened until it is set (docs/workspaces.md).
    origin: str = ""
    scratch_dir: Path | None = None  # default /dev/shm/strongroom-workspaces (tmpfs), else <var_dir>/workspaces
    idle_minutes: int = Field(120, ge=1, le=10080)  # stopped after this long without kernel activity
    max_per_user: int = Field(2, ge=1, le=50)
    token_minutes: int = Field(12 * 60, ge=5, le=7 * 24 * 60)  # the workspace's hub token (revoked at stop)
    warn_minutes: int = Field(30, ge=1, le=1440)  # notice before the booking ends or the idle stop
    start_timeout_seconds: float = Field(60.0, gt=0, le=600)
    sbatch: str = "sbatch"
    scancel: str = "scancel"
    squeue: str = "squeue"
    slurm_partition: str = ""
    slurm_host: str = ""  # the address JupyterLab binds on the node and the hub dials ("": the node's first)
    # strongroom:// mounted read-only at <workspace home>/data (FUSE: fuse3 on the hub, or on the nodes)
    mount_data: bool = True
    # A local workspace under its own uid gets its own /tmp, /var/tmp, /dev/shm and /run/lock (empty tmpfs in its
    # mount namespace, gone with it), so filling them fills nothing of the machine's or another workspace's. The
    # most /tmp and /var/tmp may each hold (default 1 GiB), and /dev/shm (default 1 GiB; System V shared memory gets
    # the same limit): memory, taken only as written. PyTorch's DataLoader workers pass batches through /dev/shm.
    tmp_max_bytes: int = Field(2**30, ge=2**20, le=2**40)
    shm_max_bytes: int = Field(2**30, ge=2**20, le=2**40)
    # When the scratches are on a tmpfs (the default, /dev/shm: half the machine's memory, shared by everyone), a
    # hub running as root gives each local workspace's scratch (its HOME) a tmpfs of its own holding at most this
    # (default 8 GiB; memory, taken only as written), so one workspace filling its HOME fills neither the machine's
    # /dev/shm nor another workspace's. A scratch_dir on disk is limited by the site's file-system quotas instead.
    scratch_max_bytes: int = Field(8 * 2**30, ge=2**24, le=2**44)
    # A local workspace under its own uid runs in a control group of its own (cgroup v1 or v2; the hub must run as
    # root with a writable cgroup file system), so one notebook cannot starve the machine the hub and the other
    # projects' workspaces share: at most memory_max_bytes of memory (swap, page cache and its private tmpfs pages
    # included; beyond it the kernel stops a process of that workspace only; default 8 GiB), pids_max processes and
    # threads (a fork bomb stops there; default 4096), and, when set, cpus_max CPUs' worth of time (default 0: no
    # ceiling, but its fair share beside the others). 0 switches each off; all three 0: no control group.
    memory_max_bytes: int = Field(8 * 2**30, ge=0, le=2**50)
    pids_max: int = Field(4096, ge=0, le=2**22)
    cpus_max: float = Field(0.0, ge=0, le=1024)
    # The package indexes a project's workspace_package_mirror setting may name, each with the projects it serves
    package_mirrors: dict[str, WorkspacePackageMirror] = {}

    @model_validator(mode="after")
    def _mirrors_outside(self) -> WorkspaceSettings:
        # a mirror's host and port join a workspace's egress rules: never the hub machine's own services
        for name, mirror in self.package_mirrors.items():
            host = mirror.endpoint()[0]
            if (why := internal_address(host, self.subnet)) is not None:
                raise ValueError(f"[workspaces.package_mirrors.{name}] url: the host {host} is {why}; a package "
                                 "mirror must be a machine of its own, outside the workspaces' subnet")
        return self

    @model_validator(mode="after")
    def _limits_a_lab_can_run_in(self) -> WorkspaceSettings:
        if 0 < self.memory_max_bytes < 256 * 2**20 or 0 < self.pids_max < 64:
            raise ValueError("[workspaces] memory_max_bytes must be 0 (no limit) or at least 256 MiB, and pids_max "
                             "0 or at least 64: JupyterLab and a kernel need that much to start")
        return self

    @model_validator(mode="after")
    def _own_uids(self) -> WorkspaceSettings:
        if self.run_as:
            raise ValueError(
                f"[workspaces] run_as = {self.run_as!r} is no longer supported: every local workspace now runs "
                f"under a uid of its own from uid_range (default {self.uid_range[0]}-{self.uid_range[1]}), as one "
                "shared account let workspaces read each other's files, data mounts and tokens. Remove run_as "
                "(JupyterLab's interpreter, `python`, must be readable and executable by every user); see "
                "docs/workspaces.md")
        start, end = self.uid_range
        if not 65_536 <= start <= end <= 2**31 - 2:
            raise ValueError("[workspaces] uid_range must be [start, end] with 65536 <= start <= end < 2^31-1, "
                             "above the machine's system and normal users (default [2000000, 2099999])")
        return self

    @field_validator("origin")
    @classmethod
    def _an_origin(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value:
            return ""
        parts = urlsplit(value)
        try:
            port_ok = parts.port is None or parts.port > 0
        except ValueError:  # not a number, or out of range
            port_ok = False
        if not port_ok or parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc or (
                parts.path or parts.query or parts.fragment):
            raise ValueError(f"[workspaces] origin {value!r} must be an origin only, scheme://host[:port] (http or "
                             "https, no path), e.g. https://workspaces.hub.example")
        return f"{parts.scheme}://{parts.netloc}".lower()

    def browser_origin(self, base_url: str) -> str:
        """The origin browsers open workspaces at (``origin``, or the loopback twin of a loopback hub: 127.0.0.1 and
        localhost are two hosts, so two cookie jars and two sites), or "" when there is none. ValueError when it has
        the hub's own host: another port of the hub's host would share the hub's cookies."""
        hub = urlsplit(base_url)
        hub_host = (hub.hostname or "").rstrip(".")
        if not self.origin:
            twin = {"127.0.0.1": "localhost", "localhost": "127.0.0.1"}.get(hub_host)
            return "" if twin is None else f"{hub.scheme}://{twin}" + (f":{hub.port}" if hub.port else "")
        if (urlsplit(self.origin).hostname or "").rstrip(".") == hub_host:
            raise ValueError(f"[workspaces] origin {self.origin} has the hub's own host ({hub_host}, base_url "
                             f"{base_url}): browsers share cookies across a host's ports, so the workspaces need a "
                             "host name of their own, e.g. workspaces.<the hub's name>, with its own certificate")
        return self.origin


class DoiSettings(BaseModel):
    """DataCite (``[doi]``, see docs/fair.md): without a repository id, password and prefix the hub mints
    no DOIs (and says so); it never invents one."""

    model_config = ConfigDict(extra="forbid")
    endpoint: str = "https://api.test.datacite.org"  # production: https://api.datacite.org
    repository_id: str = ""  # e.g. "EXAMPLE.HOSPITAL"
    password: SecretStr = SecretStr("")
    prefix: str = Field(default="", pattern=r"^(10\.\d{4,9})?$")  # e.g. 10.12345
    timeout_seconds: float = Field(default=30.0, gt=0, le=300)

    @property
    def configured(self) -> bool:
        return bool(self.repository_id and self.prefix and self.password.get_secret_value())


class RetentionSettings(BaseModel):
    """``[retention]`` (see docs/retention.md): keep data at least ``years[class]`` after its last use."""

    model_config = ConfigDict(extra="forbid")
    # dataset class → years kept after the last use (clinical trials: the EU CTR's 25 years)
    years: dict[str, int] = {"research": 10, "validation": 10, "clinical-trial": 25}
    default_class: str = "research"
    notice_months: list[int] = [12, 6, 1]  # the owner and PI are told this many months ahead, once each
    queue_months: int = Field(12, ge=0, le=120)  # the operator's queue shows versions due within this

    @model_validator(mode="after")
    def _classes(self) -> RetentionSettings:
        if self.default_class not in self.years:
            raise ValueError(f"[retention] default_class {self.default_class!r} is not one of years' classes")
        if any(y < 1 or y > 100 for y in self.years.values()) or any(m < 1 or m > 120 for m in self.notice_months):
            raise ValueError("[retention] years are 1-100 and notice_months 1-120")
        return self


class FederationSettings(BaseModel):
    """``[federation]`` (see docs/federation.md): the Beacon's identity, the hub signing key, peer timeouts."""

    model_config = ConfigDict(extra="forbid")
    beacon_id: str = Field(default="", max_length=200)  # empty → "strongroom." + the base URL's host
    organization: str = Field(default="", max_length=200)  # empty → the site name
    environment: Literal["prod", "test", "dev", "staging"] = "prod"
    key_file: Path | None = None  # the hub's Ed25519 signing key; default <var_dir>/keys/federation-signing.pem
    peer_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    max_skew_seconds: int = Field(default=300, ge=10, le=3600)  # how old a peer's signature may be
    max_remote_entries: int = Field(default=5000, ge=1, le=100_000)  # per peer and harvest
    sync_lease_seconds: int = Field(default=60, ge=2, le=3600)  # a push's worker lease (renewed while it runs)
    # S3 to S3: as origin, offer a peer short-lived presigned GET URLs of the encrypted bodies (S3 storage only);
    # as peer, fetch a body from such a URL (on one of ``fetch_hosts``, host:port) instead of receiving it
    presign_bodies: bool = False
    presign_seconds: int = Field(default=900, ge=60, le=86_400)
    fetch_from_origin_storage: bool = False
    fetch_hosts: list[str] = Field(default_factory=list, max_length=20)


class OpsSettings(BaseModel):
    """``[ops]`` (see docs/operations.md, "Metrics"): the web app's operations endpoints."""

    model_config = ConfigDict(extra="forbid")
    # The bearer token Prometheus sends for the web app's /metrics (Authorization: Bearer …; at least 32
    # characters). Empty (the default): /metrics answers 404 to everyone.
    metrics_token: SecretStr = SecretStr("")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="STRONGROOM_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    var_dir: Path = Path("var")
    database_url: str = ""  # empty → sqlite:///<var_dir>/strongroom.db
    base_url: str = "http://127.0.0.1:8000"
    host: str = "127.0.0.1"
    port: int = 8000
    # The reverse proxies (addresses or networks) in front of the web server: from a request that comes from one
    # of them, X-Forwarded-For names the client (its right-most address that is not one of these). Empty: the
    # socket's peer is the client, and X-Forwarded-For is never read (docs/operations.md, "Behind a proxy").
    trusted_proxies: list[str] = []
    site_name: str = "Strongroom"
    log_level: str = "INFO"
    log_json: bool = True
    # Signs nothing user-visible; used to key audit hashes and session ids. Generated into var/ if unset.
    secret_key: SecretStr = SecretStr("")
    oidc: OidcSettings = Field(default_factory=OidcSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    archive: ArchiveSettings = Field(default_factory=ArchiveSettings)
    access: AccessSettings = Field(default_factory=AccessSettings)
    notify: NotifySettings = Field(default_factory=NotifySettings)
    imaging: ImagingSettings = Field(default_factory=ImagingSettings)
    dicomweb: DicomwebSettings = Field(default_factory=DicomwebSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    airlock: AirlockSettings = Field(default_factory=AirlockSettings)
    doi: DoiSettings = Field(default_factory=DoiSettings)
    compute: ComputeSettings = Field(default_factory=ComputeSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    workspaces: WorkspaceSettings = Field(default_factory=WorkspaceSettings)
    federation: FederationSettings = Field(default_factory=FederationSettings)
    ops: OpsSettings = Field(default_factory=OpsSettings)

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError:
                raise ValueError(f"trusted_proxies: {entry!r} is not an IP address or network") from None
        return [entry.strip() for entry in value]

    @model_validator(mode="after")
    def _workspaces_origin_elsewhere(self) -> Settings:
        self.workspaces.browser_origin(self.base_url)  # an origin on the hub's own host is refused at load
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = Path(os.environ.get("STRONGROOM_CONFIG", "strongroom.toml"))
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_path.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)

    # -- derived values -------------------------------------------------------------------------
    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.var_dir / 'strongroom.db'}"

    @property
    def cookie_secure(self) -> bool:
        if self.security.cookie_secure is not None:
            return self.security.cookie_secure
        return not self.base_url.startswith(("http://127.0.0.1", "http://localhost"))

    @property
    def secret_key_path(self) -> Path:
        """Where the hub secret is kept when it is not configured."""
        return self.var_dir / "secret.key"

    def effective_secret_key(self) -> bytes:
        """The hub secret: configured, or generated once into ``var/secret.key`` (mode 0600)."""
        if self.secret_key.get_secret_value():
            return self.secret_key.get_secret_value().encode()
        return read_or_create(self.secret_key_path, lambda: os.urandom(32).hex()).strip().encode()

    def masked(self) -> dict[str, Any]:
        """Effective settings as plain data, secrets shown as ``**********`` (or empty)."""
        data = self.model_dump(mode="json")
        data["database_url"] = _mask_url_password(self.effective_database_url)
        # An empty secret_key is not "no secret": say where the hub's secret really comes from.
        data["secret_key_source"] = ("configured (environment or TOML)" if self.secret_key.get_secret_value()
                                     else f"file {self.secret_key_path} (generated once, mode 0600)")
        return data


def _mask_url_password(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # never echo an unparseable URL that may hold a password
        return "**********"


@lru_cache
def get_settings() -> Settings:
    return Settings()
