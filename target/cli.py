"""The `scsi-target` command.

    scsi-target serve [--config FILE] [--portal HOST:PORT ...] [--target-iqn IQN]
                      [--size SIZE] [--block-size 512|4096] [--backing PATH]
                      [--read-only] [--io-threads N] [--port-file FILE]
                      [--log-file FILE] [-v] [-q]
                      [--trace FILE] [--trace-live] [--event-loop uvloop|asyncio]
                      [--workers N|auto] [--busy-poll-us US]
                  [--elevator disksort|fifo] [--dispatch-depth N] [--queue-depth N]
                  [--rotational] [--rpm N] [--seek-ms MS] [--control SOCKET]
    scsi-target status [--control SOCKET] [--json]
    scsi-target fault add --action check-condition|busy|task-set-full|delay|medium-delay|drop
                      [--target IQN] [--lun N]
                      [--op NAME] [--lba FROM-TO] [--initiator IQN] [--every N|--first N|
                      --once] [--sense KEY/ASC/ASCQ] [--delay-ms MS]
    scsi-target fault list | clear [ID]                  (each: [--control SOCKET])
    scsi-target dump inspect LUN-URL-OR-FILE [--extract DIR|FILE] [--expand DIR] [--json]
    scsi-target trace FILE [--json | --lines]
    scsi-target opcodes [--markdown]
    scsi-target config check FILE
    scsi-target config show [FILE]
    scsi-target image build linux [--force]
    scsi-target image build illumos [--release NAME | --from PATH | --url URL] [--sha256 HEX]
    scsi-target image releases
    scsi-target image list

Rules:
- Without --config, `serve` serves the embedded default (target/config.py). Options
  given on the command line override the config: --portal replaces the listen
  addresses, --target-iqn/--size/--block-size/--backing/--read-only change the first
  target and its first LUN.
- Port 0 binds an ephemeral port; --port-file receives the bound ports (one a line, in
  --portal order) once listening
  (tests and tools use it).
- Errors in the config or the store are printed as one line naming the file, key or
  path, and the command exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from target import config as cfgmod
from target.config import Config, ConfigError

log = logging.getLogger("scsi-target")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="scsi-target",
                                 description="A QEMU-attached iSCSI/SCSI target emulator.")
    sub = ap.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="serve targets over iSCSI")
    s.add_argument("--config", type=Path, help="TOML config file (default: embedded)")
    s.add_argument("--portal", action="append", metavar="HOST:PORT",
                   help="listen address (repeatable; port 0 = ephemeral)")
    s.add_argument("--target-iqn", help="IQN of the (first) target")
    s.add_argument("--size", help="size of the (first) LUN, e.g. 1G, 64M")
    s.add_argument("--block-size", type=int, choices=(512, 4096), help="logical block size")
    s.add_argument("--backing", type=Path, help="serve a file or block device instead of memory")
    s.add_argument("--read-only", action="store_true", help="make the (first) LUN read-only")
    s.add_argument("--io-threads", type=int, metavar="N",
                   help="worker threads for the (first) LUN's store calls, 0: on the event "
                        "loop (default: 0 for memory and tmpfs, 8 otherwise)")
    s.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    s.add_argument("--log-file", type=Path, help="write the log here instead of stderr")
    s.add_argument("--trace", type=Path, metavar="FILE",
                   help="record every command in FILE (binary records; `scsi-target "
                        "trace FILE --json` decodes them)")
    s.add_argument("--trace-live", action="store_true",
                   help="print one line per command as it completes")
    s.add_argument("--workers", type=_workers, metavar="N|auto",
                   help="serve the targets in N worker processes (target i in worker i mod "
                        "N), so that many disks served at once use every core "
                        "(target.shell.workers); auto: one per target, at most one per "
                        "CPU; default: all in this process")
    s.add_argument("--busy-poll-us", type=float, metavar="US",
                   help="after answering, a connection with nothing outstanding polls "
                        "this long for the next command instead of sleeping, when it is "
                        "the process's only one and a core is free (default 50; 0: off)")
    s.add_argument("--event-loop", choices=("uvloop", "asyncio"),
                   help="the event loop (default: uvloop when it is installed, else "
                        "asyncio's own)")
    sc = s.add_argument_group("task set of the (first) LUN (config: [target.lun.scheduler])")
    sc.add_argument("--elevator", choices=("disksort", "fifo"),
                    help="order of queued SIMPLE tasks (default disksort)")
    sc.add_argument("--dispatch-depth", type=int, metavar="N",
                    help="tasks running at once (default 64; 1 = a single actuator)")
    sc.add_argument("--queue-depth", type=int, metavar="N",
                    help="tasks in the task set before TASK SET FULL (default 512)")
    sc.add_argument("--rotational", action="store_true",
                    help="delay completions as a 7200 rpm disk that seeks would")
    sc.add_argument("--rpm", type=int, help="rotational model: spindle speed (implies "
                    "--rotational)")
    sc.add_argument("--seek-ms", type=float, metavar="MS",
                    help="rotational model: average seek (implies --rotational)")
    s.add_argument("--control", type=Path, metavar="SOCKET",
                   help="control socket for `scsi-target status` (default: "
                        "$XDG_RUNTIME_DIR/scsi-target/PID.sock)")
    s.add_argument("-v", "--verbose", action="count", default=0)
    s.add_argument("-q", "--quiet", action="store_true", help="do not print the banner")

    fa = sub.add_parser("fault", help="add, list or clear fault rules of a running target")
    fsub = fa.add_subparsers(dest="action", required=True)
    fadd = fsub.add_parser("add", help="add a rule (target.faults)")
    fadd.add_argument("--action", required=True, dest="fault_action",
                      choices=("check-condition", "busy", "task-set-full", "delay",
                               "medium-delay", "drop"))
    fadd.add_argument("--target", help="target IQN (default: any)")
    fadd.add_argument("--lun", type=int)
    fadd.add_argument("--op", action="append", help="command name, e.g. WRITE(10), or 0x2a "
                      "(repeatable)")
    fadd.add_argument("--lba", metavar="FROM-TO", help="block range (TO exclusive)")
    fadd.add_argument("--initiator", help="initiator IQN")
    count = fadd.add_mutually_exclusive_group()
    count.add_argument("--every", type=int, metavar="N", help="every N-th matching command")
    count.add_argument("--first", type=int, metavar="N", help="the first N matching commands")
    count.add_argument("--once", action="store_true", help="the first matching command")
    fadd.add_argument("--sense", metavar="KEY/ASC/ASCQ", help="hex, e.g. 03/11/00")
    fadd.add_argument("--delay-ms", type=float, help="for --action delay and medium-delay")
    flist = fsub.add_parser("list", help="list the rules and their hits")
    fclr = fsub.add_parser("clear", help="remove one rule, or all")
    fclr.add_argument("id", type=int, nargs="?")
    for p_ in (fadd, flist, fclr):
        p_.add_argument("--control", type=Path, metavar="SOCKET",
                        help="the target's control socket (default: the only one running)")

    du = sub.add_parser("dump", help="crash dumps on a LUN or an image")
    dsub = du.add_subparsers(dest="action", required=True)
    di = dsub.add_parser("inspect", help="find, check and summarise a dump (savecore's job)")
    di.add_argument("source", help="iscsi://HOST:PORT/IQN/LUN, an image file or a device")
    di.add_argument("--extract", type=Path, metavar="DIR|FILE",
                    help="illumos: write DIR/vmdump.N as savecore does (still compressed; "
                         "N from DIR/bounds); Linux: write FILE (a flattened dump "
                         "reassembled, as makedumpfile -R)")
    di.add_argument("--expand", type=Path, metavar="DIR",
                    help="illumos: write DIR/unix.N and DIR/vmcore.N as savecore -f "
                         "vmdump.N does (the pages decompressed)")
    di.add_argument("--json", action="store_true")

    st = sub.add_parser("status", help="show a running target's LUNs, task sets and sessions")
    st.add_argument("--control", type=Path, metavar="SOCKET",
                    help="the target's control socket (default: the only one running)")
    st.add_argument("--json", action="store_true", help="print the raw JSON")

    tr = sub.add_parser("trace", help="summarise a CDB trace per opcode, or print its records")
    tr.add_argument("file", type=Path)
    how = tr.add_mutually_exclusive_group()
    how.add_argument("--json", action="store_true",
                     help="print every record as a JSON line (target.trace's RECORD FIELDS)")
    how.add_argument("--lines", action="store_true",
                     help="print every record as one readable line (as --trace-live does)")

    op = sub.add_parser("opcodes", help="list the disk command table (target.scsi.listing)")
    op.add_argument("--markdown", action="store_true", help="as docs/opcodes.md")

    im = sub.add_parser("image", help="build or list guest images (XDG cache)")
    isub = im.add_subparsers(dest="action", required=True)
    ib = isub.add_parser("build", help="build a guest image (nothing to do when cached)")
    ib.add_argument("guest", choices=("linux", "illumos"))
    ib.add_argument("--force", action="store_true", help="rebuild (refetch) even when cached")
    ill = ib.add_argument_group("illumos (an OS image fetched and verified, not built)")
    ill.add_argument("--release", help="a named release (`image releases`)")
    ill.add_argument("--from", dest="from_path", type=Path, help="a local disk image")
    ill.add_argument("--url", help="any image URL (with --sha256)")
    ill.add_argument("--sha256", help="the SHA-256 the image must have")
    ill.add_argument("--name", help="the name to cache it under")
    ill.add_argument("--user", help="console login user (default root)")
    ill.add_argument("--password", help="console login password (default none)")
    isub.add_parser("list", help="list the cached images")
    isub.add_parser("releases", help="list the named illumos releases")

    c = sub.add_parser("config", help="check or show a config")
    csub = c.add_subparsers(dest="action", required=True)
    chk = csub.add_parser("check", help="validate a config file")
    chk.add_argument("file", type=Path)
    show = csub.add_parser("show", help="print the effective targets and LUNs")
    show.add_argument("file", type=Path, nargs="?")
    return ap


def effective_config(args: argparse.Namespace) -> Config:
    cfg = cfgmod.load(args.config) if args.config else Config(source="command line")
    if args.portal:
        for p in args.portal:
            cfgmod.parse_listen(p, f"--portal {p}")
        cfg.listen = list(args.portal)
    t = cfg.targets[0]
    lun = t.luns[0]
    if args.target_iqn:
        t.iqn = args.target_iqn
        if not args.config:
            lun.serial = cfgmod.default_serial(t.iqn, lun.lun)
    if args.block_size:
        lun.block_size = args.block_size
    if args.backing:
        lun.store = "file"
        lun.path = str(args.backing)
        lun.size = None
    if args.size:
        lun.size = cfgmod.parse_size(args.size, "--size")
    if lun.size is not None and lun.size % lun.block_size:
        raise ConfigError(f"--size: {lun.size} bytes is not a whole number of "
                          f"{lun.block_size}-byte blocks")
    if args.read_only:
        lun.read_only = True
    if args.busy_poll_us is not None:
        if not 0 <= args.busy_poll_us <= cfgmod.MAX_BUSY_POLL_US:
            raise ConfigError(f"--busy-poll-us: expected 0 to {cfgmod.MAX_BUSY_POLL_US:g} "
                              f"microseconds, not {args.busy_poll_us:g}")
        cfg.busy_poll_us = args.busy_poll_us
    if args.io_threads is not None:
        if not 0 <= args.io_threads <= cfgmod.MAX_IO_THREADS:
            raise ConfigError(f"--io-threads: expected 0 to {cfgmod.MAX_IO_THREADS} worker "
                              f"threads, not {args.io_threads}")
        lun.io_threads = args.io_threads
    sched = lun.scheduler
    if args.elevator:
        sched.elevator = args.elevator
    if args.dispatch_depth is not None:
        sched.dispatch_depth = _at_least_one("--dispatch-depth", args.dispatch_depth)
    if args.queue_depth is not None:
        sched.queue_depth = _at_least_one("--queue-depth", args.queue_depth)
    if args.rotational or args.rpm is not None or args.seek_ms is not None:
        disk = sched.disk or cfgmod.DiskModelConfig()
        if args.rpm is not None:
            if args.rpm < 1:
                raise ConfigError(f"--rpm: expected a positive integer, not {args.rpm}")
            disk.rpm = args.rpm
        if args.seek_ms is not None:
            if args.seek_ms < disk.track_to_track_ms:
                raise ConfigError(f"--seek-ms: expected at least the track-to-track time "
                                  f"{disk.track_to_track_ms} ms, not {args.seek_ms}")
            disk.average_seek_ms = args.seek_ms
        sched.disk = disk
    return cfg


def _human(size: int) -> str:
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift} {unit}"
    return f"{size} bytes"


def banner(app, bound: list[tuple[str, int]]) -> str:
    lines = []
    for t, device in zip(app.config.targets, app.devices, strict=True):
        lines += target_banner(t, device, bound)
    lines.append("press Ctrl-C to stop")
    return "\n".join(lines)


def target_banner(t, device, bound: list[tuple[str, int]]) -> list[str]:
    """The banner's lines of one target: where it listens, each LUN, its URL and QEMU."""
    host, port = bound[0]
    hostpart = f"[{host}]" if ":" in host else host
    lines = [f"serving {t.iqn} on " + ", ".join(f"{h}:{p}" for h, p in bound)]
    for lun, lu in sorted(device.luns.items()):
        url = f"iscsi://{hostpart}:{port}/{t.iqn}/{lun}"
        extra = "".join(f", {name}" for name, on in (
            (f"{lu.block_size << lu.lbppb_exponent}-byte physical", lu.lbppb_exponent),
            ("thin", lu.thin), ("read-only", lu.read_only), ("removable", lu.removable))
            if on)
        lines.append(f"  LUN {lun}: {lu.store.description}, {_human(lu.store.size)}, "
                     f"{lu.block_size}-byte blocks{extra}")
        lines.append(f"    URL:  {url}")
        lines.append(f"    QEMU: -drive if=none,id=d{lun},file={url},format=raw,cache=none "
                     f"-device virtio-scsi-pci,id=scsi0 "
                     f"-device scsi-block,drive=d{lun},bus=scsi0.0")
    return lines


