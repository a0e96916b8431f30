"""SAM-5 / SPC-4 / SBC-4: the SCSI side of the target, free of any I/O framework.

task     the unit of work handed over by a transport (ScsiTask, Nexus, LUN encoding)
sense    CheckCondition and the one place that turns it into sense data
commands the opcode-table machinery (Command, CommandSet)
lu       a logical unit: checks common to every command, then the table's handler
device   the SCSI target device: its LUs, and the LUN-level answers with no LU behind
spc/sbc  the command sets, as tables of handlers (with sanitize, defects, xcopy,
         logpages, vpd_sbc; disk joins them into DISK_COMMANDS)
ua, modepages, reservations, copyresults, taskset, tmf
         the LU's (and the device's) parts; elevator and extent below the task set
"""
