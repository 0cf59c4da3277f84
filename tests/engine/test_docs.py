"""The documentation checks itself: reachable pages, working links, real commands, no internal words.

- every page under docs/ is reachable from docs/index.md by following links;
- every relative link in README.md and docs/ resolves to a file, and a `#anchor` on a
  Markdown page to one of its headings (GitHub's slugs);
- every `make <target>` in README.md and docs/ is a target of the Makefile;
- every `volt <subcommand> --flag` and `volt-run --flag` in a shell code block (or an
  inline command) is accepted by the command's own argparse parser, built by the code;
- every `volt-*` program in a shell block is a console script, every `python -m volt...`
  module exists, and every `python scripts/....py` file;
- no project-internal word appears in README.md, docs/, the CRD's descriptions or the chart.

No cluster. Importing the parsers imports volt, and with it torch (a few seconds).
"""
from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
import tomllib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Set, Tuple

import pytest

from volt.client.cli import build_parser as build_volt_parser
from volt.launch import build_parser as build_volt_run_parser

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
INDEX = DOCS / "index.md"

# Words a user has never heard of: where the project came from, files it does not have,
# who worked on it. Each word may still appear in the technical senses listed with it
# (an RNG seed, a pytest or process session, a helper pod or function); any other
# occurrence is reported with its file and line.
INTERNAL_WORDS: Dict[str, Tuple[str, ...]] = {
    "seed": (
        r"seed_everything", r"\w_seed\b", r"_SEED\b", r"volt/seed\.py", r"`seed`", r"`\.seed`", r"`--seed`",
        r"(base|sampler|same|fixed) seeds?\b", r"seeds? derive", r"seeded\b", r"seeds\.",
        r"the seed and the step", r"seed \d+", r"\bseed\d+", r"had it, seed\b", r"^\s*seed\)",
    ),
    "DESIGN.md": (),
    "/shared/": (),
    "session": (r"session (`\w+` )?fixture", r"end of the session", r"(new|own) session", r"sessions of their own"),
    "helper": (r"helper pod", r"(parsing|test) helpers", r"helpers under Lightning's names",
               r"called helpers"),
}

SHELL_INFO = {"", "sh", "bash", "shell", "console"}
SHELL_SEPARATORS = {"&&", "||", ";", "|", "then", "do", "(", "$("}


# --- reading Markdown ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    info: str
    text: str
    line: int  # first line of the block's content


def split_markdown(text: str) -> Tuple[List[Block], str]:
    """Fenced code blocks, and the prose with every fenced block blanked (line numbers kept)."""
    blocks: List[Block] = []
    prose: List[str] = []
    fence: Optional[str] = None
    info, start, body = "", 0, []  # type: Tuple[str, int, List[str]]
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.lstrip()
        if fence is None and stripped.startswith(("```", "~~~")):
            fence, info, start, body = stripped[:3], stripped[3:].strip().lower(), number + 1, []
            prose.append("")
        elif fence is not None and stripped.startswith(fence):
            blocks.append(Block(info, "\n".join(body), start))
            fence = None
            prose.append("")
        elif fence is not None:
            body.append(line)
            prose.append("")
        else:
            prose.append(line)
    return blocks, "\n".join(prose)


def inline_code(prose: str) -> Iterator[Tuple[int, str]]:
    """(line, text) of every `inline code` span of the prose."""
    for match in re.finditer(r"(`+)(.+?)\1", prose, flags=re.S):
        yield prose.count("\n", 0, match.start()) + 1, match.group(2).strip()


def links(prose: str) -> Iterator[Tuple[int, str]]:
    """(line, target) of every inline link of the prose, outside code spans."""
    without_code = re.sub(r"(`+).+?\1", lambda m: re.sub(r"[^\n]", " ", m.group(0)), prose, flags=re.S)
    for match in re.finditer(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", without_code):
        yield without_code.count("\n", 0, match.start()) + 1, match.group(1)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|__", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> Set[str]:
    _, prose = split_markdown(path.read_text())
    seen: Dict[str, int] = {}
    out: Set[str] = set()
    for line in prose.splitlines():
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            out.add(base if count == 0 else f"{base}-{count}")
    return out


def doc_files(repo: Path) -> List[Path]:
    return [repo / "README.md", *sorted((repo / "docs").rglob("*.md"))]


# --- the checks, as functions of a repository root (so a test can plant faults) -------------------


def broken_links(repo: Path) -> List[str]:
    problems = []
    anchor_cache: Dict[Path, Set[str]] = {}
    for path in doc_files(repo):
        _, prose = split_markdown(path.read_text())
        for line, target in links(prose):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            resolved = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(repo)}:{line}: {target}"
            if not resolved.exists():
                problems.append(f"{where}: no such file")
            elif anchor and resolved.suffix == ".md":
                found = anchor_cache.setdefault(resolved, anchors(resolved))
                if anchor not in found:
                    problems.append(f"{where}: no heading #{anchor} in {resolved.relative_to(repo)}")
    return problems


