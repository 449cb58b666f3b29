"""The `strongroom` command and the operations endpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from conftest import bearer, token_for
from support.live import free_port


def run_cli(settings, *args: str, input: str | None = None, extra_env: dict | None = None):
    env = {**os.environ, "STRONGROOM_DATABASE_URL": settings.effective_database_url,
           "STRONGROOM_SECRET_KEY": settings.secret_key.get_secret_value(),
           "STRONGROOM_VAR_DIR": str(settings.var_dir), "COLUMNS": "200", **(extra_env or {})}
    return subprocess.run([sys.executable, "-m", "strongroom.cli", *args], env=env, capture_output=True,
                          text=True, timeout=120, input=input)


def test_config_show_masks_secrets(settings):
    result = run_cli(settings, "config", "show", "--json",
                     extra_env={"STRONGROOM_OIDC__CLIENT_SECRET": "very-secret-value",
                                "STRONGROOM_OIDC__ISSUER": "https://login.example.org/oidc/"})
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["oidc"]["issuer"] == "https://login.example.org/oidc/"
    assert "very-secret-value" not in result.stdout and "test-secret" not in result.stdout
    assert data["oidc"]["client_secret"] == "**********" and data["secret_key"] == "**********"
    assert data["secret_key_source"].startswith("configured")
    toml = run_cli(settings, "config", "show")
    assert toml.returncode == 0 and "[security]" in toml.stdout
    from_file = run_cli(settings, "config", "show", extra_env={"STRONGROOM_SECRET_KEY": ""})
    assert f"file {settings.var_dir / 'secret.key'}" in from_file.stdout, from_file.stdout


def test_a_setting_that_does_not_validate_is_a_clear_error_not_a_traceback(settings):
    """Every command reads the settings first: a value they refuse is named in one line, exit 2."""
    bad = run_cli(settings, "config", "show", extra_env={"STRONGROOM_RETENTION__DEFAULT_CLASS": "forever"})
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
    assert "configuration error" in bad.stderr and "default_class 'forever'" in " ".join(bad.stderr.split())


def test_config_reads_a_toml_file(settings, tmp_path):
    path = tmp_path / "strongroom.toml"
    path.write_text('site_name = "Hub North"\n[security]\nfresh_mfa_minutes = 5\n')
    result = run_cli(settings, "config", "show", "--json", extra_env={"STRONGROOM_CONFIG": str(path)})
    data = json.loads(result.stdout)
    assert data["site_name"] == "Hub North" and data["security"]["fresh_mfa_minutes"] == 5
    bad = tmp_path / "bad.toml"
    bad.write_text("[security]\nfresh_mfa_minutes = 'soon'\n")
    result = run_cli(settings, "config", "show", extra_env={"STRONGROOM_CONFIG": str(bad)})
    assert result.returncode != 0 and "fresh_mfa_minutes" in result.stderr


def test_admin_commands_create_users_and_projects(settings, hub):
    r = run_cli(settings, "admin", "create-user", "pia", "--name", "Pia PI", "--email", "pia@uni.example",
                extra_env={"STRONGROOM_NEW_PASSWORD": "a long enough password"})
    assert r.returncode == 0, r.stderr
    short = run_cli(settings, "admin", "create-user", "shorty", "--name", "S",
                    extra_env={"STRONGROOM_NEW_PASSWORD": "short"})
    assert short.returncode == 2 and "at least 12" in short.stderr
    r = run_cli(settings, "admin", "create-project", "lung-ct", "--name", "Lung CT", "--pi", "pia",
                "--ethics", "Dnr 2026-0001", "--class", "fellowship")
    assert r.returncode == 0, r.stderr
    dup = run_cli(settings, "admin", "create-project", "lung-ct", "--name", "Again", "--pi", "pia", "--ethics", "x")
    assert dup.returncode == 2 and "exists" in dup.stderr
    users = run_cli(settings, "admin", "users")
    assert "Pia PI" in users.stdout
    narrow = run_cli(settings, "admin", "users", extra_env={"COLUMNS": "60"})  # folded, never cut with '…'
    assert narrow.returncode == 0 and "…" not in narrow.stdout, narrow.stdout
    listed = json.loads(run_cli(settings, "admin", "users", "--json").stdout)
    assert [u["email"] for u in listed if u["name"] == "Pia PI"] == ["pia@uni.example"]
    r = run_cli(settings, "admin", "reset-mfa", "pia")
    assert r.returncode == 0
    events = run_cli(settings, "audit", "list", "--project", "lung-ct")
    assert "project.created" in events.stdout
    assert run_cli(settings, "audit", "verify").returncode == 0


def test_remote_cli_uses_an_api_token(settings, hub, people, tmp_path):
    """`strongroom login/whoami/projects` against a live server with a real token."""
    import threading
    import time

    import uvicorn

    from strongroom.app import create_app

    alice = people("alice")
    token = token_for(hub, alice)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, run_jobs=False), host="127.0.0.1", port=port,
                                           log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        env = {"STRONGROOM_CLI_CONFIG": str(tmp_path / "cli.json")}
        r = run_cli(settings, "login", "--url", f"http://127.0.0.1:{port}", "--token", token, extra_env=env)
        assert r.returncode == 0 and "Alice" in r.stdout, r.stderr
        assert oct((tmp_path / "cli.json").stat().st_mode & 0o777) == "0o600"
        assert "Alice" in run_cli(settings, "whoami", extra_env=env).stdout
        empty = run_cli(settings, "projects", "list", extra_env=env)  # alice is in no project: say so
        assert empty.returncode == 0 and "not a member of any project" in empty.stdout, empty.stdout
        missing = run_cli(settings, "projects", "show", "nope", extra_env=env)
        assert missing.returncode == 1 and "404" in missing.stderr
        bad = run_cli(settings, "whoami", extra_env={"STRONGROOM_CLI_CONFIG": str(tmp_path / "none.json"),
                                                     "STRONGROOM_URL": f"http://127.0.0.1:{port}",
                                                     "STRONGROOM_TOKEN": "sr_bogus"})
        assert bad.returncode == 1 and "401" in bad.stderr
    finally:
        server.should_exit = True
        thread.join(10)


def test_login_narrows_an_existing_token_file_to_0600(tmp_path, monkeypatch):
    """os.open's mode applies only to a file it creates: a cli.json left world-readable (an editor, an older
    version, a copied dotfile) must not keep the token readable to every local user."""
    from strongroom import hubclient

    path = tmp_path / "cli.json"
    path.write_text("{}")
    path.chmod(0o644)
    monkeypatch.setenv("STRONGROOM_CLI_CONFIG", str(path))
    hubclient.save_login("https://hub.example", "sr_ABCDEFGHIJKL_secret")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert json.loads(path.read_text())["token"] == "sr_ABCDEFGHIJKL_secret"
    fresh = tmp_path / "new-dir" / "cli.json"  # a folder it makes for the file is the user's alone
    monkeypatch.setenv("STRONGROOM_CLI_CONFIG", str(fresh))
    hubclient.save_login("https://hub.example", "sr_ABCDEFGHIJKL_secret")
    assert oct(fresh.stat().st_mode & 0o777) == "0o600"
    assert oct(fresh.parent.stat().st_mode & 0o777) == "0o700"


def test_help_is_helpful(settings):
    out = run_cli(settings, "--help").stdout
    for command in ("serve", "worker", "db", "admin", "audit", "config", "login", "projects"):
        assert command in out


def test_health_ready_metrics(client, settings):
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/readyz").json() == {"status": "ok", "database": "ok"}
    client.get("/api/v1/projects")
    assert client.get("/metrics").status_code == 404  # no [ops] metrics_token: nobody reads them
    settings.ops.metrics_token = SecretStr("metrics-" + "t" * 40)  # what Prometheus is given
    body = client.get("/metrics", headers=bearer("metrics-" + "t" * 40)).text
    names = {f.name for f in text_string_to_metric_families(body)}
    assert "strongroom_http_requests" in names
    assert 'route="/api/v1/projects"' in body and 'status="401"' in body


def test_readyz_reports_a_dead_database(tmp_path):
    from fastapi.testclient import TestClient

    from strongroom.app import create_app
    from strongroom.config import Settings

    dead = Settings(var_dir=tmp_path, database_url="postgresql://nobody@127.0.0.1:1/none", secret_key="k" * 40)
    with TestClient(create_app(dead, run_jobs=False)) as c:
        r = c.get("/readyz")
    assert r.status_code == 503 and r.json()["status"] == "unavailable"


def test_every_api_route_is_documented(client):
    spec = client.get("/openapi.json").json()
    assert spec["info"]["title"] == "Strongroom"
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            assert op.get("summary"), f"{method.upper()} {path} has no summary"
    assert not any(p.startswith(("/login", "/projects/", "/account")) for p in spec["paths"])


def test_logs_never_contain_secrets(app, hub, people, capfd):
    import logging

    from fastapi.testclient import TestClient

    from helpers import form_post
    from strongroom.logs import configure

    configure("INFO", json=True)
    logging.getLogger("strongroom").setLevel(logging.INFO)
    alice = people("alice")
    token = token_for(hub, alice)
    c = TestClient(app, base_url="http://127.0.0.1:8000")
    c.get("/api/v1/me", headers=bearer(token))
    form_post(c, "/login", {"username": "alice", "password": "correct horse battery staple"})
    out, err = capfd.readouterr()
    logged = out + err
    assert "http.request" in logged
    assert token.split("_", 2)[2] not in logged and "correct horse" not in logged


def test_download_decrypt_without_a_key_says_so_before_asking_for_a_passphrase(settings, tmp_path):
    missing = tmp_path / "nowhere.sec"
    r = run_cli(settings, "download", "SRD-NOTHING", "--decrypt", "--secret-key", str(missing), input="",
                extra_env={"STRONGROOM_CLI_CONFIG": str(tmp_path / "none.json"), "STRONGROOM_URL": "http://127.0.0.1:9",
                           "STRONGROOM_TOKEN": "sr_unused"})
    assert r.returncode == 1 and "no private key" in r.stderr and "keys generate" in r.stderr, r.stderr
    assert "passphrase" not in (r.stdout + r.stderr).lower()


def test_keys_generate_without_a_terminal_and_never_over_an_existing_key(settings, tmp_path):
    from strongroom.archive import c4gh

    env = {k: v for k, v in os.environ.items() if k != "STRONGROOM_KEY_PASSPHRASE"}
    base, secret = tmp_path / "keys" / "me", tmp_path / "phrase.txt"
    secret.write_text("a good long passphrase\n")
    r = run_cli(settings, "keys", "generate", "--out", str(base), "--passphrase-file", str(secret), input="",
                extra_env=env)
    assert r.returncode == 0, r.stderr
    assert c4gh.load_private_key(base.with_suffix(".sec"), "a good long passphrase").public
    before = base.with_suffix(".sec").read_bytes()
    again = run_cli(settings, "keys", "generate", "--out", str(base), "--passphrase-file", str(secret), input="",
                    extra_env=env)
    assert again.returncode == 1 and "exists" in again.stderr and base.with_suffix(".sec").read_bytes() == before
    no_tty = run_cli(settings, "keys", "generate", "--out", str(tmp_path / "other"), input="", extra_env=env)
    assert no_tty.returncode == 1 and "--passphrase-file" in no_tty.stderr, no_tty.stderr


def test_the_command_starts_without_the_ai_validation_and_web_libraries():
    """`strongroom --help`, and every command, imports only what the commands need to start: not the AI
    validation's scipy, scikit-learn and onnx (they cost seconds; a retention import of a constant once pulled
    them into every command), nor the web framework."""
    probe = ("import sys, strongroom.cli; print(' '.join(sorted(m for m in ('scipy', 'sklearn', 'onnx', "
             "'onnxruntime', 'pandas', 'fastapi', 'uvicorn', 'pynetdicom', 'boto3') if m in sys.modules)))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [], result.stdout
    helped = subprocess.run([sys.executable, "-m", "strongroom.cli", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert helped.returncode == 0 and "retention" in helped.stdout


def test_the_server_builds_its_app_without_the_ai_validation_libraries(settings):
    """`strongroom serve` builds the whole app (every capability's routes) without importing scipy, scikit-learn,
    onnx or onnxruntime: AI validation imports them where a figure is computed or a model read (they were two of
    the three seconds a server took to start)."""
    probe = ("import sys; from strongroom.app import create_app; from strongroom.config import get_settings; "
             "create_app(get_settings(), run_jobs=False); "
             "print(' '.join(sorted(m for m in ('scipy', 'sklearn', 'onnx', 'onnxruntime') if m in sys.modules)))")
    env = {**os.environ, "STRONGROOM_DATABASE_URL": settings.effective_database_url,
           "STRONGROOM_SECRET_KEY": settings.secret_key.get_secret_value(), "STRONGROOM_VAR_DIR": str(settings.var_dir),
           "STRONGROOM_LOG_JSON": "true"}
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1:] in ([], [""]), result.stdout
