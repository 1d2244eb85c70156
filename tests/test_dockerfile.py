"""Dockerfile parsing, word expansion, .dockerignore, source matching, root-relative paths, cache keys (pure)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from unionfs.build.cache import step_key
from unionfs.build.context import IgnoreRules, clean_source, digest_sources, match_sources
from unionfs.build.dockerfile import parse
from unionfs.errors import DockerfileError
from unionfs.oci.instruction import expand, key_values, split_words
from unionfs.rootpath import resolve_in_root


def test_stages_args_flags_and_forms() -> None:
    df = parse(
        "# syntax=docker/dockerfile:1\n"
        "ARG V=1\n"
        "\n"
        "from --platform=linux/amd64 base:${V} as Build\n"
        "# a comment\n"
        "RUN echo a \\\n"
        "  # comment inside a continuation\n"
        "  && echo b\n"
        "COPY --from=build --chown=1:2 [\"a b\", \"/c/\"]\n"
        "FROM build\n"
        "CMD [\"x\", \"y\"]\n"
        "ENTRYPOINT not json [\n"
    )
    assert [a.args for a in df.global_args] == ["V=1"]
    s0, s1 = df.stages
    assert (s0.name, s0.base, s0.platform, s0.from_instruction.line) == ("build", "base:${V}", "linux/amd64", 4)
    run = s0.instructions[0]
    assert run.keyword == "RUN" and run.line == 6 and run.args == "echo a   && echo b"
    copy = s0.instructions[1]
    assert copy.flag("from") == "build" and copy.flag("chown") == "1:2" and copy.json == ("a b", "/c/")
    assert s1.base == "build" and df.stage("BUILD") is s0 and df.stage("1") is s1
    assert s1.instructions[0].json == ("x", "y") and s1.instructions[1].json is None


def test_escape_directive() -> None:
    df = parse("# escape=`\nFROM x\nRUN dir c:\\ `\n  && echo done\n")
    assert df.escape == "`"
    assert df.stages[0].instructions[0].args == "dir c:\\   && echo done"


@pytest.mark.parametrize("text,line,words", [
    ("FROM a\nRUN x\nBOGUS y\n", 3, ["unknown instruction", "BOGUS"]),
    ("RUN x\nFROM a\n", 1, ["before the first FROM"]),
    ("FROM a\nRUN --mount=type=cache x\n", 2, ["--mount", "not supported"]),
    ("FROM a\nSHELL /bin/bash -c\n", 2, ["JSON"]),
    ("FROM a\nONBUILD FROM b\n", 2, ["not allowed"]),
    ("FROM a AS x\nFROM b AS x\n", 2, ["duplicate"]),
    ("# just a comment\n", 1, ["no FROM"]),
    ("FROM a\nCOPY <<EOF /x\n", 2, ["here-documents"]),
])
def test_errors_name_the_line(text: str, line: int, words: list[str]) -> None:
    with pytest.raises(DockerfileError) as e:
        parse(text)
    msg = str(e.value)
    assert msg.startswith(f"Dockerfile:{line}: ") and e.value.line == line
    for w in words:
        assert w in msg


@pytest.mark.parametrize("word,expected", [
    ("$A", "1"), ("${A}x", "1x"), ("$NOPE", ""), ("${NOPE:-d}", "d"), ("${EMPTY:-d}", "d"),
    ("${EMPTY-d}", ""), ("${A:+alt}", "alt"), ("${NOPE:+alt}", ""), ("${EMPTY+set}", "set"),
    ("'$A'", "$A"), ('"$A b"', "1 b"), ("\\$A", "$A"), ("a\\ b", "a b"), ("${NOPE:-$A$A}", "11"),
    ('"a\\"b"', 'a"b'), ("$", "$"), ("$1", "$1"),
])
def test_expand(word: str, expected: str) -> None:
    assert expand(word, {"A": "1", "EMPTY": ""}) == expected


def test_expand_errors() -> None:
    with pytest.raises(DockerfileError, match="NOPE: must be set"):
        expand("${NOPE:?must be set}", {})
    with pytest.raises(DockerfileError, match="unmatched"):
        expand('"open', {})
    with pytest.raises(DockerfileError, match="bad substitution"):
        expand("${1}", {})


def test_key_values_and_words() -> None:
    assert key_values('A=1 B="two words" C=${A}x', {"A": "1"}) == [("A", "1"), ("B", "two words"), ("C", "1x")]
    assert key_values("LEGACY value with  spaces", {}) == [("LEGACY", "value with  spaces")]
    assert split_words('a "b c" d\\ e') == ["a", '"b c"', "d\\ e"]


def test_dockerignore() -> None:
    rules = IgnoreRules.parse("# c\n*.log\n!keep.log\nbuild/\n**/tmp\n/docs/*.md\n")
    assert rules.ignored("x.log") and not rules.ignored("keep.log")
    assert rules.ignored("build/out/a")  # a matched directory covers what is below it
    assert rules.ignored("a/b/tmp") and rules.ignored("tmp/x")
    assert rules.ignored("docs/readme.md") and not rules.ignored("docs/sub/readme.md")
    assert not rules.ignored("src/main.c")


def test_match_sources_and_digest(tmp_path: Path) -> None:
    (tmp_path / "src/sub").mkdir(parents=True)
    for n in ("a.txt", "b.txt", "c.log"):
        (tmp_path / "src" / n).write_text(n)
    (tmp_path / "src/sub/d.txt").write_text("d")
    assert match_sources(str(tmp_path), "src/*.txt") == ["src/a.txt", "src/b.txt"]
    assert match_sources(str(tmp_path), "src/*/*.txt") == ["src/sub/d.txt"]
    assert match_sources(str(tmp_path), "./src/../src/a.txt") == ["src/a.txt"]
    assert match_sources(str(tmp_path), "src/*.txt", lambda r: r.endswith("b.txt")) == ["src/a.txt"]
    assert match_sources(str(tmp_path), "missing") == []
    assert clean_source("../outside") is None and clean_source("/abs/x") == "abs/x"
    d1 = digest_sources(str(tmp_path), ["src"])
    assert d1 == digest_sources(str(tmp_path), ["src"])
    (tmp_path / "src/sub/d.txt").write_text("D")
    d2 = digest_sources(str(tmp_path), ["src"])
    assert d2 != d1
    assert digest_sources(str(tmp_path), ["src"], lambda r: r.startswith("src/sub")) != d2
    os.chmod(tmp_path / "src/a.txt", 0o600)
    assert digest_sources(str(tmp_path), ["src"]) != d2


def test_resolve_in_root_never_leaves_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    os.symlink("/usr/bin", root / "bin")
    os.symlink("../../../../../etc", root / "usr/escape")
    r = str(root)
    assert resolve_in_root(r, "/bin/sh") == f"{r}/usr/bin/sh"
    assert resolve_in_root(r, "/usr/escape/passwd") == f"{r}/etc/passwd"
    assert resolve_in_root(r, "../../x") == f"{r}/x"
    assert resolve_in_root(r, "/bin", follow_last=False) == f"{r}/bin"
    assert resolve_in_root(r, "/missing/../usr") == f"{r}/usr"
    os.symlink("loop", root / "loop")
    with pytest.raises(OSError):
        resolve_in_root(r, "/loop/x")


def test_step_keys() -> None:
    a = step_key("sha256:" + "0" * 64, "RUN x", args=[["A", "1"]])
    assert a == step_key("sha256:" + "0" * 64, "RUN x", args=[["A", "1"]])
    assert a != step_key("sha256:" + "0" * 64, "RUN x", args=[["A", "2"]])
    assert a != step_key("sha256:" + "1" * 64, "RUN x", args=[["A", "1"]])