def _write_port_file(path: Path | None, bound: list[tuple[str, int]]) -> None:
    if path:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(f"{port}\n" for _, port in bound))
        os.replace(tmp, path)


def serve(args: argparse.Namespace) -> int:
    from target import app as appmod
    from target.shell import server as srvmod
    from target.shell.control import default_socket

    level = logging.WARNING - 10 * args.verbose
    logging.basicConfig(level=max(level, logging.DEBUG),
                        filename=str(args.log_file) if args.log_file else None,
                        format="%(asctime)s %(levelname)s %(name)s"
                               + ("[%(process)d]" if args.workers else "") + ": %(message)s")
    cfg = effective_config(args)
    if args.event_loop == "uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            raise ConfigError("--event-loop uvloop: uvloop is not installed (it comes with "
                              "`make venv`, or pip install uvloop)") from None
    listen = [cfgmod.parse_listen(p, "listen") for p in cfg.listen]
    control_path = args.control or default_socket()
    if args.workers is not None:
        return _serve_workers(args, cfg, listen, control_path)
    application = appmod.build(cfg)

    def on_listening(bound: list[tuple[str, int]]) -> None:
        _write_port_file(args.port_file, bound)
        if not args.quiet:
            print(banner(application, bound), flush=True)

    try:
        server, tracer = _server(args, cfg, application, listen, on_listening, control_path)
    except OSError:
        application.close()
        raise
    try:
        srvmod.run(server, on_stop=application.close, event_loop=args.event_loop)
    finally:
        application.close()
        if tracer is not None:
            tracer.close()
    return 0


