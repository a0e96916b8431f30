"""The Linux kernel's initiator (iscsistart in the guest) authenticates with CHAP.

RFC 7143 12.1.3: the target challenges (CHAP_A, CHAP_I, CHAP_C), the initiator answers
(CHAP_N, CHAP_R); in mutual CHAP the initiator sends its own CHAP_I/CHAP_C with its
answer and the target must prove it knows its own secret. The peer is open-iscsi's
iscsistart (iscsistart(8): -u/-w the initiator's name and secret, -U/-W the target's,
which the initiator checks), logging in over virtio-net as in test_linux_initiator.py.
Proved here: a login with a wrong secret is refused by the target (Status-Class 02
detail 01, RFC 7143 11.13.5, in the target's log), a target that answers with another
secret than the one the initiator expects is refused by the initiator, and then a
one-way and a mutual login reach full feature phase and the LUN carries data.
(iscsistart opens one session per target and has no logout: the refusals come first.)
"""

from __future__ import annotations

import re
import secrets

import pytest

from qemu.smoke import check_backing, pattern
from qemu.spec import iscsistart
from target.testing.plugin import Lun

pytestmark = pytest.mark.guest

LUN = Lun(size=16 << 20, vendor="STISCSI", product="CHAP")
USER = "iqn.2026-11.local.scsi-target:guest"
TARGET_USER = "chap-target"
AT = 4 << 20
LOGIN_S = 90


def _secret() -> str:
    return secrets.token_hex(8)  # 16 bytes: RFC 7143 9.2.1 asks for at least 12


def _logged_in(vm, target) -> None:
    """A session to the target, its LUN an sd disk carrying what the guest writes."""
    vm.wait_disk()
    assert vm.check("cat /sys/class/iscsi_session/session*/targetname").strip() == target.iqn
    marker = f"chap-{secrets.token_hex(6)}"
    vm.write_pattern(marker, AT)
    check_backing(target.backing(), pattern(marker), AT)


def _authenticated(target) -> str:
    """The target's log line of the CHAP exchange that succeeded (-v: INFO)."""
    log = target.server.log_path.read_text()
    found = re.findall(r"CHAP: \S+ authenticated \(CHAP_A=\d[^)]*\)", log)
    assert len(found) == 1, log[-2000:]
    print(found[0])
    return found[0]


def test_one_way_chap_md5(scsi_target, guest):
    """MD5 (CHAP_A=5, RFC 1994's), the only algorithm the target accepts here (the
    config's `algorithms`); iscsistart 2.1.8 here chose it also unasked (the mutual test:
    CHAP_A=5)."""
    secret = _secret()
    target = scsi_target(LUN, args=("-v",),
                         chap={"user": USER, "secret": secret, "algorithms": ["MD5"]})
    vm = guest(target, mode="initiator", login=False)
    rc, out = vm.run(iscsistart(target.address(0), chap=(USER, secret + "x")),
                     timeout=LOGIN_S)
    assert rc != 0, out
    log = target.server.log_path.read_text()
    assert re.search(r"login failed 02/01: .*CHAP", log), (out, log[-2000:])
    vm.check(iscsistart(target.address(0), chap=(USER, secret)), timeout=LOGIN_S)
    _logged_in(vm, target)
    assert "CHAP_A=5)" in _authenticated(target)


def test_mutual_chap(scsi_target, guest):
    secret, target_secret = _secret(), _secret()
    target = scsi_target(LUN, args=("-v",),
                         chap={"user": USER, "secret": secret, "mutual_user": TARGET_USER,
                               "mutual_secret": target_secret})
    vm = guest(target, mode="initiator", login=False)
    # The initiator expects another target secret: it refuses our (right) answer.
    rc, out = vm.run(iscsistart(target.address(0), chap=(USER, secret),
                                mutual_chap=(TARGET_USER, _secret())), timeout=LOGIN_S)
    assert rc != 0 and "session exists" not in out, out
    vm.check(iscsistart(target.address(0), chap=(USER, secret),
                        mutual_chap=(TARGET_USER, target_secret)), timeout=LOGIN_S)
    _logged_in(vm, target)
    # Both logins were mutual (the initiator sent CHAP_I and CHAP_C); the first one the
    # initiator itself refused, after the target had accepted it.
    log = target.server.log_path.read_text()
    found = re.findall(r"CHAP: \S+ authenticated \(CHAP_A=\d, mutual\)", log)
    print(found)
    assert len(found) == 2, log[-2000:]
