"""CHAP over real sockets (RFC 7143 12.1.3, RFC 1994): our target as a process, logged in
to by real peers and by our own initiator.

Oracles: libiscsi 1.19's tools (iscsi-inq, iscsi-ls), which compute and check CHAP MD5
themselves (lib/login.c; URL `iscsi://user%password@...`, mutual CHAP with the URL
arguments target_user= and target_password=, lib/init.c iscsi_parse_url); QEMU's iscsi
block driver (block/iscsi.c: user=, password-secret= naming a `-object secret`), which
drives libiscsi; the login Status-Class/Detail 02/01 (Authentication failure, 11.13.5)
as the initiators report it. Our initiator covers CHAP_A 6, 7 and 8, which libiscsi 1.19
does not offer (it sends CHAP_A=5 only); the unit tests check its responses against
hashlib (tests/unit/test_chap.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from target.iscsi.chap import InitiatorChap
from target.shell.initiator import Initiator, InitiatorError
from target.testing.servers import REPO_ROOT, OurTarget, initiator_iqn

pytestmark = [pytest.mark.integration]

IQN = "iqn.2026-11.local.test:chap"
OPEN = "iqn.2026-11.local.test:open"
USER, SECRET = "guest", "initiator-secret-1"
TUSER, TSECRET = "target", "target-secret-0002"
DUSER, DSECRET = "discoverer", "discovery-secret-3"
INITIATOR = initiator_iqn("chap")
INQUIRY = bytes([0x12, 0, 0, 0, 36, 0])
needs_libiscsi = pytest.mark.skipif(not shutil.which("iscsi-inq"),
                                    reason="needs libiscsi-bin (installed by `make test`)")
needs_qemu = pytest.mark.skipif(not shutil.which("qemu-io"),
                                reason="needs qemu-utils and qemu-block-extra")

CONFIG = f"""
[[target]]
iqn = "{IQN}"
[[target.lun]]
size = "4M"
[target.chap]
user = "{USER}"
secret = "{SECRET}"
mutual_user = "{TUSER}"
mutual_secret = "{TSECRET}"

[[target]]
iqn = "{OPEN}"
[[target.lun]]
size = "1M"

[discovery.chap]
secrets_file = "discovery.toml"
"""


def write_config(work: Path) -> Path:
    """CONFIG and its discovery secrets file, both 0600 (the target refuses them open)."""
    cfg = work / "chap.toml"
    cfg.write_text(CONFIG)
    cfg.chmod(0o600)
    disc = work / "discovery.toml"
    disc.write_text(f'user = "{DUSER}"\nsecret = "{DSECRET}"\n')
    disc.chmod(0o600)
    return cfg


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("chap")
    with OurTarget(config=write_config(work), workdir=work, iqn=IQN) as t:
        yield t


def ours(server, **kw) -> Initiator:
    kw.setdefault("chap", InitiatorChap(USER, SECRET.encode()))
    return Initiator("127.0.0.1", server.port, IQN, initiator_name=INITIATOR, timeout=10, **kw)


def inquiry_works(server, **kw) -> None:
    with ours(server, **kw) as i:
        i.login()
        result = i.command(INQUIRY, read=36)
        assert result.status == 0 and result.data[8:16] == b"QEMUSCSI"
        i.logout()


def refused(server, rule: str, **kw) -> None:
    """Refused 02/01, for `rule` (the target's log says which), and a good login after."""
    log = Path(server.log_path)
    before = log.stat().st_size
    with ours(server, **kw) as i, pytest.raises(InitiatorError, match="status 02/01"):
        i.login()
    with open(log, "rb") as f:
        f.seek(before)
        new = f.read().decode(errors="replace")
    assert f"login failed 02/01: {rule}" in new, new
    inquiry_works(server)  # and the target still serves a good login


# --- every algorithm, our initiator ------------------------------------------------------


@pytest.mark.parametrize("mutual", [False, True], ids=["one-way", "mutual"])
@pytest.mark.parametrize("alg", [5, 6, 7, 8], ids=["MD5", "SHA-1", "SHA-256", "SHA3-256"])
def test_our_initiator_every_algorithm(server, alg, mutual):
    chap = InitiatorChap(USER, SECRET.encode(), TUSER if mutual else "",
                         TSECRET.encode() if mutual else b"", algorithms=str(alg))
    seen: dict[str, str] = {}

    def watch(target_keys: dict[str, str], keys: dict[str, str]) -> dict[str, str]:
        seen.update(target_keys)
        return keys

    inquiry_works(server, chap=chap, chap_hook=watch)
    assert seen["CHAP_A"] == str(alg)


def test_our_initiator_refuses_a_target_with_another_secret(server):
    chap = InitiatorChap(USER, SECRET.encode(), TUSER, b"not-the-target-secret")
    with ours(server, chap=chap) as i, pytest.raises(InitiatorError, match="does not verify"):
        i.login()


# --- libiscsi and QEMU ---------------------------------------------------------------------


def libiscsi(tool: str, url: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool, "-i", INITIATOR, url], capture_output=True, text=True,
                          timeout=30)


