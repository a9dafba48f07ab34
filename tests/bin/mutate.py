#!/usr/bin/env python3
"""Stand-in mutator that does several things, in order, driven by argv.

Actions (paths are relative to the current directory):
  append PATH LINE     add LINE and a newline at the end of PATH
  write PATH TEXT      replace PATH with TEXT ("\\n" in TEXT becomes a newline)
  copy SRC DST         replace DST with the bytes of SRC
  rm PATH              delete PATH
  chmod PATH OCTAL     set PATH's mode
  mv SRC DST           rename SRC to DST
  ln TARGET PATH       replace PATH with a symbolic link to TARGET
  binary PATH          replace PATH with bytes that git sees as binary

Usage: mutate.py ACTION ARGS... [ACTION ARGS...]
"""

import os
import shutil
import sys
from pathlib import Path

ARITY = {"append": 2, "write": 2, "copy": 2, "rm": 1, "chmod": 2, "mv": 2, "ln": 2,
         "binary": 1}


def replace(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(path):
        path.unlink()
    return path


args = sys.argv[1:]
while args:
    action, rest = args[0], args[1:]
    if action not in ARITY or len(rest) < ARITY[action]:
        sys.exit(f"mutate.py: bad action at {args!r}")
    a, args = rest[: ARITY[action]], rest[ARITY[action]:]
    if action == "append":
        with open(a[0], "a", encoding="utf-8") as fh:
            fh.write(a[1] + "\n")
    elif action == "write":
        replace(Path(a[0])).write_text(a[1].replace("\\n", "\n"), encoding="utf-8")
    elif action == "copy":
        data = Path(a[0]).read_bytes()
        replace(Path(a[1])).write_bytes(data)
    elif action == "rm":
        os.unlink(a[0])
    elif action == "chmod":
        os.chmod(a[0], int(a[1], 8))
    elif action == "mv":
        Path(a[1]).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(a[0], a[1])
    elif action == "ln":
        os.symlink(a[0], replace(Path(a[1])))
    elif action == "binary":
        replace(Path(a[0])).write_bytes(b"\x00\x01\x02binary\xff\n")
