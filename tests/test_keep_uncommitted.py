"""A keep commit is HEAD plus the kept artifacts: when the user had uncommitted edits in
an artifact, the commit carries them too, and the record and the message say so."""

from __future__ import annotations

from conftest import Repo, default_task

NOTES = "tasks/demo/notes.md"


def test_the_keep_commit_says_it_carries_the_users_uncommitted_lines(repo: Repo,
                                                                      guarded) -> None:
    repo.write(NOTES, "first\nmine\nmine too\n")  # not committed
    rec = guarded().record
    assert rec["status"] == "keep"
    assert rec["diff_summary"] == "1 file changed, 1 insertion(+), 0 deletions(-)"
    assert rec["uncommitted_lines"] == 2 and rec["uncommitted_files"] == [NOTES]
    assert "uncommitted" not in rec["reason"]  # the reason is the decision's, as ever
    numstat = repo.git("show", "--numstat", "--format=", "HEAD").split()
    assert numstat[:2] == ["3", "0"]  # the user's two lines and the candidate's one
    message = repo.git("log", "-1", "--format=%B")
    assert (f"This commit also carries 2 uncommitted lines of yours ({NOTES}): they were "
            "in the working tree, uncommitted, when the run started") in message
    assert message.rstrip().splitlines()[-1].startswith("Loopengine-Baseline: ")
    assert repo.read(NOTES) == "first\nmine\nmine too\nmore\n"
    assert repo.git("status", "--porcelain") == ""


def test_a_keep_without_edits_of_the_users_says_nothing_of_them(repo: Repo) -> None:
    rec = repo.run().record
    assert (rec["status"], rec["uncommitted_lines"], rec["uncommitted_files"]) == (
        "keep", 0, [])
    assert "uncommitted" not in repo.git("log", "-1", "--format=%B")
    # A discard or a keep that makes no commit has nothing to say either.
    repo.write_task(default_task(policy__commit_on_keep=False))
    repo.commit("no commits")
    repo.write(NOTES, repo.read(NOTES) + "mine\n")
    rec = repo.run().record
    assert (rec["status"], rec["uncommitted_lines"], rec["commit"]) == ("keep", 0, None)
