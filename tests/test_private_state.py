"""The hub's state on disk is the hub's alone, whatever the umask: every folder of it the hub makes is 0700 (with
every missing folder above it), its SQLite database (and its -wal and -shm) 0600 from the moment it exists, so a
local workspace's uid — or any other user of the machine — reads none of it (docs/workspaces.md: they read what
"others" may). At start an older hub's 0755 ``var_dir`` and 0644 database are tightened, saying so in a warning (one
another uid owns is only warned of; a folder of the machine such as /var is never touched), and a configuration
file every user may read is warned of (not refused).
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from strongroom.config import Settings
from strongroom.hub import Hub

SECRET = "test-secret-" + "x" * 32


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """The umask a hub usually runs under (systemd's and most shells' default): 022, folders 0755, files 0644."""
    before = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(before)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _open_to_others(top: Path) -> list[str]:
    """Every folder under ``top`` (itself included) that is not 0700, every file the group or others may use
    (but a public key: ``*.pub``)."""
    found = [f"{top} {_mode(top):04o}"] if _mode(top) != 0o700 else []
    for folder, folders, files in os.walk(top):
        for name in folders:
            if _mode(Path(folder, name)) != 0o700:
                found.append(f"{Path(folder, name).relative_to(top)} {_mode(Path(folder, name)):04o}")
        for name in files:
            if _mode(Path(folder, name)) & 0o077 and not name.endswith(".pub"):
                found.append(f"{Path(folder, name).relative_to(top)} {_mode(Path(folder, name)):04o}")
    return found


def test_a_fresh_hub_keeps_its_state_to_itself(tmp_path: Path, usual_umask: None) -> None:
    """A hub started where nothing exists yet (``strongroom init``: the migrations, then the hub), under umask 022,
    with everything in ``var_dir``: the SQLite database, the generated hub secret, the archive's keys and storage
    (objects, multipart uploads), the DICOM spool, the SFTP host key, the visa, key-store, federation and audit
    anchor keys, the audit checkpoints, a retired secret's keys, the demo credentials. Every folder, from the first
    one the hub made, is 0700; no file but a public key is open to the group or others; the database is 0600."""
    from strongroom.access import visas
    from strongroom.archive.backend import storage_for
    from strongroom.archive.keys import ensure_key
    from strongroom.audit import checkpoints
    from strongroom.demo import _credentials
    from strongroom.dicomweb.store import spool_root
    from strongroom.federation.service import hub_key
    from strongroom.hubsecret import retire
    from strongroom.imaging import keystore
    from strongroom.migrate import upgrade
    from strongroom.sftp.hostkeys import host_key

    site = tmp_path / "site"  # missing, like the folder above it: the hub makes both
    settings = Settings(var_dir=site / "var", database_url="", jobs={"embedded": False})
    upgrade(settings.effective_database_url)
    hub = Hub.from_settings(settings)
    ensure_key(hub)
    storage = storage_for(hub)
    storage.put_bytes("projects/p/files/f", b"an encrypted body")
    storage.begin_multipart("projects/p/files/g")
    spool_root(hub)
    host_key(hub)
    visas.signing_key(settings)
    keystore.keystore_key(settings)
    hub_key(settings)
    checkpoints.write_checkpoint(hub)
    retire(settings, hub.secret)
    _credentials(hub)
    var = settings.var_dir
    assert {"strongroom.db", "secret.key", "keys", "objects", "dicom-spool", "sftp", "audit-checkpoints.jsonl",
            "demo-credentials.json"} <= set(os.listdir(var)), os.listdir(var)
    assert _open_to_others(site) == []
    assert _mode(var / "strongroom.db") == 0o600
    for companion in ("strongroom.db-wal", "strongroom.db-shm"):  # SQLite gives them the database's mode
        if (var / companion).exists():
            assert _mode(var / companion) == 0o600, companion


@pytest.mark.parametrize("owner", ["the hub's", "another uid's"])
def test_an_older_hubs_open_state_is_tightened_at_start(tmp_path: Path, sqlite_template: str, owner: str,
                                                        usual_umask: None) -> None:
    """An older hub (or an operator) left ``var_dir`` 0755 and its SQLite database 0644: the next start makes
    them 0700 and 0600 and says so (``state.tightened``, naming each); one another uid owns is left as it is, with
    a warning that it is open to others."""
    var = tmp_path / "var"
    var.mkdir(mode=0o755)
    database = var / "strongroom.db"
    shutil.copy(sqlite_template, database)
    database.chmod(0o644)
    if owner == "another uid's":
        if os.geteuid() != 0:
            pytest.skip("giving a folder to another uid needs root")
        for path in (var, database):
            os.chown(path, 54321, 54321)
    settings = Settings(var_dir=var, database_url=f"sqlite:///{database}", secret_key=SECRET,
                        jobs={"embedded": False})
    with capture_logs() as logs:
        hub = Hub.from_settings(settings)
        with hub.sessions() as session:  # the database opens
            session.connection()
    warned = {(entry["event"], entry["path"]) for entry in logs if entry["log_level"] == "warning"
              and entry["event"].startswith("state.")}
    if owner == "the hub's":
        assert (_mode(var), _mode(database)) == (0o700, 0o600)
        assert warned == {("state.tightened", str(var)), ("state.tightened", str(database))}, logs
        again = Settings(var_dir=var, database_url=f"sqlite:///{database}", secret_key=SECRET,
                         jobs={"embedded": False})
        with capture_logs() as logs:
            Hub.from_settings(again)
        assert [entry for entry in logs if entry["event"].startswith("state.")] == []  # once tight, no warning
    else:
        assert (_mode(var), _mode(database)) == (0o755, 0o644)
        assert warned == {("state.open_to_others", str(var)), ("state.open_to_others", str(database))}, logs


@pytest.mark.parametrize("var_dir", ["/var", "var (the default) in /"])
def test_a_folder_of_the_machine_is_never_tightened(var_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub started in / with the default ``var_dir`` ("var") would close /var to every other user of the machine
    (PostgreSQL's socket folder, every service's state): a folder of the machine is left as it is, and a warning
    says to give the hub a folder of its own."""
    from strongroom import paths

    monkeypatch.chdir("/")
    before = _mode(Path("/var"))
    with capture_logs() as logs:
        paths.secure_var_dir(Path("/var" if var_dir == "/var" else "var"))
    assert _mode(Path("/var")) == before
    assert [(entry["event"], entry["path"]) for entry in logs] == [("state.var_dir_is_a_system_folder", "/var")]


