"""The last step before a container's command: runs inside the pod's netns.

The runner starts `ip netns exec <netns> unshare --uts python -I -S sandbox.py
<spec.json> <argv...>`. `ip netns exec` has already given this process a
private mount namespace (with the pod's hosts file over /etc/hosts) and
`unshare --uts` a private hostname, so here we set the pod's hostname, realise
the volume mounts as bind mounts that only this container sees, change to the
working dir and exec the command with the environment we were started with.
Standard library only: it runs with -I -S, whatever the pod's PYTHONPATH.
"""

import ctypes
import json
import os
import socket
import sys

MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384

START_ERROR_EXIT = 128


def _mount(source, target, flags):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(source.encode() if source else None, target.encode(), None, flags, None) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"mount {source} -> {target}: {os.strerror(errno)}")


def _bind(source, target, read_only):
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    elif not os.path.exists(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    _mount(source, target, MS_BIND | MS_REC)
    if read_only:
        _mount(None, target, MS_BIND | MS_REMOUNT | MS_RDONLY)


def main(argv):
    with open(argv[1], encoding="utf-8") as handle:
        spec = json.load(handle)
    command = argv[2:]
    try:
        if spec.get("hostname"):
            socket.sethostname(spec["hostname"])
        # Shorter targets first, so a mount at /a/b lands inside one at /a.
        for mount in sorted(spec.get("mounts", []), key=lambda m: m["target"].count("/")):
            _bind(mount["source"], mount["target"], mount.get("readOnly", False))
        os.chdir(spec.get("workingDir") or "/")
    except OSError as error:
        sys.stderr.write(f"volt node agent: cannot set up the container: {error}\n")
        return START_ERROR_EXIT
    finally:
        # The agent's host-dir lock: our mount targets are in use now.
        if spec.get("releaseFd") is not None:
            try:
                os.close(spec["releaseFd"])
            except OSError:
                pass
    try:
        os.execvp(command[0], command)
    except OSError as error:
        sys.stderr.write(f"volt node agent: exec {command[0]!r}: {error.strerror}\n")
        return START_ERROR_EXIT


if __name__ == "__main__":
    sys.exit(main(sys.argv))
