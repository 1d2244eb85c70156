"""unionfs.cli.gotemplate against what Go's text/template and docker's template functions print.

The expected strings are Go's output for the same template and data (fmt's %v for lists, maps, structs and
nils; encoding/json for ``json``; text/tabwriter with docker's settings for tables), so a difference from Go
fails here, not in a user's script.
"""

from __future__ import annotations

import pytest

from unionfs.cli.gotemplate import NIL_MAP, NIL_POINTER, NIL_SLICE, Struct, format_rows, render, tabwrite
from unionfs.errors import TemplateError, UsageError

IMAGE = Struct("image.InspectResponse", {
    "Id": "sha256:3ad95c299e4b",
    "RepoTags": ["busybox:latest", "localhost:5000/x:2"],
    "Size": 518,
    "Ratio": 1.5,
    "Config": Struct("container.Config", {
        "Cmd": ["/bin/sh", "-c", "echo hi"], "Env": NIL_SLICE, "Entrypoint": None, "Healthcheck": NIL_POINTER,
        "Labels": {"maintainer": "me <me@example.com>", "a": "1"}, "Volumes": NIL_MAP,
        "ExposedPorts": {"80/tcp": Struct("struct {}"), "443/tcp": Struct("struct {}")}, "Tty": False}),
    "RootFS": Struct("image.RootFS", {"Type": "layers", "Layers": ["sha256:aa", "sha256:bb"]}),
    "History": [{"created_by": "ADD x"}, {"created_by": "CMD", "empty_layer": True}],
})


