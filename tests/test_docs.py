"""The documentation cannot rot: every runnable example of the README and the guides runs here,
and the docs site builds with ``mkdocs build --strict``.

An example is a fenced ``bash`` or ``python`` block directly under an HTML comment
``<!-- example -->`` (``<!-- example gpu -->``: needs CUDA, skipped without it;
``<!-- example timeout=N -->``: its own limit in seconds, default 240). The comment is invisible
on GitHub and on the site. Every ``bash``/``python`` block is an example, unless it sits under
``<!-- not-run: REASON -->`` (a recipe that needs the internet, a cluster or several machines):
the reason is required, so that nothing goes unrun by accident. A document's examples run in order, in one scratch folder that
holds links to the clone's top-level entries (``benchmarks/``, ``configs/``, ...): a user runs them from the
clone's root after the README's first command installed the package, and each document's
examples build on the ones above them, never on another document's.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
MARK = re.compile(r"^<!--\s*example(?P<opts>[^>]*)-->\s*$")
NOT_RUN = re.compile(r"^<!--\s*not-run:\s*(?P<why>\S.*?)\s*-->\s*$")
FENCE = re.compile(r"^```(?P<lang>\w*)\s*$")
DEFAULT_TIMEOUT = 240


@dataclass
class Example:
    doc: Path
    line: int
    lang: str
    code: str
    gpu: bool
    timeout: int

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}"


def parse_examples(path: Path) -> list[Example]:
    """The runnable blocks of one markdown file, in order; a marker not followed by a fence is an error."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        m = MARK.match(lines[i].strip())
        if not m:
            i += 1
            continue
        opts = m.group("opts").split()
        fence = FENCE.match(lines[i + 1]) if i + 1 < len(lines) else None
        if not fence or fence.group("lang") not in ("bash", "python"):
            raise ValueError(f"{path}:{i + 1}: an example marker must sit right above a ```bash or ```python block")
        end = next((j for j in range(i + 2, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            raise ValueError(f"{path}:{i + 2}: unclosed code block")
        timeout = next((int(o.split("=", 1)[1]) for o in opts if o.startswith("timeout=")), DEFAULT_TIMEOUT)
        out.append(Example(path, i + 2, fence.group("lang"), "\n".join(lines[i + 2:end]) + "\n", "gpu" in opts, timeout))
        i = end + 1
    return out


def _scratch(tmp: Path) -> Path:
    """A folder that looks like the clone's root to the examples, but whose outputs land in tmp."""
    for entry in REPO.iterdir():
        if entry.name.startswith(".") or entry.name in ("runs", "data", "build", "dist"):
            continue
        (tmp / entry.name).symlink_to(entry)
    return tmp


def _run(ex: Example, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    if ex.lang == "bash":
        cmd = ["bash", "-euo", "pipefail", "-c", ex.code]
    else:
        cmd = [sys.executable, "-c", ex.code]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=ex.timeout)


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover
        return False


DOCS_WITH_EXAMPLES = [d for d in DOCS if parse_examples(d)]


@pytest.mark.parametrize("doc", DOCS_WITH_EXAMPLES, ids=lambda d: str(d.relative_to(REPO)))
def test_examples_run(doc, tmp_path):
    """Each runnable block of ``doc`` in order; the first failure names the file and line."""
    cwd = _scratch(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTHONPATH")}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    ran = 0
    for ex in parse_examples(doc):
        if ex.gpu and not _cuda():
            continue
        proc = _run(ex, cwd, env)
        assert proc.returncode == 0, (f"{ex.where}: exit {proc.returncode}\n--- code\n{ex.code}--- stdout (end)\n"
                                      f"{proc.stdout[-2000:]}\n--- stderr (end)\n{proc.stderr[-3000:]}")
        ran += 1
    if ran == 0:
        pytest.skip(f"{doc.relative_to(REPO)}: every example needs a GPU")


def unmarked_blocks(path: Path) -> list[str]:
    """``file:line`` of each ``bash``/``python`` block that is neither an example nor not-run with a reason."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out, inside = [], False
    for i, line in enumerate(lines):
        if inside:
            inside = line.strip() != "```"
            continue
        m = FENCE.match(line)
        if not m:
            continue
        inside = True
        prev = lines[i - 1].strip() if i else ""
        if m.group("lang") in ("bash", "python", "sh", "shell", "console") and not (MARK.match(prev) or NOT_RUN.match(prev)):
            out.append(f"{path.relative_to(REPO)}:{i + 1}")
    return out


def test_every_code_block_runs_or_says_why_not():
    bad = [w for d in DOCS for w in unmarked_blocks(d)]
    assert not bad, "code blocks neither marked <!-- example --> nor <!-- not-run: reason -->: " + ", ".join(bad)


def test_every_guide_is_on_the_site():
    """A guide that is not in mkdocs.yml's nav is a page nobody finds (mkdocs only warns)."""
    nav = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    for doc in (REPO / "docs").rglob("*.md"):
        assert str(doc.relative_to(REPO / "docs")) in nav, f"{doc} is not in mkdocs.yml's nav"


def test_marker_parser_names_a_stray_marker(tmp_path):
    bad = tmp_path / "bad.md"
    bad.write_text("text\n<!-- example -->\nnot a fence\n")
    with pytest.raises(ValueError, match=r"bad.md:2: an example marker must sit right above"):
        parse_examples(bad)
    good = tmp_path / "good.md"
    good.write_text("<!-- example timeout=5 gpu -->\n```bash\necho hi\n```\n```bash\nnot marked\n```\n")
    (ex,) = parse_examples(good)
    assert (ex.lang, ex.code, ex.gpu, ex.timeout, ex.line) == ("bash", "echo hi\n", True, 5, 2)


def test_mkdocs_build_strict(tmp_path):
    """The site builds with no warning: a broken link, a page outside the nav, or an API name
    that mkdocstrings cannot find fails it. The built site is not committed."""
    assert shutil.which("mkdocs", path=os.path.dirname(sys.executable)), "mkdocs is missing: pip install -e '.[docs]'"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["NO_MKDOCS_2_WARNING"] = "1"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (tmp_path / "site" / "index.html").exists()