@needs_libiscsi
def test_libiscsi_md5_one_way(server):
    p = libiscsi("iscsi-inq", f"iscsi://{USER}%{SECRET}@127.0.0.1:{server.port}/{IQN}/0")
    assert p.returncode == 0 and "DIRECT_ACCESS" in p.stdout, p.stderr


@needs_libiscsi
def test_libiscsi_md5_mutual(server):
    base = f"iscsi://{USER}%{SECRET}@127.0.0.1:{server.port}/{IQN}/0"
    p = libiscsi("iscsi-inq", f"{base}?target_user={TUSER}&target_password={TSECRET}")
    assert p.returncode == 0 and "DIRECT_ACCESS" in p.stdout, p.stderr
    # libiscsi checks our CHAP_R: with another expected secret it refuses us
    p = libiscsi("iscsi-inq", f"{base}?target_user={TUSER}&target_password=other-secret-99")
    assert p.returncode != 0 and "Invalid CHAP_R" in p.stderr


@needs_libiscsi
def test_libiscsi_wrong_secret_and_no_chap_refused(server):
    for auth in (f"{USER}%wrong-secret-99@", ""):
        p = libiscsi("iscsi-inq", f"iscsi://{auth}127.0.0.1:{server.port}/{IQN}/0")
        assert p.returncode != 0 and "Authentication failure" in p.stderr, p.stderr


@needs_libiscsi
def test_libiscsi_discovery_chap(server):
    p = libiscsi("iscsi-ls", f"iscsi://{DUSER}%{DSECRET}@127.0.0.1:{server.port}")
    assert p.returncode == 0 and IQN in p.stdout and OPEN in p.stdout, p.stderr
    # none, a wrong secret, and a target's credentials (not discovery's)
    for auth in ("", f"{DUSER}%wrong-secret-99@", f"{USER}%{SECRET}@"):
        p = libiscsi("iscsi-ls", f"iscsi://{auth}127.0.0.1:{server.port}")
        assert p.returncode != 0 and "Authentication failure" in p.stderr, p.stdout
        assert IQN not in p.stdout


@needs_libiscsi
def test_discovery_and_target_chap_with_workers(tmp_path):
    """serve --workers 2: the portal process answers discovery, so it must ask for the
    discovery credentials too; a normal session's CHAP runs in its target's worker."""
    with OurTarget(["--workers", "2"], config=write_config(tmp_path), workdir=tmp_path,
                   iqn=IQN) as t:
        p = libiscsi("iscsi-ls", f"iscsi://{DUSER}%{DSECRET}@127.0.0.1:{t.port}")
        assert p.returncode == 0 and IQN in p.stdout and OPEN in p.stdout, p.stderr
        p = libiscsi("iscsi-ls", f"iscsi://127.0.0.1:{t.port}")
        assert p.returncode != 0 and "Authentication failure" in p.stderr, p.stdout
        p = libiscsi("iscsi-inq", f"iscsi://{USER}%{SECRET}@127.0.0.1:{t.port}/{IQN}/0")
        assert p.returncode == 0 and "DIRECT_ACCESS" in p.stdout, p.stderr
        p = libiscsi("iscsi-inq", f"iscsi://{USER}%wrong-secret-99@127.0.0.1:{t.port}/{IQN}/0")
        assert p.returncode != 0 and "Authentication failure" in p.stderr, p.stderr


@needs_libiscsi
def test_target_without_chap_still_open(server):
    p = libiscsi("iscsi-inq", f"iscsi://127.0.0.1:{server.port}/{OPEN}/0")
    assert p.returncode == 0 and "DIRECT_ACCESS" in p.stdout, p.stderr


def qemu_io(server, password: str, *commands: str) -> subprocess.CompletedProcess:
    opts = (f"driver=iscsi,transport=tcp,portal=127.0.0.1:{server.port},target={IQN},lun=0,"
            f"user={USER},password-secret=sec0,initiator-name={INITIATOR}")
    cmd = ["qemu-io", "--object", f"secret,id=sec0,data={password}", "--image-opts", opts]
    for c in commands:
        cmd += ["-c", c]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


@needs_qemu
def test_qemu_iscsi_driver_md5(server):
    p = qemu_io(server, SECRET, "write -P 0xa5 4096 512", "read -P 0xa5 4096 512")
    assert p.returncode == 0 and "read 512/512 bytes at offset 4096" in p.stdout, p.stderr
    assert "Pattern verification failed" not in p.stdout + p.stderr
    p = qemu_io(server, "wrong-secret-99", "read 0 512")
    assert p.returncode != 0 and "Authentication failure" in p.stderr, p.stderr


