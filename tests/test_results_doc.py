"""docs/results.md and the benchmarks that write it.

The writer replaces only its own section; every ``## `` section of docs/results.md names the
command that produced it; every command it names exists and its arguments parse with that
command's own parser (``build_parser()`` of a benchmark script, ``neuralpath.cli.build_parser()``
for ``neuralpath ...``), without running anything.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import re
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "results.md"
BENCHMARKS = ROOT / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
from _common import command_line, write_section  # noqa: E402

# Benchmark scripts other engineers own that may not have a ``build_parser()`` yet: their
# commands are still parsed (by intercepting ``parse_args`` in their ``main``), and the missing
# builder is reported as an xfail naming the script, never skipped silently.
BUILD_PARSER_PENDING: set[str] = set()
ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def test_write_section_replaces_only_its_own_section(tmp_path: Path) -> None:
    doc = tmp_path / "results.md"
    doc.write_text("# Results\n\n## A\n\nold a\n\n## B\n\nkeep b\n")
    write_section(doc, "## A\n\nnew a\n")
    assert doc.read_text() == "# Results\n\n## A\n\nnew a\n\n## B\n\nkeep b\n"
    write_section(doc, "## B\n\nnew b")
    write_section(doc, "## C\n\nc")
    assert doc.read_text() == "# Results\n\n## A\n\nnew a\n\n## B\n\nnew b\n\n## C\n\nc\n"
    write_section(tmp_path / "new.md", "## A\n\na")
    assert (tmp_path / "new.md").read_text() == "# Results\n\n## A\n\na\n"
    with pytest.raises(ValueError, match="heading"):
        write_section(doc, "no heading")


# ---------------------------------------------------------------------------------------------
# Reading the document


def sections(text: str) -> list[tuple[str, str]]:
    """``(heading, body)`` of every ``## `` section (headings inside code fences do not count)."""
    found: list[tuple[str, list[str]]] = []
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if not fenced and line.startswith("## "):
            found.append((line[3:].strip(), [line]))
        elif found:
            found[-1][1].append(line)
    return [(heading, "\n".join(lines)) for heading, lines in found]


def code_spans(body: str) -> list[str]:
    """Every fenced code line (backslash continuations joined) and every inline code span
    (which may wrap over lines), whitespace normalised."""
    spans: list[str] = []
    outside: list[str] = []
    fenced, pending = False, ""
    for line in body.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            outside.append(line)
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        spans.append(pending)
        pending = ""
    spans += re.findall(r"(?<!`)`([^`]+)`(?!`)", "\n".join(outside))
    return [" ".join(span.split()) for span in spans if span.strip()]


@dataclass
class Command:
    """A command the document names: ``kind`` is ``script`` (``benchmarks/X.py``), ``module``
    (``python -m X`` or ``neuralpath ...``) or ``make``; ``target`` the script, module or make
    target; ``args`` what follows it."""

    text: str
    kind: str
    target: str
    args: list[str] = field(default_factory=list)


def parse_command(span: str) -> Command | None:
    """The command ``span`` runs, or ``None`` when it is not a command (a path, a name, ...).

    Leading ``VAR=value`` assignments, ``nice``, a ``python``/``.venv/bin/python`` interpreter
    and a ``torchrun`` launcher with its options are skipped; ``# ...`` comments dropped."""
    try:
        words = shlex.split(span, comments=True)
    except ValueError:
        return None
    while words and (ENV.match(words[0]) or words[0] == "nice"):
        words = words[1:]
    if not words:
        return None
    head = Path(words[0]).name
    if head == "make" and len(words) > 1:
        return Command(span, "make", words[1], words[2:])
    if head == "neuralpath":
        return Command(span, "module", "neuralpath", words[1:])
    if re.fullmatch(r"python(3(\.\d+)?)?|torchrun", head):
        rest = words[1:]
        if head == "torchrun":  # launcher options up to -m
            while rest and rest[0] != "-m":
                rest = rest[1:]
        if len(rest) >= 2 and rest[0] == "-m":
            return Command(span, "module", rest[1], rest[2:])
        if rest and rest[0].endswith(".py"):
            return Command(span, "script", rest[0], rest[1:])
    return None


def document_commands() -> list[tuple[str, Command]]:
    return [
        (heading, command)
        for heading, body in sections(DOC.read_text())
        for command in map(parse_command, code_spans(body))
        if command is not None
    ]


# ---------------------------------------------------------------------------------------------
# Parsing a command's arguments with its own parser, running nothing


class _Parsed(Exception):
    """Raised in place of running a ``main`` once its arguments have parsed."""