@pytest.mark.parametrize("template,out", [
    # nested fields, and Go's fmt for what they hold
    ("{{.Config.Cmd}}", "[/bin/sh -c echo hi]"),
    ("{{.RootFS.Layers}}", "[sha256:aa sha256:bb]"),
    ("{{.RootFS}}", "{layers [sha256:aa sha256:bb]}"),
    ("{{.Config.Labels}}", "map[a:1 maintainer:me <me@example.com>]"),
    ("{{.Config.ExposedPorts}}", "map[443/tcp:{} 80/tcp:{}]"),
    ("{{.Config.Env}}|{{.Config.Volumes}}|{{.Config.Healthcheck}}|{{.Config.Entrypoint}}", "[]|map[]|<nil>|<no value>"),
    ("{{.Config.Labels.missing}}", "<no value>"),
    ("{{.Config.Tty}} {{.Size}} {{.Ratio}} {{1e6}} {{0x10}} {{'a'}}", "false 518 1.5 1e+06 16 97"),
    ("{{.History}}", "[map[created_by:ADD x] map[created_by:CMD empty_layer:true]]"),
    # json: compact, no HTML escaping, map keys sorted, struct fields in order, typed nils null
    ("{{json .Config.Cmd}}", '["/bin/sh","-c","echo hi"]'),
    ("{{json .Config.Labels}}", '{"a":"1","maintainer":"me <me@example.com>"}'),
    ("{{json .RootFS}}", '{"Type":"layers","Layers":["sha256:aa","sha256:bb"]}'),
    ("{{json .Config.Env}} {{json .Config.Healthcheck}} {{json .Size}}", "null null 518"),
    ("{{.Config.Cmd | json}}", '["/bin/sh","-c","echo hi"]'),
    # index, len, slice, range, join, split
    ("{{index .RepoTags 0}}", "busybox:latest"),
    ("{{index .Config.Labels \"a\"}}", "1"),
    ("{{len .RepoTags}} {{len .Id}} {{len .Config.Env}}", "2 19 0"),
    ("{{slice .RepoTags 1}} {{slice .Id 0 6}}", "[localhost:5000/x:2] sha256"),
    ("{{range .RepoTags}}<{{.}}>{{end}}", "<busybox:latest><localhost:5000/x:2>"),
    ("{{range $i, $t := .RepoTags}}{{$i}}={{$t}};{{end}}", "0=busybox:latest;1=localhost:5000/x:2;"),
    ("{{range $k, $v := .Config.Labels}}{{$k}}={{$v}},{{end}}", "a=1,maintainer=me <me@example.com>,"),
    ("{{range .Config.Env}}x{{else}}empty{{end}}", "empty"),
    ("{{range $t := .RepoTags}}{{$.Size}}{{end}}", "518518"),
    ("{{range .RepoTags}}{{if eq . \"busybox:latest\"}}{{continue}}{{end}}{{.}}{{end}}", "localhost:5000/x:2"),
    ("{{range 3}}{{.}}{{end}}", "012"),
    ("{{join .RepoTags \", \"}}", "busybox:latest, localhost:5000/x:2"),
    ("{{split \"a:b:c\" \":\"}} {{index (split .Id \":\") 1}}", "[a b c] 3ad95c299e4b"),
    # strings: printf, upper, lower, title, pad, truncate, print, println
    ('{{printf "%-16s|%5d|%q|%v|%.2f|%x|%t" .Id .Size "a\\"b" .RepoTags .Ratio 255 true}}',
     'sha256:3ad95c299e4b|  518|"a\\"b"|[busybox:latest localhost:5000/x:2]|1.50|ff|true'),
    ('{{printf "%s %s" "one"}}|{{printf "%d" "x"}}|{{printf "%s" 1 2}}',
     "one %!s(MISSING)|%!d(string=x)|%!s(int=1)%!(EXTRA int=2)"),
    ("{{upper .Id}} {{lower \"ABC\"}} {{title \"hello big world\"}}", "SHA256:3AD95C299E4B abc Hello Big World"),
    ("[{{pad \"x\" 2 1}}][{{pad \"\" 2 1}}] {{truncate .Id 6}} {{truncate \"ab\" 5}}", "[  x ][] sha256 ab"),
    ('{{print 1 2 "a" "b" 3}}|{{println "a" 1}}', "1 2ab3|a 1\n"),
    # if/else, with, comparisons, and/or/not, variables, pipelines
    ("{{if gt .Size 500}}big{{else if gt .Size 100}}mid{{else}}small{{end}}", "big"),
    ("{{if .Config.Env}}env{{else}}no env{{end}}", "no env"),
    ("{{with .Config.Labels.a}}a={{.}}{{end}}{{with .Config.Labels.nope}}x{{else}} none{{end}}", "a=1 none"),
    ("{{eq .Size 518}} {{ne .Id \"x\"}} {{lt 1 2}} {{le 2 2}} {{ge \"b\" \"a\"}} {{eq 1 2 3 1}}",
     "true true true true true true"),
    ("{{if eq .Config.Labels.nope \"x\"}}y{{else}}n{{end}} {{eq .Config.Labels.nope nil}}", "n true"),
    ("{{and 1 \"\" 3}}|{{or 0 \"\" \"z\"}}|{{not .Config.Tty}}|{{and .Size .Id}}", "|z|true|sha256:3ad95c299e4b"),
    ("{{$n := len .RepoTags}}{{$n}} {{$n = 5}}{{$n}}", "2 5"),
    ("{{.Id | printf \"%s!\" | upper}}", "SHA256:3AD95C299E4B!"),
    ("{{(index .RootFS.Layers 1)}} {{(index .History 1).created_by}}", "sha256:bb CMD"),
    ("{{.}}", "{sha256:3ad95c299e4b [busybox:latest localhost:5000/x:2] 518 1.5 {[/bin/sh -c echo hi] [] <nil> <nil> "
     "map[a:1 maintainer:me <me@example.com>] map[] map[443/tcp:{} 80/tcp:{}] false} {layers [sha256:aa sha256:bb]} "
     "[map[created_by:ADD x] map[created_by:CMD empty_layer:true]]}"),
    # trimming, comments, quoting, literal text
    ("a  {{- .Size -}}  b\n{{- /* gone */ -}}\n c", "a518bc"),
    ("{{-3}}", "-3"),
    ("{{`raw\\n`}} {{\"a}}b\"}} {{\"tab\\there\"}}", "raw\\n a}}b tab\there"),
    ("{{html \"<a href='x'>&\"}} {{urlquery \"a b&c\"}}", "&lt;a href=&#39;x&#39;&gt;&amp; a+b%26c"),
    ("no actions", "no actions"),
])
def test_go_output(template: str, out: str) -> None:
    assert render(template, IMAGE) == out


