"""Secrets a hub must not run on, and the commands that replace them.

A hub secret that is short or still a deployment example's "change-me" lets whoever guesses it forge audit events,
CSRF tokens and recovery-code digests; an archive key passphrase like that opens the archive's private key files in
any copy of the keys directory (backups are the norm). Every process that opens the hub refuses them in one line;
only the rotation that replaces each opens such a hub.
"""

from __future__ import annotations

import io
import json

import pytest
from pydantic import SecretStr
from sqlalchemy import select

from strongroom.app import create_app
from strongroom.archive import c4gh
from strongroom.archive import keys as archive_keys
from strongroom.audit import service as audit
from strongroom.audit.models import AuditEvent
from strongroom.audit.service import Actor
from strongroom.config import Settings
from strongroom.hub import Hub
from strongroom.hubsecret import WeakSecret
from strongroom.migrate import upgrade
from test_cli_and_ops import run_cli

NEW_SECRET = "rotated-" + "n" * 40
GOOD_SECRET = "weak-secrets-test-" + "g" * 32


@pytest.mark.parametrize("weak", ["change-me", "change-me-64-random-hex-characters", "s3cret-but-short"])
def test_a_weak_hub_secret_is_refused_by_every_entry_point_but_its_rotation(weak, tmp_path):
    """Anyone who guesses the hub secret forges audit events, CSRF tokens and recovery-code digests: a hub whose
    secret is a deployment example's placeholder (the env example's, the Helm chart's — long enough to pass a
    length check) or shorter than 32 characters does not start. Every command that opens the hub says so in one
    line (exit 2); only `admin rotate-secret` opens it, to replace the secret, and the hub then starts."""
    settings = Settings(var_dir=tmp_path / "var", secret_key=weak, jobs={"embedded": False})
    upgrade(settings.effective_database_url)
    with pytest.raises(WeakSecret, match="rotate-secret"):
        Hub.from_settings(settings)
    with pytest.raises(WeakSecret):
        create_app(settings)  # the web process (`strongroom serve` builds it before listening)
    for command in (["serve", "--port", "1"], ["worker"], ["dicom", "serve"], ["audit", "verify"],
                    ["admin", "create-user", "x@example.org", "--name", "X"]):
        refused = run_cli(settings, *command)
        assert refused.returncode == 2, (command, refused.stdout, refused.stderr)
        assert "configuration error: secret_key: the hub secret" in refused.stderr, command
        assert "Traceback" not in refused.stderr, command
    assert run_cli(settings, "config", "show").returncode == 0  # what does not open the hub still works
    new_secret = tmp_path / "new.secret"
    new_secret.write_text(NEW_SECRET)
    rotated = run_cli(settings, "admin", "rotate-secret", "--new-secret-file", str(new_secret))
    assert rotated.returncode == 0, rotated.stderr
    hub = Hub.from_settings(settings.model_copy(update={"secret_key": SecretStr(NEW_SECRET)}))
    with hub.sessions() as s:
        assert audit.verify(s).ok


S3 = {"kind": "s3", "endpoint_url": "http://127.0.0.1:1", "bucket": "strongroom", "access_key": "strongroom"}
PARTNER_S3 = {"s3": {"partner": {"bucket": "partner", "secret_key": "change-me"}}}
PARTNER_SFTP = {"sftp": {"partner": {"host": "sftp.partner.example", "username": "hub",
                                     "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPartnerHostKey",
                                     "private_key_file": "/etc/strongroom/partner.key", "passphrase": "<passphrase>"}}}