def load_script(path: Path) -> ModuleType:
    """Import a benchmark script by path (its ``main`` does not run: no ``__main__``)."""
    name = f"_benchmark_{path.stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def parse_with_entry(
    entry: Callable[..., object], prog: str, args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parse ``args`` by calling ``entry`` (a ``main``/``run`` without a parser builder) with
    ``ArgumentParser.parse_args`` patched to stop right after parsing."""
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):  # noqa: ANN001, ANN202
        raise _Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [prog, *args])
    try:
        if inspect.signature(entry).parameters:
            entry(args)
        else:
            entry()
    except _Parsed:
        return
    except SystemExit as exc:
        pytest.fail(f"`{prog} {shlex.join(args)}`: its arguments do not parse (exit {exc.code})")
    pytest.fail(f"{prog}: its entry point returned without parsing its arguments")


def check_parses(parser: argparse.ArgumentParser, args: list[str], text: str) -> None:
    try:
        parser.parse_args(args)
    except SystemExit as exc:
        pytest.fail(f"`{text}`: its arguments do not parse (exit {exc.code})")


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def check_neuralpath(command: Command) -> None:
    """``neuralpath COMMAND ...``: a full invocation parses; a bare ``neuralpath COMMAND`` (a
    mention) and ``neuralpath a/b --option`` (an option shared by several commands) name
    commands and options that exist."""
    from neuralpath.cli import build_parser

    parser = build_parser()
    commands = subcommands(parser)
    if not command.args:
        pytest.fail(f"`{command.text}` names no neuralpath command")
    names = command.args[0].split("/")
    missing = [name for name in names if name not in commands]
    assert not missing, f"`{command.text}`: no neuralpath command {', '.join(missing)}"
    if len(names) > 1:
        for name in names:
            known = {o for a in commands[name]._actions for o in a.option_strings}
            options = [w.split("=")[0] for w in command.args[1:] if w.startswith("--")]
            unknown = [o for o in options if o not in known]
            assert not unknown, f"`{command.text}`: neuralpath {name} has no {unknown}"
    elif len(command.args) > 1:
        check_parses(parser, command.args, command.text)


def check_script(command: Command, monkeypatch: pytest.MonkeyPatch) -> None:
    path = ROOT / command.target
    assert path.parent == BENCHMARKS and path.is_file(), f"`{command.text}`: no {command.target}"
    module = load_script(path)
    if hasattr(module, "build_parser"):
        check_parses(module.build_parser(), command.args, command.text)
    else:
        parse_with_entry(module.main, path.name, command.args, monkeypatch)


def check_module(command: Command, monkeypatch: pytest.MonkeyPatch) -> None:
    if command.target == "neuralpath":
        check_neuralpath(command)
        return
    assert command.target.startswith("neuralpath."), f"`{command.text}`: not ours"
    module = importlib.import_module(command.target)
    if hasattr(module, "build_parser"):
        check_parses(module.build_parser(), command.args, command.text)
        return
    entry = getattr(module, "main", None) or getattr(module, "run", None)
    assert entry is not None, f"`{command.text}`: {command.target} has no main/run"
    parse_with_entry(entry, command.target, command.args, monkeypatch)


def check_make(command: Command) -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(rf"^{re.escape(command.target)}\s*:", makefile, re.M), (
        f"`{command.text}`: no make target {command.target!r}"
    )


# ---------------------------------------------------------------------------------------------
# The tests


def test_every_section_names_its_command() -> None:
    found = sections(DOC.read_text())
    assert found, "docs/results.md has no ## sections"
    without = [
        heading
        for heading, body in found
        if not any(parse_command(span) is not None for span in code_spans(body))
    ]
    assert not without, f"sections naming no command in backticks: {without}"


@pytest.mark.parametrize(
    "heading, command",
    document_commands(),
    ids=lambda value: value.text[:60] if isinstance(value, Command) else value[:40],
)
def test_section_command_exists_and_parses(
    heading: str, command: Command, monkeypatch: pytest.MonkeyPatch
) -> None:
    if command.kind == "script":
        check_script(command, monkeypatch)
    elif command.kind == "module":
        check_module(command, monkeypatch)
    else:
        check_make(command)


SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_builds_its_parser_without_running(name: str) -> None:
    module = load_script(BENCHMARKS / name)
    if not hasattr(module, "build_parser"):
        if name in BUILD_PARSER_PENDING:
            pytest.xfail(f"benchmarks/{name} has no build_parser() yet (its owner is to add it)")
        pytest.fail(f"benchmarks/{name} has no build_parser()")
    parser = module.build_parser()
    assert isinstance(parser, argparse.ArgumentParser)
    assert parser.format_help()
    parser.parse_args([])  # the defaults parse


def test_the_parser_of_the_document_is_strict() -> None:
    # the helpers themselves: prefixes are stripped, non-commands are not taken for commands
    text = (
        "## A\n\nCommand: `OMP_NUM_THREADS=1 nice .venv/bin/python benchmarks/x.py --a 1`, "
        "`runs/vgg11-fmnist`, `neuralpath: error:`, `neuralpath.io.state_digest`, `neuralpath\n"
        "train --out d`.\n\n```bash\nneuralpath find --checkpoint c \\\n    --limit 5  # note\n"
        "torchrun --nproc_per_node=2 -m neuralpath extract --out s\nmake demo\n```\n\n## B\n\nnone\n"
    )
    found = sections(text)
    assert [h for h, _ in found] == ["A", "B"]
    commands = [c for c in map(parse_command, code_spans(found[0][1])) if c is not None]
    assert [(c.kind, c.target, c.args) for c in commands] == [
        ("module", "neuralpath", ["find", "--checkpoint", "c", "--limit", "5"]),
        ("module", "neuralpath", ["extract", "--out", "s"]),
        ("make", "demo", []),
        ("script", "benchmarks/x.py", ["--a", "1"]),
        ("module", "neuralpath", ["train", "--out", "d"]),
    ]
    assert not [c for c in map(parse_command, code_spans(found[1][1])) if c is not None]
    assert command_line("benchmarks/x.py", ["--a", "b c"], env="OMP_NUM_THREADS=1") == (
        "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/x.py --a 'b c'"
    )
