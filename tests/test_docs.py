"""The code blocks of README.md and docs/*.md, run at tiny settings, so the docs cannot rot.

Each page is one test, README.md first: its fenced blocks run in order, its Python blocks in one
namespace. All pages share one temporary working directory, as a reader's shell would, so a block may
read what an earlier one wrote (`runs/sv`); a page that reads a study also shows the command that makes
it, and a study command already run there with the same tiny flags is not run again (its folder is
there: this keeps the file to about a minute and a half on 2 cores). A block's info string says
what happens to it:

    python             executed, after PYTHON_TINY turns real settings into tiny ones
    bash               every line one of LINES; a `python -m studies.X` command runs as a subprocess
                       at tiny settings (`tiny`: the embedded data, 2 seeds, 1 epoch, no progress bars)
    bash flags-only    every `python -m studies.X` command's flags parsed by that study's own parser and
                       its archs checked by `flaxray.Study`; nothing trained (a run the suite cannot
                       afford, or one that needs data that is not in the repository)
    console, text      not run: output, or a command that is not a study's (a GPU install, a cluster's
                       srun, a benchmark, a server); the page says why in words

A failing block names its page and line.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))]
RUN, FLAGS, SKIP = "run", "flags-only", "skip"
FENCES = {"python": RUN, "bash": RUN, "bash flags-only": FLAGS, "console": SKIP, "text": SKIP}

# Python blocks: real settings -> tiny ones (regex, replacement).
PYTHON_TINY = [
    (r"seeds=tuple\(range\(\d+\)\)", "seeds=tuple(range(2))"),
    (r"epochs=\d+", "epochs=1"),
    (r"jnp\.arange\(\d+\)", "jnp.arange(2)"),
]

# Shell lines (after any `VAR=value` prefixes): what each may be, and what becomes of it.
LINES = [
    (r'pip install -e "\.\[dev\]" && (?P<rest>.+)', "rest"),  # installed already: the rest is a line of its own
    (r"python -m pytest -q", SKIP),  # the suite this test is part of
    (r"python -m flaxray\.runtime\.launch -n \d+ -- (?P<rest>python -m studies\..+)", FLAGS),  # the study's flags
    (r"python -m studies\.\w+( .+)?", RUN),
]
TRAINS = {"studies.seed_variance", "studies.architecture_search", "studies.cnn_vs_ann"}
CLI_TINY = {"--seeds": "2", "--epochs": "1"}  # replace (or join) the flags of every training command
RACE_TINY = {"--max-seeds": "2", "--round-seeds": "2", "--epochs": "1"}  # of a race (its seeds: --max-seeds)
DROP = {"--data", "--image-size", "--channels", "--data-dir"}  # data that is not in the repository
TIMEOUT_S = 300
_ran: set[tuple] = set()  # the training commands run so far in the shared directory, at tiny settings


@dataclass
class Block:
    page: str
    line: int  # of the block's first line of code, 1-based
    info: str
    code: str

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def blocks(page: str) -> list[Block]:
    """The fenced blocks of a page (fences may be indented, as in a list item)."""
    found, lines, i = [], (ROOT / page).read_text().splitlines(), 0
    while i < len(lines):
        m = re.match(r"( *)```(.*)$", lines[i])
        if not m:
            i += 1
            continue
        indent, info, start = len(m.group(1)), m.group(2).strip(), i + 1
        end = next(j for j in range(start, len(lines)) if lines[j].strip() == "```")
        code = "\n".join(line[indent:] for line in lines[start:end])
        found.append(Block(page, start + 1, info, code + "\n"))
        i = end + 1
    return found


def commands(code: str) -> list[str]:
    """A shell block's commands: continuation lines joined, comments and blank lines dropped."""
    out, joined = [], code.replace("\\\n", " ")
    for line in joined.splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line and not line.startswith("#"):
            out.append(" ".join(line.split()))
    return out


def tiny(module: str, argv: list[str]) -> list[str]:
    """The study's flags at tiny settings: no data outside the repository, 2 seeds, 1 epoch (the docs
    write flags as `--flag value`)."""
    trains = module in TRAINS and not {"--resume", "--replay"} & set(argv)
    drop = DROP | ({*CLI_TINY, *RACE_TINY} if trains else set())
    args, tokens = [], iter(argv)
    for token in tokens:
        if token in drop:
            next(tokens, None)  # and its value
        else:
            args.append(token)
    if trains:
        for flag, value in (RACE_TINY if "--race" in args else CLI_TINY).items():
            args += [flag, value]
    return args + ["--no-progress"] * (module != "studies.tensorboard")


