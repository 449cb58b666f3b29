"""Login throttling and client addresses behind a reverse proxy (audit finding: behind the documented proxy every
user had the proxy's address, so 20 failed logins with made-up usernames locked everyone out).

- ``trusted_proxies`` names the proxies; only from them is X-Forwarded-For read, and then its right-most hop that
  is not a trusted proxy is the client, for the throttle and for the audit trail alike (``deps.client_ip``);
  ``strongroom serve`` gives uvicorn the same list, so every other reader of the peer address agrees.
- One address's failures do not hold an account that has not failed itself (a shared NAT), up to a much higher
  per-address ceiling (``security.login_attempts_per_address``) that still holds a password sprayer; IPv6 clients
  count per /64.
"""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
import yaml
from fastapi.testclient import TestClient
from pydantic import ValidationError

from conftest import PASSWORD
from helpers import form_post
from strongroom.app import create_app
from strongroom.audit import service as audit
from strongroom.config import Settings
from strongroom.deps import csrf_token_for
from support.live import free_port

BASE = "http://127.0.0.1:8000"
PROXY = "10.9.8.7"  # the reverse proxy's address as the web server sees it


def _proxied(settings: Settings, **security: object) -> Settings:
    return settings.model_copy(update={
        "trusted_proxies": [PROXY, "10.9.9.0/24"],
        "security": settings.security.model_copy(update=security)})


def _browser(app, peer: str = PROXY, forwarded_for: str | None = None) -> TestClient:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else None
    return TestClient(app, base_url=BASE, client=(peer, 40000), headers=headers)


def _bad_login(client: TestClient, username: str) -> int:
    return form_post(client, "/login", {"username": username, "password": "not the password at all"}).status_code


def _last_login_ip(hub, outcome: str = "denied") -> str | None:
    with hub.sessions() as s:
        events = [e for e in audit.query(s, action_prefix="login.password", limit=50) if e.outcome == outcome]
    return events[0].ip


def test_behind_the_proxy_one_clients_failures_do_not_lock_out_the_others(settings, people):
    app = create_app(_proxied(settings), run_jobs=False)  # the same database as conftest's hub
    hub = app.state.hub
    people("victim")
    attacker = _browser(app, forwarded_for="203.0.113.66")
    for i in range(25):  # more than the old per-address limit (20), all through the one proxy
        assert _bad_login(attacker, f"nobody{i}") == 401
    assert _last_login_ip(hub) == "203.0.113.66"  # the audit trail names the client, not the proxy
    r = form_post(_browser(app, forwarded_for="198.51.100.20"), "/login",
                  {"username": "victim", "password": PASSWORD})
    assert r.status_code == 303, r.text  # on to the second factor
    assert _last_login_ip(hub, "ok") == "198.51.100.20"


def test_x_forwarded_for_is_believed_only_from_a_trusted_proxy_and_only_its_last_untrusted_hop(settings):
    app = create_app(_proxied(settings), run_jobs=False)
    hub = app.state.hub
    cases = [
        # (peer, X-Forwarded-For, the client the hub records)
        ("192.0.2.10", "203.0.113.1", "192.0.2.10"),  # not from a proxy: the header is the client's own claim
        (PROXY, None, PROXY),  # the proxy itself, asking without a header
        (PROXY, "203.0.113.2", "203.0.113.2"),
        (PROXY, "1.1.1.1, 203.0.113.3", "203.0.113.3"),  # the client's own (spoofed) entry is left of the real one
        (PROXY, "1.1.1.1, 203.0.113.4, 10.9.9.5", "203.0.113.4"),  # two trusted proxies in a row
        (PROXY, "203.0.113.5:51234", "203.0.113.5"),  # a port on the hop
        (PROXY, "[2001:db8::5]:443", "2001:db8::5"),
        (PROXY, "1.1.1.1, not-an-address", PROXY),  # junk where the client should be: the proxy is what we know
        ("::ffff:10.9.8.7", "203.0.113.6", "203.0.113.6"),  # the proxy seen through a dual-stack socket
    ]
    for n, (peer, forwarded, expected) in enumerate(cases):
        assert _bad_login(_browser(app, peer, forwarded), f"someone{n}") == 401
        assert _last_login_ip(hub) == expected, (peer, forwarded)


