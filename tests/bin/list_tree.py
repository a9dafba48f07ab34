#!/usr/bin/env python3
"""Stand-in mutator step: describe the sandbox as the step finds it, as JSON, in argv[1].

Every entry below the sandbox root (files with content hash and executable bit, links
with their target, folders, so empty ones show too) and what the steps' private git
repository says about itself.  Then appends argv[2] (if given) to notes.md in the cwd.
"""

import hashlib
import json
import os
import subprocess
import sys

root = os.environ["LOOPENGINE_SANDBOX"]
entries = {}
for folder, dirs, files in os.walk(root):
    rel_folder = os.path.relpath(folder, root)
    if rel_folder == ".":
        dirs[:] = [d for d in dirs if d != ".git"]
    for name in dirs + files:
        path = os.path.join(folder, name)
        rel = os.path.normpath(os.path.join(rel_folder, name))
        if os.path.islink(path):
            entries[rel] = "link:" + os.readlink(path)
        elif os.path.isdir(path):
            entries[rel] = "dir"
        else:
            with open(path, "rb") as fh:
                digest = hashlib.sha256(fh.read()).hexdigest()
            entries[rel] = ("x:" if os.access(path, os.X_OK) else "f:") + digest


def git(*args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                          check=False)
    return f"{proc.returncode}:{proc.stdout}"


report = {
    "entries": entries,
    "git_is_dir": os.path.isdir(os.path.join(root, ".git")),
    "status": git("status", "--porcelain", "--untracked-files=all"),
    "branches": git("for-each-ref", "--format=%(refname)"),
    "config": git("config", "--local", "--list"),
}
with open(sys.argv[1], "w") as fh:
    json.dump(report, fh, indent=1, sort_keys=True)
if len(sys.argv) > 2:
    with open("notes.md", "a") as fh:
        fh.write(sys.argv[2] + "\n")