def _serve_workers(args: argparse.Namespace, cfg: Config, listen: list[tuple[str, int]],
                   control_path: Path) -> int:
    """`serve --workers N`: this process is the portal, the targets live in workers."""
    from target import app as appmod
    from target.shell import server as srvmod
    from target.shell import workers

    def assemble(part: Config, bound: list[tuple[str, int]]):
        application = appmod.build(part)
        try:
            server, tracer = _server(args, part, application, [], None, None, announce=bound)
        except OSError:
            application.close()
            raise

        def cleanup() -> None:
            application.close()
            if tracer is not None:
                tracer.close()

        lines = {t.iqn: target_banner(t, d, bound)
                 for t, d in zip(part.targets, application.devices, strict=True)}
        return server, lines, cleanup

    def on_listening(bound: list[tuple[str, int]], ws: list[workers.Worker]) -> None:
        _write_port_file(args.port_file, bound)
        if args.quiet:
            return
        lines = {iqn: text for w in ws for iqn, text in w.banner.items()}
        out = [line for t in cfg.targets for line in lines.get(t.iqn, [])]
        out += [f"worker pid {w.pid}: {', '.join(w.targets)}" for w in ws]
        out.append("press Ctrl-C to stop")
        print("\n".join(out), flush=True)

    portal = srvmod.Server(workers.portal_of(cfg), listen, None, cfg.nop_interval,
                           control_path=control_path, limits=cfg.limits)
    n = min(len(cfg.targets), srvmod.CPUS) if args.workers == "auto" else args.workers
    return workers.serve(cfg, portal, n, assemble,
                         lambda server: srvmod.run(server, event_loop=args.event_loop),
                         on_listening)


