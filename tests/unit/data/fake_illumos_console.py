"""A test double of an illumos serial console for the login dialog (unit tests only).

Prints a boot banner and "console login:", asks for a password when one is configured
(argv[1]; "" = none), says "Login incorrect" on a wrong one and asks again, then runs an
interactive /bin/sh with the prompt "# " as the real console would give root.
"""

import os
import sys

password = sys.argv[1] if len(sys.argv) > 1 else ""
print("SunOS Release 5.11 Version omnios-r151054 64-bit")
print("Hostname: omniosce")
while True:
    sys.stdout.write("\nomniosce console login: ")
    sys.stdout.flush()
    user = sys.stdin.readline().strip()
    if password:
        sys.stdout.write("Password: ")
        sys.stdout.flush()
        given = sys.stdin.readline().strip()
        if given != password or user != "root":
            print("Login incorrect")
            continue
    elif user != "root":
        print("Login incorrect")
        continue
    break
os.environ["PS1"] = "# "
os.execv("/bin/sh", ["sh", "-i"])