OIDC = {"issuer": "https://login.example/", "client_id": "c"}
DOI = {"repository_id": "EXAMPLE.HUB", "prefix": "10.12345"}
METRICS = "change-me-to-a-long-random-token-please"
# (setting, keyword arguments of Settings, the same as environment variables): each other secret a deployment
# example ships as "change-me", or a well-known default / unfilled template marker in its place
OTHER_SECRETS = [
    ("database_url", {"database_url": "postgresql://strongroom:change-me@127.0.0.1:1/strongroom"}, {}),
    ("database_url", {"database_url": "postgresql+psycopg://strongroom:postgres@db.internal/strongroom"}, {}),
    ("archive.storage.secret_key", {"archive": {"storage": {**S3, "secret_key": "change-me"}}},
     {"STRONGROOM_ARCHIVE__STORAGE__KIND": "s3", "STRONGROOM_ARCHIVE__STORAGE__ENDPOINT_URL": "http://127.0.0.1:1",
      "STRONGROOM_ARCHIVE__STORAGE__ACCESS_KEY": "strongroom", "STRONGROOM_ARCHIVE__STORAGE__SECRET_KEY": "change-me"}),
    ("archive.storage.access_key", {"archive": {"storage": {**S3, "access_key": "changeme", "secret_key": "s" * 40}}},
     {"STRONGROOM_ARCHIVE__STORAGE__KIND": "s3", "STRONGROOM_ARCHIVE__STORAGE__ACCESS_KEY": "changeme",
      "STRONGROOM_ARCHIVE__STORAGE__SECRET_KEY": "s" * 40}),
    ("notify.password", {"notify": {"host": "smtp.example", "username": "u", "password": "change-me"}},
     {"STRONGROOM_NOTIFY__HOST": "smtp.example", "STRONGROOM_NOTIFY__PASSWORD": "change-me"}),
    ("notify.password", {"notify": {"host": "smtp.example", "username": "u", "password": "Password"}},
     {"STRONGROOM_NOTIFY__HOST": "smtp.example", "STRONGROOM_NOTIFY__PASSWORD": "Password"}),
    ("oidc.client_secret", {"oidc": {**OIDC, "client_secret": "change-me"}},
     {"STRONGROOM_OIDC__ISSUER": OIDC["issuer"], "STRONGROOM_OIDC__CLIENT_SECRET": "change-me"}),
    ("doi.password", {"doi": {**DOI, "password": "${DATACITE_PASSWORD}"}},
     {"STRONGROOM_DOI__PASSWORD": "${DATACITE_PASSWORD}"}),
    ("airlock.s3.partner.secret_key", {"airlock": PARTNER_S3}, {"STRONGROOM_AIRLOCK": json.dumps(PARTNER_S3)}),
    ("airlock.sftp.partner.passphrase", {"airlock": PARTNER_SFTP}, {"STRONGROOM_AIRLOCK": json.dumps(PARTNER_SFTP)}),
    ("ops.metrics_token", {"ops": {"metrics_token": METRICS}}, {"STRONGROOM_OPS__METRICS_TOKEN": METRICS}),
]


@pytest.mark.parametrize(("setting", "kwargs", "env"), OTHER_SECRETS,
                         ids=[f"{s}-{i}" for i, (s, _, _) in enumerate(OTHER_SECRETS)])
def test_a_placeholder_in_any_other_secret_setting_is_refused_at_start(setting, kwargs, env, tmp_path):
    """The Helm chart's and the env example's defaults, verbatim, must not make a running hub: the database
    password, the S3 keys, the SMTP password, the OpenID client secret, DataCite's password, the airlock's partner
    credentials and the metrics token are each refused as the hub secret is — one line naming the setting, exit 2,
    from every command that opens the hub — while `config show` (which does not) still works."""
    settings = Settings(var_dir=tmp_path / "var", secret_key=GOOD_SECRET, jobs={"embedded": False}, **kwargs)
    with pytest.raises(WeakSecret) as refused:
        Hub.from_settings(settings)
    assert refused.value.setting == setting
    assert "placeholder" in str(refused.value) or "too short" in str(refused.value)
    with pytest.raises(WeakSecret):
        create_app(settings)
    for command in (["worker"], ["admin", "create-user", "x@example.org", "--name", "X"]):
        r = run_cli(settings, *command, extra_env=env)
        assert r.returncode == 2, (command, r.stdout, r.stderr)
        assert f"configuration error: {setting}: " in " ".join(r.stderr.split()), (command, r.stderr)
        assert "Traceback" not in r.stderr, command
    shown = run_cli(settings, "config", "show", "--json", extra_env=env)
    assert shown.returncode == 0, shown.stderr
    assert "change-me" not in shown.stdout  # masked, as every secret


def test_real_secrets_of_any_length_and_empty_ones_still_start(tmp_path):
    """Only placeholders are refused for these: an empty value means "not configured" (PostgreSQL with trust or
    peer authentication, boto3's own credential chain), and a short one is what the service it opens was given."""
    settings = Settings(
        var_dir=tmp_path / "var", secret_key=GOOD_SECRET, jobs={"embedded": False},
        archive={"storage": {**S3, "secret_key": "strongroom-test-admin-secret"}},
        notify={"host": "smtp.example", "username": "u", "password": "s3cret"},
        oidc={"issuer": "https://login.example/", "client_id": "c", "client_secret": "very-secret"},
        doi={"repository_id": "EXAMPLE.HUB", "prefix": "10.12345", "password": "datacite-test-password"},
        airlock={"s3": {"partner": {"bucket": "partner", "access_key": "", "secret_key": ""}}})
    assert Hub.from_settings(settings).settings is settings
    for url in ("postgresql://postgres@127.0.0.1:5432/strongroom",  # the test PostgreSQL: trust, no password
                "postgresql://strongroom:@db/strongroom", "postgresql://strongroom:Xk9%40pw@db/strongroom"):
        Hub.from_settings(settings.model_copy(update={"database_url": url}))