def _server(args: argparse.Namespace, cfg: Config, application, listen, on_listening,
            control_path: Path | None, announce: list[tuple[str, int]] | None = None):
    """The server of one App (with its tracer, fault rules and control), not started."""
    from target.shell import server as srvmod

    tracer = None
    if args.trace or args.trace_live:
        from target.trace import TraceError, Tracer

        try:
            tracer = Tracer(args.trace, sys.stdout if args.trace_live else None)
        except TraceError as exc:
            raise ConfigError(str(exc)) from None
        except OSError as exc:
            raise OSError(exc.errno, f"cannot write the trace {args.trace}: "
                          f"{exc.strerror}") from None
    from target.faults import Faults
    from target.shell.control import Control

    faults = Faults(cfg.faults)
    server = srvmod.Server(application.portal, listen, on_listening, cfg.nop_interval, tracer,
                           control=Control(application, faults), control_path=control_path,
                           faults=faults, announce=announce, busy_poll_us=cfg.busy_poll_us,
                           limits=cfg.limits)
    return server, tracer


def config_command(args: argparse.Namespace) -> int:
    cfg = cfgmod.load(args.file) if getattr(args, "file", None) else Config()
    if args.action == "check":
        print(f"{args.file}: ok ({len(cfg.targets)} target(s), "
              f"{sum(len(t.luns) for t in cfg.targets)} LUN(s))")
        return 0
    print(f"# {cfg.source}")
    print("listen:", ", ".join(cfg.listen))
    lim = cfg.limits
    print(f"limits: login within {lim.login_timeout:g} s, {lim.max_connections} connections "
          f"per portal ({lim.max_connections_per_address} per address), "
          f"{lim.max_sessions} sessions, {_human(lim.max_buffered_bytes)} buffered "
          "per connection")
    for t in cfg.targets:
        acl = ", ".join(t.initiators) if t.initiators is not None else "all initiators"
        print(f"target {t.iqn} (tpgt {t.tpgt}; {acl})")
        for lun in t.luns:
            where = lun.path if lun.store == "file" else "memory"
            size = _human(lun.size) if lun.size else "size of the file"
            print(f"  LUN {lun.lun}: {where}, {size}, {lun.block_size}-byte blocks, "
                  f"{lun.vendor}/{lun.product} serial {lun.serial}"
                  + (", read-only" if lun.read_only else ""))
            sc = lun.scheduler
            disk = (f", rotational {sc.disk.rpm} rpm, {sc.disk.average_seek_ms} ms seek"
                    if sc.disk else "")
            print(f"    task set: {sc.elevator}, dispatch depth {sc.dispatch_depth}, "
                  f"queue depth {sc.queue_depth}{disk}")
    return 0


