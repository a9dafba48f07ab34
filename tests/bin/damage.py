#!/usr/bin/env python3
"""Stand-in runner that leaves a mess in the sandbox for the next user of a reused one.

Tracked files edited (same size), deleted, made executable and replaced by a link;
untracked, ignored and runtime files; an empty folder; a nested repository; a ``.git``
inside a tracked folder; and changes to the steps' own repository.
"""

import os
import subprocess

root = os.environ["LOOPENGINE_SANDBOX"]


def write(rel: str, text: str) -> None:
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text)


def git(*args: str, cwd: str = root) -> None:
    subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=False)


with open(os.path.join(root, "README.md")) as fh:
    text = fh.read()
write("README.md", text.swapcase())  # same size: only the stat data tells
os.remove(os.path.join(root, "docs/remove-me.txt"))
os.chmod(os.path.join(root, "docs/plain.txt"), 0o755)
os.remove(os.path.join(root, "docs/becomes-link.txt"))
os.symlink("plain.txt", os.path.join(root, "docs/becomes-link.txt"))
write("junk.txt", "untracked\n")
write("newdir/sub/file.txt", "untracked, deep\n")
write("build/out.o", "ignored\n")
write("docs/cache.tmp", "ignored by a pattern\n")
write("work/leftover.txt", "runtime\n")
write(".venv/lib.py", "runtime\n")
os.makedirs(os.path.join(root, "emptydir", "inner"))
os.makedirs(os.path.join(root, "nested"))
git("init", "-q", cwd=os.path.join(root, "nested"))
write("nested/inside.txt", "in a nested repository\n")
os.makedirs(os.path.join(root, "docs", ".git"))
write("docs/.git/HEAD", "ref: refs/heads/main\n")
git("config", "user.name", "a step")
git("branch", "step-branch")
git("update-index", "--assume-unchanged", "README.md")