def test_without_trusted_proxies_x_forwarded_for_is_ignored(app, hub):
    assert hub.settings.trusted_proxies == []  # the default
    _bad_login(_browser(app, "192.0.2.44", "203.0.113.9"), "someone")
    assert _last_login_ip(hub) == "192.0.2.44"


def test_a_shared_address_does_not_lock_out_an_account_that_has_not_failed(app, hub, people):
    """Many people behind one address (a hospital's NAT, or a proxy the hub was not told about): 25 failures for
    made-up accounts (the old per-address limit was 20) leave the others' logins open."""
    people("victim")
    nat = TestClient(app, base_url=BASE)
    for i in range(25):
        assert _bad_login(nat, f"nobody{i}") == 401
    r = form_post(TestClient(app, base_url=BASE), "/login", {"username": "victim", "password": PASSWORD})
    assert r.status_code == 303, r.text
    # the account that is being guessed is still held (5 per account and window, from any address)
    for _ in range(5):
        assert _bad_login(nat, "victim") == 401
    assert form_post(nat, "/login", {"username": "victim", "password": PASSWORD}).status_code == 429


def test_a_password_sprayer_is_held_at_the_address_ceiling(settings, people):
    """One address trying one password over many accounts is held once it reaches the per-address ceiling, for
    every account, new ones included; another address is not. IPv6 counts per /64."""
    app = create_app(_proxied(settings, login_attempts_per_address=12), run_jobs=False)
    people("victim")
    sprayer = _browser(app, forwarded_for="203.0.113.77")
    for i in range(12):
        assert _bad_login(sprayer, f"user{i}") == 401
    r = form_post(sprayer, "/login", {"username": "victim", "password": PASSWORD})
    assert r.status_code == 429 and r.headers["retry-after"]
    assert _bad_login(sprayer, "user-never-tried") == 429
    assert form_post(_browser(app, forwarded_for="198.51.100.7"), "/login",
                     {"username": "victim", "password": PASSWORD}).status_code == 303

    # IPv6: a new address per guess from the same /64 gains nothing
    for i in range(12):
        assert _bad_login(_browser(app, forwarded_for=f"2001:db8:1:2::{i + 1:x}"), f"v6user{i}") == 401
    assert _bad_login(_browser(app, forwarded_for="2001:db8:1:2:ffff::1"), "v6-new") == 429
    assert _bad_login(_browser(app, forwarded_for="2001:db8:1:3::1"), "v6-new") == 401  # another /64


def test_a_sprayer_holding_an_ipv6_site_prefix_is_held_at_its_ceiling(settings, people):
    """A /48 holds 65,536 /64s: a sprayer moving to a new /64 at each address ceiling is held once the /48 as a
    whole reaches four address ceilings; another /48 is not, nor an IPv4 address."""
    app = create_app(_proxied(settings, login_attempts_per_address=3), run_jobs=False)
    people("victim")
    for subnet in range(4):  # each /64 stays under its own ceiling (3)
        for i in range(3):
            assert _bad_login(_browser(app, forwarded_for=f"2001:db8:7:{subnet:x}::{i + 1:x}"),
                              f"spray{subnet}-{i}") == 401
    fresh_subnet = _browser(app, forwarded_for="2001:db8:7:ff::1")
    assert _bad_login(fresh_subnet, "spray-next") == 429
    assert form_post(fresh_subnet, "/login", {"username": "victim", "password": PASSWORD}).status_code == 429
    assert _bad_login(_browser(app, forwarded_for="2001:db8:8::1"), "spray-elsewhere") == 401  # another /48
    assert form_post(_browser(app, forwarded_for="2001:db8:8::2"), "/login",
                     {"username": "victim", "password": PASSWORD}).status_code == 303


def test_trusted_proxies_must_be_addresses_or_networks(tmp_path):
    for good in ([], ["127.0.0.1"], ["10.0.0.0/8", "2001:db8::/32", " 192.0.2.1 "]):
        assert Settings(var_dir=tmp_path, trusted_proxies=good).trusted_proxies == [g.strip() for g in good]
    for bad in (["proxy.example.org"], ["10.0.0.0/33"], ["*"]):
        with pytest.raises(ValidationError):
            Settings(var_dir=tmp_path, trusted_proxies=bad)