def status_command(args: argparse.Namespace) -> int:
    import json

    from target.shell.control import ControlError, find_socket, render_status, request

    try:
        answer = request(find_socket(args.control), {"command": "status"})
    except ControlError as exc:
        print(f"scsi-target: {exc}", file=sys.stderr)
        return 2
    if not answer.get("ok"):
        print(f"scsi-target: {answer.get('error')}", file=sys.stderr)
        return 2
    print(json.dumps(answer, indent=2) if args.json else render_status(answer))
    return 0


def fault_command(args: argparse.Namespace) -> int:
    from target.shell.control import ControlError, find_socket, request

    if args.action == "add":
        rule: dict = {"action": args.fault_action}
        for key in ("target", "lun", "lba", "initiator", "every", "first", "sense"):
            value = getattr(args, key)
            if value is not None:
                rule[key] = value
        if args.op:
            rule["ops"] = args.op
        if args.once:
            rule["once"] = True
        if args.delay_ms is not None:
            rule["delay_ms"] = args.delay_ms
        req: dict = {"command": "fault-add", "rule": rule}
    elif args.action == "clear":
        req = {"command": "fault-clear", **({"id": args.id} if args.id is not None else {})}
    else:
        req = {"command": "fault-list"}
    try:
        answer = request(find_socket(args.control), req)
    except ControlError as exc:
        print(f"scsi-target: {exc}", file=sys.stderr)
        return 2
    if not answer.get("ok"):
        print(f"scsi-target: {answer.get('error')}", file=sys.stderr)
        return 2
    if args.action == "add":
        print(f"fault {answer['id']} added")
    elif args.action == "clear":
        print(f"{answer['cleared']} rule(s) cleared")
    else:
        for f in answer["faults"]:
            print(" ".join(f"{k}={v}" for k, v in f.items()))
    return 0


