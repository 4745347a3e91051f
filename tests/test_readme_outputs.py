"""Every path the README's commands write inside a clone is named in the
command's comment ("writes ./X") and ignored by git (issue 25)."""
import os
import re
import shlex
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_commands():
    """(command tokens, comment) of each command of the README's bash blocks,
    continuation lines joined."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for cmd in re.sub(r"\\\n", " ", block).splitlines():
            code, _, comment = cmd.partition(" #")
            if code.strip():
                out.append((shlex.split(code), comment))
    return out


def written_paths(tokens):
    """The folders and files one command line writes (deepid2 and cmake)."""
    found = []
    for k, tok in enumerate(tokens):
        nxt = tokens[k + 1] if k + 1 < len(tokens) else None
        if (tok in ("--out", "-B") or tok == "--gallery" and "enroll" in tokens) and nxt:
            found.append(nxt)                   # identify's --gallery reads it
        elif tok == "synth" and tokens[k - 1] == "deepid2":
            found.append(nxt)
        elif tok == "align" and tokens[k - 1] == "deepid2":
            found.append(tokens[k + 2])
        elif tok == "demo" and tokens[k - 1] == "deepid2" and "--out" not in tokens:
            found.append("deepid2-demo")    # its default, ./deepid2-demo
    return found


WRITES = [(p.rstrip("/"), comment) for tokens, comment in readme_commands()
          for p in written_paths(tokens)]


def test_the_readme_names_what_its_commands_write():
    # the parser sees the commands of issue 25's list
    assert {"deepid2-demo", "faces", "lfw-aligned", "eval", "runs/a"} <= {p for p, _ in WRITES}


@pytest.mark.parametrize("path,comment", WRITES)
def test_each_written_path_is_in_the_comment_and_ignored(path, comment):
    shown = path if os.path.isabs(path) else "./" + path
    assert shown in comment, f"the README's comment does not say it writes {shown}: {comment!r}"
    if os.path.isabs(path) or path.startswith(".."):
        return                                   # outside the clone
    probe = path if "." in os.path.basename(path) else path + "/some-file"
    r = subprocess.run(["git", "check-ignore", "-q", probe], cwd=ROOT)
    assert r.returncode == 0, f"{path} (written by a README command) is not in .gitignore"