@pytest.mark.parametrize(("mode", "warned"), [(0o644, True), (0o604, True), (0o640, False), (0o600, False)])
def test_a_configuration_file_every_user_may_read_is_warned_of(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                mode: int, warned: bool) -> None:
    """The configuration file holds the hub's secrets (database password, storage keys, the hub secret): when
    every user of the machine may read it, the start logs a warning naming it and the fix (``chmod 600``); the hub
    still starts (development machines, tests)."""
    config = tmp_path / "strongroom.toml"
    config.write_text('site_name = "Hub North"\n')
    config.chmod(mode)
    monkeypatch.setenv("STRONGROOM_CONFIG", str(config))
    settings = Settings(var_dir=tmp_path / "var", database_url=f"sqlite:///{tmp_path / 'hub.db'}", secret_key=SECRET,
                        jobs={"embedded": False})
    assert settings.site_name == "Hub North"  # the file the hub reads
    with capture_logs() as logs:
        hub = Hub.from_settings(settings)
    assert hub.settings.site_name == "Hub North"
    found = [entry for entry in logs if entry["event"] == "config.readable_by_others"]
    if warned:
        assert len(found) == 1 and found[0]["path"] == str(config) and found[0]["log_level"] == "warning", logs
        assert f"chmod 600 {config}" in found[0]["advice"], found
    else:
        assert found == [], logs


def test_the_state_folders_a_workspace_is_kept_out_of(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a local workspace's mount namespace hides (``Spec.hub_state``): ``var_dir`` (absolute, from the hub's
    working folder) and, where configured elsewhere, the DICOM spool, the local archive storage and the archive's
    keys; S3 storage has no folder; a folder of the machine is never hidden."""
    from strongroom import paths

    monkeypatch.chdir(tmp_path)
    assert paths.state_folders(Settings()) == [tmp_path / "var"]
    elsewhere = Settings(var_dir=tmp_path / "var", imaging={"spool_dir": str(tmp_path / "spool")},
                         archive={"keys_dir": str(tmp_path / "keys"),
                                  "storage": {"kind": "local", "root": str(tmp_path / "objects")}})
    assert paths.state_folders(elsewhere) == [tmp_path / name for name in ("var", "spool", "keys", "objects")]
    s3 = Settings(var_dir=tmp_path / "var", imaging={"spool_dir": "/var/tmp"},
                  archive={"storage": {"kind": "s3", "root": str(tmp_path / "objects")}})
    assert paths.state_folders(s3) == [tmp_path / "var"]