OLD_PASSPHRASE, NEW_PASSPHRASE = "change-me", "a new passphrase, long enough"


def test_a_weak_archive_key_passphrase_is_refused_and_rotated_away_resumably(tmp_path):
    """A hub deployed with the example's passphrase (key files already written under it) stops with a one-line
    error naming `archive rotate-passphrase`. That command rewrites every key file, active and retired, under the
    new passphrase — a run that stopped halfway completes when run again — and the hub, configured with the new
    one, opens its keys and decrypts what was encrypted before."""
    settings = Settings(var_dir=tmp_path / "var", secret_key=GOOD_SECRET, jobs={"embedded": False},
                        archive={"key_passphrase": OLD_PASSPHRASE})
    env = {"STRONGROOM_ARCHIVE__KEY_PASSPHRASE": OLD_PASSPHRASE}
    upgrade(settings.effective_database_url)
    before = Hub.from_settings(settings, allow_weak_secrets=True)  # a deployment from before this check
    archive_keys.ensure_key(before)
    with before.sessions() as s:
        first_public = archive_keys.hub_keys(before, s).current[1].public
    sealed_before = b"".join(c4gh.encrypt_stream([b"an image from before"], first_public))
    list(archive_keys.rotate(before, Actor.system("test")))  # a retired key file too
    with before.sessions() as s:
        files = archive_keys.key_files(before, s)
        current_public = archive_keys.hub_keys(before, s).current[1].public
    assert len(files) == 2
    sealed_after = b"".join(c4gh.encrypt_stream([b"an image from after"], current_public))

    with pytest.raises(WeakSecret, match="rotate-passphrase"):
        Hub.from_settings(settings)
    refused = run_cli(settings, "worker", extra_env=env)
    assert refused.returncode == 2, refused.stderr
    assert "configuration error: archive.key_passphrase: the archive key passphrase is still" in refused.stderr
    assert "Traceback" not in refused.stderr
    for bad, why in (("short", "at least 16"), ("change-me-but-longer-now", "placeholder")):
        (tmp_path / "bad").write_text(bad)
        r = run_cli(settings, "archive", "rotate-passphrase", "--new-passphrase-file", str(tmp_path / "bad"),
                    extra_env=env)
        assert r.returncode == 2 and why in r.stderr, r.stderr

    # a run that stopped after its first file: that one is already under the new passphrase
    c4gh.write_private_key(files[0], c4gh.load_private_key(files[0], OLD_PASSPHRASE), NEW_PASSPHRASE)
    (tmp_path / "new").write_text(NEW_PASSPHRASE + "\n")
    done = run_cli(settings, "archive", "rotate-passphrase", "--new-passphrase-file", str(tmp_path / "new"),
                   extra_env=env)
    assert done.returncode == 0, done.stderr
    assert "1 key file(s)" in done.stdout and "STRONGROOM_ARCHIVE__KEY_PASSPHRASE" in done.stdout
    for path in files:
        c4gh.load_private_key(path, NEW_PASSPHRASE)
        with pytest.raises(c4gh.KeyFileError):
            c4gh.load_private_key(path, OLD_PASSPHRASE)
        assert oct(path.stat().st_mode & 0o777) == "0o600"
    again = run_cli(settings, "archive", "rotate-passphrase", "--new-passphrase-file", str(tmp_path / "new"),
                    extra_env=env)
    assert again.returncode == 0 and "0 key file(s)" in again.stdout, again.stderr

    hub = Hub.from_settings(settings.model_copy(update={"archive": settings.archive.model_copy(
        update={"key_passphrase": SecretStr(NEW_PASSPHRASE)})}))
    archive_keys._cache.clear()
    with hub.sessions() as s:
        keys = archive_keys.hub_keys(hub, s)
        assert keys.current[1].public == current_public
        rows = s.scalars(select(AuditEvent).where(AuditEvent.action == "archive.key_passphrase.rotated")).all()
        assert [r.details["key_files"] for r in rows] == [1, 0]
        assert audit.verify(s).ok
    retired = c4gh.load_private_key(files[0], NEW_PASSPHRASE)  # the first key, retired by the rotation
    secrets = [*keys.secrets, retired.secret]
    assert b"".join(c4gh.decrypt_stream(io.BytesIO(sealed_before), secrets)) == b"an image from before"
    assert b"".join(c4gh.decrypt_stream(io.BytesIO(sealed_after), keys.secrets)) == b"an image from after"
