"""scsi-target: a QEMU-attached SCSI target emulator.

An iSCSI target (RFC 7143) serving SCSI block devices (SPC-4/SBC-4) from Python, built
as sans-IO cores (target.iscsi, target.scsi) under one thin asyncio shell (target.shell.server).
"""

__version__ = "0.1.0"
