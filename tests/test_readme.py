"""Keep README.md and docs/ honest, cheaply (a few seconds on a CPU): their code blocks, commands and links.

Rules (what an edit of README.md or a docs/ page must respect; "the README" below means each of them):

* Every ```python block is compiled, its `import`/`from ... import` lines must resolve, and every call it makes to a
  fastat function or class must bind to that callable's signature (keywords that go to ``**kw`` of `fit`, `Trainer`
  and `sweep` must be `TrainConfig` fields; `build_method("name", ...)` keywords must be that method's parameters).
* A ```python block is also executed (in a temporary working directory, on the CPU) unless it contains a line
  ``# readme-test: skip (why)``: put that marker in blocks that are fragments, need a GPU, data other than the
  embedded Fashion-MNIST, or more than a second or two of work.
* Every ``--flag`` written after ``fastat <command>`` (code blocks and inline code, ``torchrun ... -m fastat <command>``
  too) must be an option of that command's parser (`fastat.cli.build_parser`), and every ``--flag`` anywhere in the
  README must belong to some fastat command unless it is in `EXTERNAL_FLAGS` (other tools' flags).
* ``--flag a|b|c`` value lists must be values the flag accepts.
* ``fastat.x.y`` names, ``python -m`` modules and repository paths (``bench/...``, ``.ci/...``) in code must exist;
  output file names the README promises (``metrics.jsonl``, ``eval.json``, ...) must appear in the sources.
* Relative links ``[text](path)`` must point at files that exist; docs/cli.md must be what
  ``python -m fastat.cli_reference`` generates now; the README stays short (``README_MAX_LINES``).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import inspect
import os
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# the pages checked (docs/results/ holds measured results, whose commands are bench scripts': links only there)
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
RESULTS = sorted((ROOT / "docs" / "results").glob("*.md"))
README_MAX_LINES = 150
SKIP_MARK = re.compile(r"#\s*readme-test:\s*skip\b")
EXTERNAL_FLAGS = {"--no-build-isolation", "--nproc_per_node", "--benchmark-only",  # pip, torchrun, pytest-benchmark
                  "--early-stop"}  # locuslab/fast_adversarial (WONG), named where fastat mirrors it
FLAG = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*")
# `fastat <cmd>` / `python -m fastat <cmd>` / `torchrun ... -m fastat <cmd>`; "bench ops" is a nested command.
COMMAND = re.compile(r"(?<![\w./-])fastat\s+(bench\s+ops|train|sweep|eval|plot|info)\b")


def _text() -> str:
    return "\n".join(doc.read_text(encoding="utf-8") for doc in DOCS)


def _fenced(lang: str | None = None) -> list[tuple[str, str, str]]:
    """(file:line, language, body) of every fenced block (of ``lang`` when given)."""
    out = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.DOTALL | re.MULTILINE):
            if lang is None or m.group(1) == lang:
                where = f"{doc.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}"
                out.append((where, m.group(1), m.group(2)))
    return out


def _inline_code() -> list[str]:
    """Inline code spans outside fenced blocks (a span may wrap onto the next line)."""
    prose = re.sub(r"^```.*?^```", "", _text(), flags=re.DOTALL | re.MULTILINE)
    return re.findall(r"`([^`]+)`", prose)


def _code_snippets() -> list[str]:
    """Every piece of code in the README: the lines of the non-python fenced blocks (joined over trailing
    backslashes) and the inline spans."""
    out = []
    for _, lang, body in _fenced():
        if lang != "python":
            out += body.replace("\\\n", " ").splitlines()
    return out + [" ".join(s.split()) for s in _inline_code()]


def _python_blocks() -> list[Any]:
    return [pytest.param(body, id=where) for where, _, body in _fenced("python")]


# --------------------------------------------------------------------------------------------- CLI flags
@pytest.fixture(scope="module")
def parsers() -> dict[str, argparse.ArgumentParser]:
    """{"train": parser, "bench ops": parser, ...} from the real `fastat` command line."""
    from fastat.cli import build_parser

    def subs(parser):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                return action.choices
        return {}

    out = {}
    for name, sub in subs(build_parser()).items():
        out[name] = sub
        for inner, sub2 in subs(sub).items():
            out[f"{name} {inner}"] = sub2
    return out


def _command_flags() -> list[tuple[str, str, str]]:
    """(command, flag, snippet) for each --flag written after `fastat <command>` in a code line; a later
    `fastat <command>` on the same line (e.g. "[fastat train flags]") starts a new segment, a `#` ends it."""
    found = []
    for snippet in _code_snippets():
        code = re.split(r"\s#\s", snippet, maxsplit=1)[0]
        hits = list(COMMAND.finditer(code))
        for i, m in enumerate(hits):
            end = hits[i + 1].start() if i + 1 < len(hits) else len(code)
            cmd = " ".join(m.group(1).split())
            found += [(cmd, flag, snippet) for flag in FLAG.findall(code[m.end():end])]
    return found


def test_readme_mentions_commands():
    cmds = {cmd for cmd, _, _ in _command_flags()}
    assert {"train", "sweep", "eval", "bench ops"} <= cmds, cmds  # the extraction itself still works


def test_command_flags_exist(parsers):
    bad = [f"fastat {cmd} {flag}   (in: {snippet[:90]!r})" for cmd, flag, snippet in _command_flags()
           if flag not in parsers[cmd]._option_string_actions]
    assert not bad, "README flags that the command does not take:\n" + "\n".join(bad)


def test_every_flag_belongs_to_some_command(parsers):
    known = set(EXTERNAL_FLAGS).union(*(p._option_string_actions for p in parsers.values()))
    bad = sorted(set(FLAG.findall(_text())) - known)
    assert not bad, f"README flags no fastat command takes (add other tools' flags to EXTERNAL_FLAGS): {bad}"


def test_flag_value_lists(parsers):
    """`--flag a|b|c` (also `--flag [a|b]`): each value must be one the flag accepts."""
    from fastat.models import MODELS
    from fastat.train.config import COMPILE_MODES

    extra = {"--model": set(MODELS), "--compile": set(COMPILE_MODES)}
    bad = []
    for snippet in _code_snippets():
        for flag, values in re.findall(r"(--[\w-]+)\s+\[?([\w.+:-]+(?:\|[\w.+:-]+)+)", snippet):
            if flag == "--device":  # cpu|cuda|cuda:N is a pattern, not a list
                continue
            allowed = extra.get(flag)
            if allowed is None:
                actions = [p._option_string_actions[flag] for p in parsers.values() if flag in p._option_string_actions]
                choices = [set(a.choices) for a in actions if a.choices]
                if not choices:
                    bad.append(f"{flag}: README lists {values} but the parser has no choices")
                    continue
                allowed = set.union(*choices)
            bad += [f"{flag} {v} (accepts {sorted(allowed)})" for v in values.split("|") if v not in allowed]
    assert not bad, "\n".join(bad)


# --------------------------------------------------------------------------------------------- Python blocks
def _resolve(node: ast.AST, env: dict[str, Any]) -> Any:
    if isinstance(node, ast.Name):
        return env.get(node.id)
    if isinstance(node, ast.Attribute):
        base = _resolve(node.value, env)
        return getattr(base, node.attr, None) if base is not None else None
    return None


def _imports(tree: ast.AST) -> dict[str, Any]:
    """Names bound by the block's imports (each import must work)."""
    env: dict[str, Any] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                module = importlib.import_module(alias.name)  # `import a.b` binds a; `import a.b as c` binds a.b
                top = alias.name.split(".")[0]
                env[alias.asname or top] = module if alias.asname else importlib.import_module(top)
        elif isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"README imports {alias.name} from {node.module}, which has none"
                env[alias.asname or alias.name] = getattr(module, alias.name)
    return env