@pytest.mark.parametrize("template,message", [
    # parse errors: "template parsing error: template: :LINE: ..."
    ("{{.Id", "template parsing error: template: :1: unclosed action"),
    ("{{if .Id}}x", "template parsing error: template: :1: unexpected EOF"),
    ("x\n{{end}}", "template parsing error: template: :2: unexpected {{end}}"),
    ("{{nosuch .Id}}", 'template parsing error: template: :1: function "nosuch" not defined'),
    ("{{template \"x\"}}", "template parsing error: template: :1: {{template}} is not supported by unionfs"),
    ("{{break}}", "template parsing error: template: :1: {{break}} outside {{range}}"),
    ("{{(len .Id}}", "template parsing error: template: :1: unclosed left paren"),
    ("{{/* x }}", "template parsing error: template: :1: unclosed comment"),
    ("{{}}", "template parsing error: template: :1: missing value for command"),
    # execution errors: "template: :LINE:COL: executing "" at <...>: ..."
    ("{{.Nope}}", 'template: :1:2: executing "" at <.Nope>: can\'t evaluate field Nope in type image.InspectResponse'),
    ("x {{.Config.Nope}}", "template: :1:4: executing \"\" at <.Config.Nope>: can't evaluate field Nope in type "
     "container.Config"),
    ("{{.Config.Healthcheck.Test}}", "nil pointer evaluating"),
    ("{{.Id.Foo}}", "can't evaluate field Foo in type string"),
    ("{{index .RepoTags 5}}", 'at <index .RepoTags 5>: error calling index: index out of range: 5'),
    ("{{upper .Size}}", "error calling upper: wrong type for value; expected string; got int"),
    ("{{lt .Size \"a\"}}", "error calling lt: incompatible types for comparison"),
    ("{{eq .RepoTags .RepoTags}}", "error calling eq: non-comparable type []interface {}"),
    ("{{range .Id}}{{end}}", "range can't iterate over sha256:3ad95c299e4b"),
    ("{{nil}}", "nil is not a command"),
    ("{{len .Size}}", "error calling len: len of type int"),
    ("{{.Id 1}}", "can't give argument to non-function .Id"),
    ("{{$x}}", "undefined variable: $x"),
])
def test_errors_are_one_line_in_go_shape(template: str, message: str) -> None:
    with pytest.raises(TemplateError) as e:
        render(template, IMAGE)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert isinstance(e.value, UsageError)  # the CLI's exit status 2


def test_a_map_and_a_struct_differ_on_a_missing_name() -> None:
    """Go: a map's missing key is "no value" (and a field of it too); a struct's missing field is an error."""
    assert render("{{.a.b.c}}", {"x": 1}) == "<no value>"
    assert render("{{index . \"a\"}}", {}) == "<no value>"
    with pytest.raises(TemplateError, match="can't evaluate field a in type row"):
        render("{{.a}}", Struct("row", {"x": 1}))


def test_nil_inside_a_list_prints_as_go_prints_it() -> None:
    assert render("{{.}}", [1, None, "a", True]) == "[1 <nil> a true]"
    assert render("{{json .}}", {"b": [1.0, None], "a": "\u2028é<"}) == '{"a":"\\u2028é<","b":[1,null]}'


ROWS = [Struct("image row", {"Repository": "busybox", "Tag": "latest", "ID": "3ad95c299e4b", "Size": "518B"}),
        Struct("image row", {"Repository": "localhost:5000/team/app", "Tag": "1.2", "ID": "15b9a01edfd6",
                             "Size": "1.2MB"})]
HEADER = {"Repository": "REPOSITORY", "Tag": "TAG", "ID": "IMAGE ID", "Size": "SIZE"}


def test_table_has_a_header_and_columns_as_docker_aligns_them() -> None:
    """docker's tabwriter: columns at least 10 wide, 3 blanks after the widest cell; ``\\t`` typed as two
    characters is a tab; the header runs the template over the column titles (``upper``/``json`` pass them
    through)."""
    out = format_rows("table {{.Repository}}\\t{{.Tag}}\\t{{.ID}}", ROWS, HEADER)
    assert out.splitlines() == [
        "REPOSITORY                TAG       IMAGE ID",
        "busybox                   latest    3ad95c299e4b",
        "localhost:5000/team/app   1.2       15b9a01edfd6",
    ]
    out = format_rows("table {{upper .Tag}}\t{{json .Size}}", ROWS, HEADER)
    assert out == "TAG       SIZE\nLATEST    \"518B\"\n1.2       \"1.2MB\"\n"
    assert format_rows("table {{.Repository}}\t{{.Tag}}", [], HEADER) == "REPOSITORY   TAG\n"


def test_plain_and_json_formats() -> None:
    assert format_rows("{{.Repository}}:{{.Tag}}\\t{{.ID}}", ROWS, HEADER) == (
        "busybox:latest\t3ad95c299e4b\nlocalhost:5000/team/app:1.2\t15b9a01edfd6\n")
    assert format_rows("json", ROWS[:1], HEADER) == (
        '{"Repository":"busybox","Tag":"latest","ID":"3ad95c299e4b","Size":"518B"}\n')
    assert format_rows("{{.Tag}}", [], HEADER) == ""
    with pytest.raises(TemplateError, match="can't evaluate field Nope in type image row"):
        format_rows("table {{.Nope}}", ROWS, HEADER)


def test_tabwriter_blocks_follow_go() -> None:
    """Go's tabwriter: a column is the tab-ended cells of consecutive lines; a line with fewer cells ends the
    block, so the lines after it are aligned on their own."""
    assert tabwrite("a\tb\tc\nlonger-than-ten\tx\nsolo\nq\tr").splitlines() == [
        "a".ljust(18) + "b".ljust(10) + "c", "longer-than-ten".ljust(18) + "x", "solo", "q".ljust(10) + "r"]