def unreachable_pages(repo: Path) -> List[str]:
    docs, index = repo / "docs", repo / "docs" / "index.md"
    seen, queue = {index.resolve()}, deque([index.resolve()])
    while queue:
        page = queue.popleft()
        _, prose = split_markdown(page.read_text())
        for _, target in links(prose):
            file_part = target.partition("#")[0]
            if not file_part or re.match(r"[a-z][a-z0-9+.-]*:", target):
                continue
            linked = (page.parent / file_part).resolve()
            if linked.suffix == ".md" and linked.is_file() and docs.resolve() in linked.parents and linked not in seen:
                seen.add(linked)
                queue.append(linked)
    return [str(p.relative_to(repo)) for p in sorted(docs.rglob("*.md")) if p.resolve() not in seen]


def makefile_targets(makefile: Path) -> Set[str]:
    targets: Set[str] = set()
    for line in makefile.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\- ]+?)\s*:(?![:=])", line)
        if match:
            targets.update(t for t in match.group(1).split() if not t.startswith("."))
        if line.startswith(".PHONY:"):
            targets.update(line.split(":", 1)[1].split())
    return targets


def code_texts(repo: Path) -> Iterator[Tuple[str, int, str, bool]]:
    """(file, line, code, is a shell block) for every fenced block and inline span."""
    for path in doc_files(repo):
        blocks, prose = split_markdown(path.read_text())
        name = str(path.relative_to(repo))
        for block in blocks:
            yield name, block.line, block.text, block.info in SHELL_INFO
        for line, code in inline_code(prose):
            yield name, line, code, False


def make_invocations(code: str) -> Iterator[Tuple[int, List[str]]]:
    """(line offset, arguments) of each `make` command in command position in a piece of shell
    (a line's start, after `&&`, `;`, `|` or `(`, or a backquote; after VAR=value assignments)."""
    pattern = r"(?:^|&&|\|\||;|\||\(|`)[ \t]*(?:[A-Za-z_][A-Za-z0-9_]*=\S*[ \t]+)*make((?:[ \t]+[^\s;&|)#`]+)*)"
    for match in re.finditer(pattern, code, flags=re.M):
        yield code.count("\n", 0, match.start(1)), match.group(1).split()


def unknown_make_targets(repo: Path) -> List[str]:
    targets = makefile_targets(repo / "Makefile")
    problems = []
    for name, line, code, _ in code_texts(repo):
        for offset, args in make_invocations(code):
            for arg in args:
                if "=" in arg or arg.startswith("-"):
                    continue  # VAR=value, -j2
                if arg not in targets:
                    problems.append(f"{name}:{line + offset}: make {arg}: no such target in the Makefile")
    return problems