def split_env(line: str) -> tuple[dict, str]:
    env = {}
    while m := re.match(r"([A-Z_][A-Z0-9_]*)=(\S+) (.*)", line):
        env[m.group(1)], line = m.group(2), m.group(3)
    return env, line


def check_flags(block: Block, line: str) -> None:
    """Parse a study command's flags with the study's own parser; its archs must be known names."""
    import flaxray

    module, *argv = shlex.split(line)[2:]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = importlib.import_module(module).parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{block.where}: {line}\n{err.getvalue()}", pytrace=False)
    archs = [*(getattr(args, "arch", None) or []), *[getattr(args, k) for k in ("cnn", "ann") if hasattr(args, k)]]
    if archs:
        flaxray.Study(archs=tuple(dict.fromkeys(archs)), seeds=(0,), epochs=1)


def run_command(block: Block, line: str, env: dict) -> None:
    module, *argv = shlex.split(line)[2:]
    argv = tiny(module, argv)
    key = (module, *argv, *sorted(env.items()))
    if key in _ran:
        return
    env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True, env=env,
                          timeout=TIMEOUT_S)
    if done.returncode != 0:
        pytest.fail(f"{block.where}: exit {done.returncode}\n  as written: {line}\n  as run: python -m {module} "
                    f"{shlex.join(argv)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}", pytrace=False)
    if module in TRAINS and "--out" in argv and not {"--resume", "--replay", "--overwrite"} & set(argv):
        _ran.add(key)


def run_shell(block: Block, mode: str) -> None:
    for line in commands(block.code):
        env, rest, action = {}, line, "rest"
        while action == "rest":
            more, rest = split_env(rest)
            env.update(more)
            m, action = next(((m, a) for p, a in LINES if (m := re.fullmatch(p, rest))), (None, None))
            if m is None:
                pytest.fail(f"{block.where}: not a command this harness runs: {line!r} (a `console` block, with "
                            "the reason in words, if it is not a study's)", pytrace=False)
            rest = m.groupdict().get("rest") or rest
        if action == SKIP:
            continue
        if FLAGS in (mode, action):
            check_flags(block, rest)
        else:
            run_command(block, rest, env)


def run_python(block: Block, namespace: dict) -> None:
    code = block.code
    for pattern, replacement in PYTHON_TINY:
        code = re.sub(pattern, replacement, code)
    # Padded so that a traceback gives the page's own line numbers.
    exec(compile("\n" * (block.line - 1) + code, block.page, "exec"), namespace)


@pytest.fixture(scope="module")
def shared_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("docs")
    (folder / "examples").symlink_to(ROOT / "examples")  # as a reader in the repository's root has it
    return folder


@pytest.mark.parametrize("page", PAGES)
def test_page(page, shared_dir, monkeypatch):
    monkeypatch.chdir(shared_dir)
    namespace = {"__name__": "__docs__"}
    for block in blocks(page):
        assert block.info in FENCES, f"{block.where}: fence info {block.info!r}; known: {sorted(FENCES)}"
        mode = FENCES[block.info]
        if mode == SKIP:
            continue
        try:
            if block.info == "python":
                run_python(block, namespace)
            else:
                run_shell(block, mode)
        except Exception as err:  # pytest.fail's messages name the block already; an error here gets a note
            err.add_note(f"in the `{block.info}` block at {block.where}")
            raise


def test_readme_is_short_and_holds_the_two_set_up_commands():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for command in ('pip install -e ".[dev]" && python -m studies.seed_variance --arch pyramid',
                    'pip install -e ".[dev]" && python -m pytest -q'):
        assert f"```bash\n{command}\n```" in readme, command
    assert 'pip install -e ".[dev]" && python -m pytest -q' in (ROOT / ".ci" / "run").read_text()


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file."""
    seen, out = {}, set()
    for heading in re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", path.read_text(), flags=re.S), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return out


def test_links_between_pages_resolve():
    readme = (ROOT / "README.md").read_text()
    for page in PAGES[1:]:
        assert f"({page})" in readme, f"README.md does not link {page}"
    for page in [*PAGES, "benchmarks/RESULTS.md"]:
        text = re.sub(r"```.*?```", "", (ROOT / page).read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            path = (ROOT / page).parent / file if file else ROOT / page
            assert path.exists(), f"{page}: link to {target}, which does not exist"
            assert not anchor or anchor in anchors(path), f"{page}: link to {target}: no such heading"


def test_the_cuda_extra_pins_the_same_jax():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    jax = next(d for d in project["dependencies"] if d.startswith("jax=="))
    assert project["optional-dependencies"]["cuda"] == [jax.replace("jax==", "jax[cuda12]==")]