def image_command(args: argparse.Namespace) -> int:
    from images import illumos, linux

    force = ["--force"] if getattr(args, "force", False) else []
    if args.action == "releases":
        return illumos.main(["releases"])
    if args.action == "list":
        return linux.main(["list"]) | illumos.main(["list"])
    if args.guest == "linux":
        extra = [o for o in ("release", "from_path", "url", "sha256", "name", "user",
                             "password") if getattr(args, o) is not None]
        if extra:
            print(f"scsi-target: {', '.join('--' + o.replace('_path', '') for o in extra)}: "
                  "only for illumos (the Linux image is built from Debian packages)",
                  file=sys.stderr)
            return 2
        return linux.main(["build", *force])
    opts = [*force]
    for opt in ("release", "url", "sha256", "name", "user", "password"):
        if getattr(args, opt) is not None:
            opts += [f"--{opt}", getattr(args, opt)]
    if args.from_path is not None:
        opts += ["--from", str(args.from_path)]
    return illumos.main(["build", *opts])


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return serve(args)
        if args.command == "config":
            return config_command(args)
        if args.command == "trace":
            from target import trace

            try:
                if args.json or args.lines:
                    for rec in trace.read(args.file):
                        print(json.dumps(rec, separators=(",", ":")) if args.json
                              else trace.render(rec))
                else:
                    print(trace.summarize(args.file))
            except BrokenPipeError:
                return 0  # `| head`
            except trace.TraceError as exc:
                print(f"scsi-target: {exc}", file=sys.stderr)
                return 2
            return 0
        if args.command == "image":
            return image_command(args)
        if args.command == "opcodes":
            from target.scsi import listing
            from target.scsi.disk import DISK_COMMANDS

            print(listing.markdown(DISK_COMMANDS) if args.markdown
                  else listing.text(DISK_COMMANDS), end="" if args.markdown else "\n")
            return 0
        if args.command == "status":
            return status_command(args)
        if args.command == "fault":
            return fault_command(args)
        if args.command == "dump":
            from target.dump import inspect

            return inspect.main(args.source, args.extract, args.json, args.expand)
    except ConfigError as exc:
        print(f"scsi-target: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        what = exc.strerror or str(exc)
        if exc.filename:
            what = f"{exc.filename}: {what}"
        print(f"scsi-target: {what}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2


def _workers(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of processes or auto, not "
                                         f"{text!r}") from None


def _at_least_one(option: str, value: int) -> int:
    if value < 1:
        raise ConfigError(f"{option}: expected at least 1, not {value}")
    return value