def _check_call(node: ast.Call, fn: Any) -> str | None:
    """None when the call binds to ``fn``'s signature, else what is wrong."""
    if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
        return None
    from fastat.methods import METHODS, build_method
    from fastat.train import TrainConfig, Trainer, fit, sweep

    sig = inspect.signature(fn)
    kws = {k.arg: None for k in node.keywords}
    try:
        sig.bind(*([None] * len(node.args)), **kws)
    except TypeError as exc:
        return str(exc)
    named = set(sig.parameters)
    spill = set(kws) - named
    if fn in (fit, Trainer, sweep):
        wrong = spill - set(TrainConfig.__dataclass_fields__)
        return f"not TrainConfig fields: {sorted(wrong)}" if wrong else None
    if fn is build_method and node.args and isinstance(node.args[0], ast.Constant):
        cls = METHODS.get(str(node.args[0].value))
        if cls is not None:
            wrong = spill - set(inspect.signature(cls).parameters)
            return f"not {cls.__name__} parameters: {sorted(wrong)}" if wrong else None
    return None


@pytest.mark.parametrize("body", _python_blocks())
def test_python_block_api(body):
    tree = ast.parse(body)
    env = _imports(tree)
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            fn = _resolve(node.func, env)
            if callable(fn) and str(getattr(fn, "__module__", "")).startswith("fastat"):
                problem = _check_call(node, fn)
                if problem:
                    bad.append(f"{ast.unparse(node)[:100]}: {problem}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("body", _python_blocks())
def test_python_block_runs(body, tmp_path, monkeypatch):
    if SKIP_MARK.search(body):
        pytest.skip("marked '# readme-test: skip'")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FASTAT_BACKEND", raising=False)
    exec(compile(body, str(README), "exec"), {"__name__": "readme_block"})  # noqa: S102 - the README's own code


# --------------------------------------------------------------------------------------------- names and files
def test_dotted_fastat_names_exist():
    """`fastat.ops.available_backends()`, `python -m fastat.info`, `fastat.train.sweep(...)`: each resolves."""
    names = set()
    for snippet in _code_snippets() + [body for _, _, body in _fenced("python")]:
        names.update(re.findall(r"(?<![\w.])fastat(?:\.[A-Za-z_]\w*)+", snippet))
    bad = []
    for name in sorted(names):
        parts = name.split(".")
        for i in range(len(parts), 0, -1):  # the longest importable prefix, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            for attr in parts[i:]:
                obj = getattr(obj, attr, None)
            if obj is None:
                bad.append(name)
            break
    assert not bad, f"README names that do not exist: {bad}"


def test_python_m_modules_exist():
    mods = {m for s in _code_snippets() for m in re.findall(r"python\s+-m\s+([\w.]+)", s)} - {"pip", "pytest"}
    missing = [m for m in sorted(mods) if importlib.util.find_spec(m) is None]
    assert not missing, f"README's `python -m` modules that cannot be found: {missing}"


def test_repository_paths_exist():
    paths = set()
    for snippet in _code_snippets() + [body for _, _, body in _fenced("")]:
        paths.update(re.findall(r"(?<![\w./])((?:\.ci|bench|scripts|tests|csrc|python|fastat_kernels)/[\w./-]*\w)",
                                snippet))
    missing = [p for p in sorted(paths) if not (ROOT / p).exists()]
    assert not missing, f"README paths that are not in the repository: {missing}"


def test_promised_output_files_are_written_somewhere():
    """A cheap guard: each output file name in the README's code appears in the sources that write it."""
    names = {m for s in _code_snippets() for m in re.findall(r"[\w-]+\.(?:jsonl|json|csv|png|pt|md)\b", s)}
    names -= {"README.md", "methods.md", "gpu-baseline.md"}  # docs, not outputs
    sources = "\n".join(p.read_text(encoding="utf-8", errors="replace")
                        for folder in ("python/fastat", "scripts", "bench") for p in (ROOT / folder).rglob("*")
                        if p.suffix in (".py", ".sh"))
    missing = sorted(n for n in names if n not in sources)
    assert not missing, f"README output files no source mentions: {missing}"


def test_readme_found_and_short():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert os.path.getsize(README) > 1000 and lines <= README_MAX_LINES, f"README.md has {lines} lines"


def test_relative_links_exist():
    bad = []
    for doc in DOCS + RESULTS:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+://|#|mailto:", target):
                continue
            if not (doc.parent / target.split("#")[0]).exists():
                bad.append(f"{doc.relative_to(ROOT)}: {target}")
    assert not bad, f"links to files that do not exist: {bad}"


def test_cli_reference_is_current():
    from fastat.cli_reference import render

    current = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert current == render(), "docs/cli.md is stale: run `python -m fastat.cli_reference docs/cli.md`"