@pytest.mark.parametrize("trusted", [[], ["127.0.0.1"]])
def test_serve_gives_uvicorn_the_trusted_proxies(settings, monkeypatch, trusted):
    """`strongroom serve` runs uvicorn with proxy headers exactly when proxies are configured, trusting only
    them: served for real, the audit trail then names the forwarded client, or the peer without them."""
    import strongroom.cli as cli
    import strongroom.migrate

    configured = settings.model_copy(update={"trusted_proxies": trusted})
    captured: dict = {}
    monkeypatch.setattr(cli, "get_settings", lambda: configured)
    monkeypatch.setattr(strongroom.migrate, "upgrade", lambda url: None)
    monkeypatch.setattr(uvicorn, "run", lambda application, **kwargs: captured.update(app=application, **kwargs))
    cli.serve(host=None, port=None, jobs=False)
    assert captured["proxy_headers"] is bool(trusted)
    assert captured["forwarded_allow_ips"] == trusted

    port = free_port()
    options = {k: v for k, v in captured.items() if k not in ("app", "host", "port")}
    server = uvicorn.Server(uvicorn.Config(captured["app"], host="127.0.0.1", port=port, **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 15
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False,
                          headers={"X-Forwarded-For": "1.1.1.1, 203.0.113.50"}) as browser:
            browser.cookies.set("sr_csrf", "presession-cookie-for-this-test")
            token = csrf_token_for(captured["app"].state.hub.secret,
                                   presession_cookie="presession-cookie-for-this-test")
            r = browser.post("/login", data={"username": "someone", "password": "not the password",
                                             "csrf_token": token})
            assert r.status_code == 401, r.text
    finally:
        server.should_exit = True
        thread.join(15)
    assert _last_login_ip(captured["app"].state.hub) == ("203.0.113.50" if trusted else "127.0.0.1")


def test_the_deploy_examples_trust_their_proxy_and_nothing_wider(tmp_path):
    """compose trusts its own network's gateway (where the host's TLS proxy comes from); the chart trusts the
    ingress controller's pod network. Each value is one the hub's settings accept."""
    deploy = Path(__file__).resolve().parent.parent / "deploy"
    compose = yaml.safe_load((deploy / "compose.yaml").read_text())
    trusted = json.loads(compose["services"]["web"]["environment"]["STRONGROOM_TRUSTED_PROXIES"])
    (network,) = compose["networks"]["default"]["ipam"]["config"]
    assert trusted == [network["gateway"]]
    assert ipaddress.ip_address(network["gateway"]) in ipaddress.ip_network(network["subnet"])
    for values in ("values.yaml", "values-production.yaml"):
        config = yaml.safe_load((deploy / "helm" / "strongroom" / values).read_text())["config"]
        entries = json.loads(config["STRONGROOM_TRUSTED_PROXIES"])
        assert entries and all(ipaddress.ip_network(e).is_private for e in entries), values
        assert Settings(var_dir=tmp_path, trusted_proxies=entries).trusted_proxies == entries


def test_strangers_failures_never_lock_the_owner_out_from_where_they_log_in(settings, people):
    """A second audit: five wrong passwords from anywhere locked an account for everyone, and one a minute kept it
    locked. Now an address is held for an account after 5 of its own failures; the account as a whole only after
    20 from all addresses together, and even then not where its owner completed a login in the last 30 days."""
    app = create_app(_proxied(settings), run_jobs=False)
    victim = people("victim")
    home = _browser(app, forwarded_for="198.51.100.20")
    assert form_post(home, "/login", {"username": "victim", "password": PASSWORD}).status_code == 303
    assert form_post(home, "/login/mfa", {"code": victim.code()}).status_code == 303  # a completed login
    attacker = _browser(app, forwarded_for="203.0.113.66")
    for _ in range(5):
        assert _bad_login(attacker, "victim") == 401
    assert _bad_login(attacker, "victim") == 429  # that address is held for this account...
    assert form_post(_browser(app, forwarded_for="198.51.100.21"), "/login",
                     {"username": "victim", "password": PASSWORD}).status_code == 303  # ...no one else
    for i in range(15):  # spread over many addresses: 20 for the account in all
        assert _bad_login(_browser(app, forwarded_for=f"203.0.113.{100 + i}"), "victim") == 401
    assert _bad_login(_browser(app, forwarded_for="203.0.113.200"), "victim") == 429  # a new address: held
    assert form_post(_browser(app, forwarded_for="198.51.100.20"), "/login",
                     {"username": "victim", "password": PASSWORD}).status_code == 303  # home still gets in
