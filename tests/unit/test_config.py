"""The TOML config: defaults, sizes, and errors that name the file, the key and the problem."""

import struct

import pytest

from target import config
from target.config import ConfigError
from target.scsi.task import Nexus, ScsiTask, Status

pytestmark = pytest.mark.unit


def test_embedded_default_is_one_memory_gib_on_loopback():
    cfg = config.Config()
    assert cfg.listen == ["127.0.0.1:3260"]
    (t,) = cfg.targets
    assert t.iqn == "iqn.2026-11.local.scsi-target:default"
    (lun,) = t.luns
    assert (lun.lun, lun.store, lun.size, lun.block_size) == (0, "memory", 1 << 30, 512)


def test_full_file_parses(tmp_path):
    f = tmp_path / "t.toml"
    f.write_text("""
[[portal]]
listen = "127.0.0.1:0"

[[target]]
iqn = "iqn.2026-11.local.test:a"
initiators = ["iqn.2026-11.local.test:init"]

[[target.lun]]
lun = 3
store = "file"
path = "/tmp/x.img"
size = "64M"
block_size = 4096
serial = "abc"
read_only = true
""")
    cfg = config.load(f)
    (t,) = cfg.targets
    (lun,) = t.luns
    assert cfg.listen == ["127.0.0.1:0"]
    assert t.initiators == ["iqn.2026-11.local.test:init"]
    assert (lun.lun, lun.store, lun.path, lun.size) == (3, "file", "/tmp/x.img", 64 << 20)
    assert (lun.block_size, lun.serial, lun.read_only) == (4096, "abc", True)