# --- denials, our initiator -----------------------------------------------------------------


def test_wrong_secret(server):
    refused(server, "CHAP: CHAP_R does not verify",
            chap=InitiatorChap(USER, b"wrong-secret-xxxx"))


def test_wrong_name(server):
    refused(server, "CHAP: unknown CHAP_N 'somebody'",
            chap=InitiatorChap("somebody", SECRET.encode()))


def drop(key: str):
    def hook(target_keys, keys):
        keys.pop(key, None)
        return keys
    return hook


def test_missing_chap_r(server):
    refused(server, "CHAP: no CHAP_R", chap_hook=drop("CHAP_R"))


@pytest.mark.parametrize("algorithms", ["99", "56", "1,2,3,4,9"])
def test_unknown_algorithm_only(server, algorithms):
    """56 is no 5: a target that read the first byte only would take MD5."""
    refused(server, f"CHAP: no supported algorithm in CHAP_A='{algorithms}'",
            chap=InitiatorChap(USER, SECRET.encode(), algorithms=algorithms))


def test_auth_method_none_only(server):
    refused(server, "no acceptable AuthMethod",
            chap=InitiatorChap(USER, SECRET.encode(), auth_method="None"))


def test_reflected_challenge(server):
    def reflect(target_keys, keys):
        if "CHAP_R" in keys:  # the response step: our challenge is the target's own
            keys.update(CHAP_I=target_keys["CHAP_I"], CHAP_C=target_keys["CHAP_C"])
        return keys
    refused(server, "CHAP: the initiator's CHAP_C is the target's own challenge",
            chap=InitiatorChap(USER, SECRET.encode(), TUSER, TSECRET.encode()),
            chap_hook=reflect)


def test_replayed_response(server):
    captured: dict[str, str] = {}

    def capture(target_keys, keys):
        captured.update(keys)
        return keys

    inquiry_works(server, chap_hook=capture)
    assert "CHAP_R" in captured

    def replay(target_keys, keys):
        if "CHAP_R" in keys:
            keys["CHAP_R"] = captured["CHAP_R"]
        return keys
    refused(server, "CHAP: CHAP_R does not verify", chap_hook=replay)


@pytest.mark.parametrize("value,rule", [
    ("0x" + "ab" * 1025, "CHAP_R of 1025 bytes (over 1024)"),
    ("0x" + "a" * 9000, "CHAP_R value of 9002 characters (over 8192)"),  # in C=1 pieces
], ids=["1025-bytes", "9000-characters"])
def test_oversized_value(server, value, rule):
    def big(target_keys, keys):
        if "CHAP_R" in keys:
            keys["CHAP_R"] = value
        return keys
    refused(server, f"CHAP: {rule}", chap_hook=big)


def test_same_secret_both_directions(server):
    """A response made with the target's own secret (RFC 7143 9.2.1)."""
    refused(server, "CHAP: CHAP_R made with the target's own secret",
            chap=InitiatorChap(USER, TSECRET.encode()))


def test_target_log_names_rules_not_secrets(server):
    refused(server, "CHAP: CHAP_R does not verify",
            chap=InitiatorChap(USER, b"wrong-secret-xxxx"))
    log = Path(server.log_path).read_text()
    for secret in (SECRET, TSECRET, DSECRET, "wrong-secret-xxxx"):
        assert secret not in log
    assert "Traceback" not in log


# --- secrets files must be private ------------------------------------------------------------


def serve(config: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([sys.executable, "-m", "target", "serve", "--config", str(config),
                           "--portal", "127.0.0.1:0"], capture_output=True, text=True,
                          timeout=60, env=env, stdin=subprocess.DEVNULL)


def test_config_with_secret_readable_by_others_refused(tmp_path):
    cfg = tmp_path / "chap.toml"
    cfg.write_text(CONFIG.split("[discovery.chap]")[0])
    cfg.chmod(0o644)
    p = serve(cfg)
    assert p.returncode == 2
    assert str(cfg) in p.stderr and "group or others" in p.stderr and "0644" in p.stderr


def test_secrets_file_readable_by_group_refused(tmp_path):
    cfg = tmp_path / "chap.toml"
    cfg.write_text('[discovery.chap]\nsecrets_file = "discovery.toml"\n')
    cfg.chmod(0o644)  # no secret in it: may be public
    disc = tmp_path / "discovery.toml"
    disc.write_text(f'user = "{DUSER}"\nsecret = "{DSECRET}"\n')
    disc.chmod(0o640)
    p = serve(cfg)
    assert p.returncode == 2
    assert str(disc) in p.stderr and "group or others" in p.stderr
    assert DSECRET not in p.stderr