def shell_commands(code: str) -> Iterator[List[str]]:
    """Token lists of the shell lines of a block: continuations joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", code)
    for raw in joined.splitlines():
        raw = re.sub(r"^\s*\$ ", "", raw)
        try:
            tokens = shlex.split(raw, comments=True)
        except ValueError:
            tokens = raw.split()
        yield tokens


def command_starts(tokens: List[str], names: Sequence[str]) -> Iterator[Tuple[str, List[str]]]:
    """(command name, the tokens after it) for each `volt`/`volt-run` in command position."""
    for index, token in enumerate(tokens):
        token = token.split("$(")[-1]
        previous = tokens[index - 1] if index else None
        in_position = previous is None or previous in SHELL_SEPARATORS or previous.endswith("$(") \
            or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", previous or "") is not None
        if token in names and in_position:
            yield token, tokens[index + 1:]
        if token == "volt.client" and previous == "-m":
            yield "volt", tokens[index + 1:]


def option_actions(parser: argparse.ArgumentParser) -> Dict[str, argparse.Action]:
    return {option: action for action in parser._actions for option in action.option_strings}


def subcommands(parser: argparse.ArgumentParser) -> Dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def check_arguments(parser: argparse.ArgumentParser, args: List[str], shown: str) -> List[str]:
    """Flags of `args` the parser does not know, walking as argparse would until the positional
    that starts a remainder (the training command) or the end of the command."""
    options = option_actions(parser)
    positionals = [a for a in parser._actions if not a.option_strings and a.nargs != argparse.SUPPRESS]
    problems = []
    index = 0
    while index < len(args):
        arg = args[index]
        if arg in SHELL_SEPARATORS or arg.startswith((">", "2>", ")")):
            break
        if arg == "--":
            break
        if arg.startswith("-") and len(arg) > 1 and not re.fullmatch(r"-\d+", arg):
            # `--a/--b` in prose names two flags
            found = [options.get(flag) for flag in arg.split("=", 1)[0].split("/")]
            problems += [f"{shown}: unknown flag {flag}"
                         for flag, action in zip(arg.split("=", 1)[0].split("/"), found) if action is None]
            if found[-1] is not None and found[-1].nargs != 0 and "=" not in arg:
                index += 1  # its value
            index += 1
            continue
        if not positionals or positionals[0].nargs == argparse.REMAINDER:
            break
        positionals.pop(0)
        index += 1
    return problems


def unknown_command_flags(repo: Path, volt: argparse.ArgumentParser, volt_run: argparse.ArgumentParser) -> List[str]:
    verbs = subcommands(volt)
    problems = []
    for name, line, code, is_shell in code_texts(repo):
        if not is_shell and not re.match(r"(volt|volt-run)\s", code):
            continue
        for tokens in shell_commands(code):
            for command, rest in command_starts(tokens, ("volt", "volt-run")):
                shown = f"{name}:{line}: {command} {' '.join(rest)}".strip()
                if command == "volt-run":
                    problems += check_arguments(volt_run, rest, shown)
                    continue
                if not rest or rest[0].startswith("-"):
                    problems += check_arguments(volt, rest, shown)
                    continue
                verb = rest[0]
                if verb not in verbs:
                    if re.fullmatch(r"[a-z]+", verb):
                        problems.append(f"{shown}: unknown subcommand {verb}")
                    continue
                problems += check_arguments(verbs[verb], rest[1:], shown)
    return problems


def console_scripts(repo: Path) -> Set[str]:
    with open(repo / "pyproject.toml", "rb") as f:
        return set(tomllib.load(f)["project"]["scripts"])


def unknown_programs(repo: Path, scripts: Set[str]) -> List[str]:
    """In shell blocks: `volt-*` programs that are not console scripts, `python -m` modules that do
    not exist, `python <path>.py` files of the repository that do not exist."""
    problems = []
    for name, line, code, is_shell in code_texts(repo):
        if not is_shell:
            continue
        for tokens in shell_commands(code):
            for index, token in enumerate(tokens):
                token = token.split("$(")[-1]
                previous = tokens[index - 1] if index else None
                if re.fullmatch(r"volt-[\w-]+", token) and (previous is None or previous in SHELL_SEPARATORS):
                    if token not in scripts:
                        problems.append(f"{name}:{line}: {token}: not a console script of pyproject.toml")
                if previous == "-m" and index >= 2 and re.fullmatch(r"python3?", tokens[index - 2]):
                    if re.fullmatch(r"(volt|volt_operator)(\.\w+)*", token) and importlib.util.find_spec(token) is None:
                        problems.append(f"{name}:{line}: python -m {token}: no such module")
                if re.fullmatch(r"python3?", previous or "") and re.fullmatch(r"(scripts|bench|tests)/[\w/.-]+\.py", token):
                    if not (repo / token).is_file():
                        problems.append(f"{name}:{line}: python {token}: no such file")
    return problems


def user_facing_texts(repo: Path) -> Iterator[Tuple[str, str]]:
    for path in doc_files(repo):
        yield str(path.relative_to(repo)), path.read_text()
    crd_files = sorted((repo / "crds").glob("*.yaml")) + sorted((repo / "charts").rglob("*"))
    for path in crd_files:
        if path.is_file() and path.suffix in {".yaml", ".yml", ".json", ".txt", ".tpl", ".md"}:
            yield str(path.relative_to(repo)), path.read_text()


def missing_doc_paths(repo: Path) -> List[str]:
    """`docs/<page>.md` named in plain text (README, docs, CRD, chart) that does not exist."""
    problems = []
    for name, text in user_facing_texts(repo):
        for number, line in enumerate(text.splitlines(), 1):
            for path in re.findall(r"(?<![\w./-])docs/[\w./-]*?\.md\b", line):
                if not (repo / path).is_file():
                    problems.append(f"{name}:{number}: {path} does not exist")
    return problems


def internal_words(repo: Path) -> List[str]:
    problems = []
    for name, text in user_facing_texts(repo):
        for number, line in enumerate(text.splitlines(), 1):
            for word, technical in INTERNAL_WORDS.items():
                for match in re.finditer(re.escape(word), line, flags=re.I):
                    if word.isalpha() and match.start() > 0 and re.match(r"\w", line[match.start() - 1]):
                        continue  # part of a longer name: model_helpers, VOLT_CHAOS_SEED
                    if any(re.search(pattern, line, flags=re.I) for pattern in technical):
                        continue
                    problems.append(f"{name}:{number}: {word!r} in {line.strip()[:160]!r}")
    return problems


# --- the tests --------------------------------------------------------------------------------------


def test_every_docs_page_is_reachable_from_the_index() -> None:
    assert unreachable_pages(REPO) == []


def test_the_readme_links_the_index() -> None:
    _, prose = split_markdown((REPO / "README.md").read_text())
    assert "docs/index.md" in [target for _, target in links(prose)]


def test_every_relative_link_resolves() -> None:
    assert broken_links(REPO) == []


def test_every_make_target_exists() -> None:
    assert unknown_make_targets(REPO) == []


def test_every_volt_and_volt_run_flag_exists() -> None:
    assert unknown_command_flags(REPO, build_volt_parser(), build_volt_run_parser()) == []


def test_every_console_script_module_and_script_exists() -> None:
    assert unknown_programs(REPO, console_scripts(REPO)) == []


def test_every_docs_path_named_in_text_exists() -> None:
    assert missing_doc_paths(REPO) == []


def test_no_internal_words() -> None:
    assert internal_words(REPO) == []


def test_the_checks_find_what_they_look_for(tmp_path: Path) -> None:
    """Each check reports a planted fault: a broken link and anchor, an orphan page, a missing make
    target, an unknown subcommand and flags, an unknown program, module or script, an internal word,
    a named page that does not exist."""
    (tmp_path / "docs" / "how-to").mkdir(parents=True)
    (tmp_path / "Makefile").write_text(".PHONY: demo\ndemo: setup\n\t@true\nsetup:\n\t@true\n")
    (tmp_path / "README.md").write_text("See [the docs](docs/index.md) and `make demo`.\n")
    (tmp_path / "docs" / "index.md").write_text(
        "# Index\n\n[Ok](how-to/a.md#two-words) [Gone](missing.md) [Bad anchor](how-to/a.md#nope)\n\n"
        "```\nmake demo && make deploy\nvolt logs job --rank 1 --colour\nvolt-run --nproc-per-node 2 python x.py --lr 1\n"
        "volt-run --nodes 2 python x.py\nvolt frobnicate job\nvolt-train x\npython -m volt.no_such_module\npython scripts/gone.py\n```\n\nThe seed's names, see docs/gone.md.\n")
    (tmp_path / "docs" / "how-to" / "a.md").write_text("# Two `words`\n\nBack to [index](../index.md).\n")
    (tmp_path / "docs" / "orphan.md").write_text("# Nobody links here\n")

    assert broken_links(tmp_path) == [
        "docs/index.md:3: missing.md: no such file",
        "docs/index.md:3: how-to/a.md#nope: no heading #nope in docs/how-to/a.md",
    ]
    assert unreachable_pages(tmp_path) == ["docs/orphan.md"]
    assert unknown_make_targets(tmp_path) == ["docs/index.md:6: make deploy: no such target in the Makefile"]
    flags = unknown_command_flags(tmp_path, build_volt_parser(), build_volt_run_parser())
    assert [p.rsplit(": ", 1)[1] for p in flags] == [
        "unknown flag --colour", "unknown flag --nodes", "unknown subcommand frobnicate",
    ]
    assert [p.split(": ")[0] for p in internal_words(tmp_path)] == ["docs/index.md:16"]
    assert missing_doc_paths(tmp_path) == ["docs/index.md:16: docs/gone.md does not exist"]
    assert [p.split(": ", 1)[1] for p in unknown_programs(tmp_path, {"volt", "volt-run"})] == [
        "volt-train: not a console script of pyproject.toml",
        "python -m volt.no_such_module: no such module",
        "python scripts/gone.py: no such file",
    ]