@pytest.mark.parametrize("body,where,what", [
    ('[[target]]\niqn = "bogus"\n[[target.lun]]\n', "target[0].iqn", "not an iSCSI name"),
    ('[[target]]\niqn = "iqn.2026-11.a.b:c"\n[[target.lun]]\nsize = "12Q"\n',
     "target[0].lun[0].size", "expected a size"),
    ('[[target]]\niqn = "iqn.2026-11.a.b:c"\n[[target.lun]]\nblock_size = 520\n',
     "target[0].lun[0].block_size", "512 or 4096"),
    ('[[target]]\niqn = "iqn.2026-11.a.b:c"\n[[target.lun]]\nstore = "file"\n',
     "target[0].lun[0].path", "needs a path"),
    ('[[target]]\niqn = "iqn.2026-11.a.b:c"\n[[target.lun]]\ncolour = 1\n',
     "target[0].lun[0]", "unknown key(s): colour"),
    ('[[target]]\niqn = "iqn.2026-11.a.b:c"\n[[target.lun]]\nsize = 1000\n',
     "target[0].lun[0].size", "whole number of 512-byte blocks"),
    ('[[portal]]\nlisten = "127.0.0.1:99999"\n', "portal[0].listen", "out of range"),
    ('[[target]]\niqn = "iqn.2026-11.a.b:c"\n[[target.lun]]\n[[target.lun]]\nlun = 0\n',
     "target[0].lun[1].lun", "used twice"),
    ('[[target]]\niqn = "iqn.2026-11.a.b:c"\n', "target[0].lun", "at least one"),
    ('[[target]]\niqn = "iqn.2026-11.a.b:c"\n[[target.lun]]\n[target.lun.scheduler]\n'
     'elevator = "scan"\n', "target[0].lun[0].scheduler.elevator", '"fifo" or "disksort"'),
    ('[[target]]\niqn = "iqn.2026-11.a.b:c"\n[[target.lun]]\n[target.lun.scheduler]\n'
     'dispatch_depth = 0\n', "target[0].lun[0].scheduler.dispatch_depth", "at least 1"),
    ('[[target]]\niqn = "iqn.2026-11.a.b:c"\n[[target.lun]]\n[target.lun.scheduler.disk]\n'
     'average_seek_ms = 0.1\n', "target[0].lun[0].scheduler.disk.average_seek_ms",
     "at least 0.8"),
    ('[[target]]\niqn = "iqn.2026-11.a.b:c"\n[[target.lun]]\n[target.lun.scheduler.disk]\n'
     'spin = 1\n', "target[0].lun[0].scheduler.disk", "unknown key(s): spin"),
    ('[[target]]\niqn = "iqn.2026-11.a.b:c"\n[[target.lun]]\nio_threads = -1\n',
     "target[0].lun[0].io_threads", "0 to 256 worker threads"),
    ('busy_poll_us = -5\n', "busy_poll_us", "0 to 10000 microseconds"),
    ('busy_poll_us = "fast"\n', "busy_poll_us", "expected"),
])
def test_errors_name_file_key_and_problem(tmp_path, body, where, what):
    f = tmp_path / "bad.toml"
    f.write_text(body)
    with pytest.raises(ConfigError) as e:
        config.load(f)
    msg = str(e.value)
    assert str(f) in msg and where in msg and what in msg


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        config.load(tmp_path / "absent.toml")
    f = tmp_path / "x.toml"
    f.write_text("[[target]\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(f)


@pytest.mark.parametrize("text,size", [("512", 512), ("4K", 4096), ("1G", 1 << 30),
                                       ("2GiB", 2 << 30), (1048576, 1 << 20)])
def test_sizes(text, size):
    assert config.parse_size(text, "x") == size


def test_listen_forms():
    assert config.parse_listen("127.0.0.1:0", "x") == ("127.0.0.1", 0)
    assert config.parse_listen("[::1]:3261", "x") == ("::1", 3261)
    assert config.parse_listen("localhost", "x") == ("localhost", 3260)


def test_scheduler_table_reaches_the_task_set(tmp_path):
    """[target.lun.scheduler] and its disk model become the LU's task set (target.app)."""
    from target import app

    f = tmp_path / "sched.toml"
    f.write_text('[[target]]\niqn = "iqn.2026-11.a.b:c"\n[[target.lun]]\nsize = "8M"\n'
                 '[target.lun.scheduler]\nelevator = "fifo"\ndispatch_depth = 1\n'
                 'queue_depth = 8\nmax_passes = 0\ndeadline_ms = 250\n'
                 '[target.lun.scheduler.disk]\nrpm = 5400\naverage_seek_ms = 12\n')
    built = app.build(config.load(f))
    try:
        ts = built.devices[0].luns[0].taskset
        assert (ts.policy, ts.depth, ts.queue_limit) == ("fifo", 1, 8)
        assert ts.elevator.max_passes is None and ts.elevator.deadline == 0.25
        assert ts.model.rpm == 5400 and ts.model.average_seek_ms == 12
        assert ts.model.capacity_blocks == (8 << 20) // 512
        # SBC-4 6.6.2 (table 237): MEDIUM ROTATION RATE, bytes 4-5 of the Block Device
        # Characteristics VPD page, is the nominal rotation rate in rpm for a rotating
        # medium; 0001h means non-rotating. The model's disk rotates at 5400 rpm.
        lu = built.devices[0].luns[0]
        task = ScsiTask(Nexus("i,i,0x1", "t,t,0x1"), 0, bytes([0x12, 0x01, 0xB1, 0, 64, 0]))
        lu.execute(task)
        assert task.status == Status.GOOD and task.data_in[1] == 0xB1
        assert struct.unpack_from(">H", task.data_in, 4)[0] == 5400
    finally:
        built.close()


def test_lu_without_a_disk_model_does_not_rotate(tmp_path):
    """SBC-4 6.6.2: with no rotational model the LU reports 0001h, a non-rotating medium."""
    from target import app

    f = tmp_path / "ssd.toml"
    f.write_text('[[target]]\niqn = "iqn.2026-11.a.b:c"\n[[target.lun]]\nsize = "8M"\n')
    built = app.build(config.load(f))
    try:
        task = ScsiTask(Nexus("i,i,0x1", "t,t,0x1"), 0, bytes([0x12, 0x01, 0xB1, 0, 64, 0]))
        built.devices[0].luns[0].execute(task)
        assert struct.unpack_from(">H", task.data_in, 4)[0] == 0x0001
    finally:
        built.close()


def test_io_threads_reach_the_lu(tmp_path):
    """io_threads: the worker threads of a LU's medium access (0: on the event loop); by
    default 0 for a memory LU and 8 for a file on a disk (target.app, base.py)."""
    from target import app

    f = tmp_path / "io.toml"
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    f.write_text(f'[[target]]\niqn = "iqn.2026-11.a.b:c"\n'
                 f'[[target.lun]]\nlun = 0\nsize = "1M"\n'
                 f'[[target.lun]]\nlun = 1\nsize = "1M"\nio_threads = 2\n'
                 f'[[target.lun]]\nlun = 2\nstore = "file"\npath = "{a}"\n'
                 f'size = "1M"\n'
                 f'[[target.lun]]\nlun = 3\nstore = "file"\npath = "{b}"\n'
                 f'size = "1M"\nio_threads = 0\n')
    built = app.build(config.load(f))
    try:
        luns = built.devices[0].luns
        file_default = 8 if luns[2].store.blocking else 0
        assert [luns[n].io_threads for n in range(4)] == [0, 2, file_default, 0]
    finally:
        built.close()


def test_io_threads_option_of_serve():
    """serve --io-threads N sets the first LUN's io_threads; out of range names the option."""
    from target import cli

    parser = cli._parser()
    cfg = cli.effective_config(parser.parse_args(["serve", "--io-threads", "3"]))
    assert cfg.targets[0].luns[0].io_threads == 3
    cfg = cli.effective_config(parser.parse_args(["serve"]))
    assert cfg.targets[0].luns[0].io_threads is None
    with pytest.raises(config.ConfigError, match="--io-threads: expected 0 to 256"):
        cli.effective_config(parser.parse_args(["serve", "--io-threads", "257"]))


# The INQUIRY identification fields, each of its width in the standard INQUIRY data
# (SPC-4 6.4.2, table 142: T10 VENDOR IDENTIFICATION 8 bytes, PRODUCT IDENTIFICATION 16,
# PRODUCT REVISION LEVEL 4), and the task set's integer bounds, each into its own field.
LUN_HEAD = '[[target]]\niqn = "iqn.2026-11.a.b:c"\n[[target.lun]]\n'


def test_inquiry_fields_and_scheduler_integers_land_in_their_fields(tmp_path):
    f = tmp_path / "t.toml"
    f.write_text(LUN_HEAD + 'vendor = "ABCDEFGH"\nproduct = "P234567890123456"\n'
                 'revision = "R234"\n[target.lun.scheduler]\ndispatch_depth = 3\n'
                 'queue_depth = 9\nmax_passes = 5\ncylinder_blocks = 7\n')
    (lun,) = config.load(f).targets[0].luns
    assert (lun.vendor, lun.product, lun.revision) == ("ABCDEFGH", "P234567890123456", "R234")
    s = lun.scheduler
    assert (s.dispatch_depth, s.queue_depth, s.max_passes, s.cylinder_blocks) == (3, 9, 5, 7)


@pytest.mark.parametrize("key,value,what", [
    ("vendor", '"ABCDEFGHI"', "at most 8 printable"),
    ("product", '"P2345678901234567"', "at most 16 printable"),
    ("revision", '"R2345"', "at most 4 printable"),
    ("vendor", '"caf\u00e9"', "at most 8 printable"),
])
def test_inquiry_fields_over_their_width_are_errors(tmp_path, key, value, what):
    f = tmp_path / "bad.toml"
    f.write_text(LUN_HEAD + f"{key} = {value}\n")
    with pytest.raises(ConfigError) as e:
        config.load(f)
    assert f"target[0].lun[0].{key}" in str(e.value) and what in str(e.value)


@pytest.mark.parametrize("key,value,what", [
    ("queue_depth", 0, "at least 1"), ("max_passes", -1, "at least 0"),
    ("cylinder_blocks", -1, "at least 0"),
])
def test_scheduler_integers_below_their_bound_are_errors(tmp_path, key, value, what):
    f = tmp_path / "bad.toml"
    f.write_text(LUN_HEAD + f"[target.lun.scheduler]\n{key} = {value}\n")
    with pytest.raises(ConfigError) as e:
        config.load(f)
    assert f"target[0].lun[0].scheduler.{key}" in str(e.value) and what in str(e.value)


def test_busy_poll_option_and_key_of_serve(tmp_path):
    """serve --busy-poll-us and the top-level busy_poll_us reach the server's budget; the
    option overrides the file; out of range names the option."""
    from target import cli

    parser = cli._parser()
    assert cli.effective_config(parser.parse_args(["serve"])).busy_poll_us == 50
    f = tmp_path / "bp.toml"
    f.write_text("busy_poll_us = 0\n")
    assert cli.effective_config(parser.parse_args(["serve", "--config", str(f)])).busy_poll_us == 0
    cfg = cli.effective_config(parser.parse_args(["serve", "--config", str(f),
                                                  "--busy-poll-us", "120"]))
    assert cfg.busy_poll_us == 120
    with pytest.raises(config.ConfigError, match="--busy-poll-us: expected 0 to 10000"):
        cli.effective_config(parser.parse_args(["serve", "--busy-poll-us", "20000"]))
