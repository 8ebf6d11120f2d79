"""README's operator guide as data: its command blocks, what each says about where it runs, its commands.

Every fenced block of the "Operator guide" section must follow an HTML comment that says how the
documentation test (``tests/test_operator_guide.py``) treats it::

    <!-- doc-test: controller -->                    run on the controller's host
    <!-- doc-test: controller background -->         ... and leave it running (the controller itself)
    <!-- doc-test: hypervisors -->                   run on hv1, then with hv2's values on hv2
    <!-- doc-test: controller hypervisors -->        run on the controller, once per hypervisor
    <!-- doc-test: upstream -->                      run on the router outside the cloud (the provider network's)
    <!-- doc-test: hypervisors vm -->                ... each after its VM booted (its tap exists)
    <!-- doc-test: hypervisors certs -->             ... each after its key and certificates were copied to it
    <!-- doc-test: hypervisors variant=tls -->       only in the guide's run with that variant (unix, tls, cluster,
                                                     system-id); ``variant=unix,tls``: in each run it names
    <!-- doc-test: hypervisors after=bridge -->      run later, right after the block with id=bridge
    <!-- doc-test: controller NET_ID=network.id -->  NET_ID: that field of the JSON the block printed
    <!-- doc-test: controller id=status -->          the test checks what this block printed
    <!-- doc-test: controller file=~/PATH -->        a file (``clouds.yaml``), written before any block runs
    <!-- doc-test: synopsis (...) -->                a usage line, checked against ``--help``
    <!-- doc-test: config (...) -->                  a ``--config`` or policy file, checked by the code reading it
    <!-- doc-test: not run: REASON -->              not run, and why (the reason is required)

A block with no such comment, or one the parser does not understand, fails the test: a command
added to the guide cannot escape it.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parent.parent / "README.md"
SECTION = "## Operator guide"
FENCE = re.compile(r"^```(?P<lang>[\w-]*)\n(?P<text>.*?)^```[ \t]*$", re.M | re.S)
MARKER = re.compile(r"<!--\s*doc-test:\s*(?P<body>.*?)\s*-->\s*\Z", re.S)
HOSTS = ("controller", "hypervisors", "upstream")  # upstream: a router outside the cloud, on physnet1
FLAGS = ("background", "vm", "certs")
# how the hypervisors reach the controller (system-id: a unix one that makes their br-int): each a run of the guide
VARIANTS = ("unix", "tls", "cluster", "system-id")
CAPTURE = re.compile(r"^(?P<name>[A-Z][A-Z0-9_]*)=(?P<path>[\w.:-]+)$")


class GuideError(ValueError):
    """A block of the guide that the documentation test cannot place (no marker, or a bad one)."""


@dataclass
class Block:
    """One fenced block of the operator guide and what its marker says."""

    line: int  # 1-based line of the opening fence in README.md
    lang: str
    text: str
    skip: str | None = None  # "not run: REASON": the reason
    synopsis: bool = False
    config: bool = False
    hosts: tuple[str, ...] = ()
    flags: frozenset[str] = frozenset()
    captures: dict[str, str] = field(default_factory=dict)  # placeholder -> JSON path
    id: str = ""
    file: str = ""  # file=PATH: the block is that file's content
    variants: tuple[str, ...] = ()  # (): in every run of the guide
    after: str = ""  # after=ID: run right after that block, not in the guide's order

    @property
    def where(self) -> str:
        """``README.md:LINE`` for messages."""
        return f"README.md:{self.line}"


def guide_section(readme: str) -> tuple[int, str]:
    """The operator guide's text (its heading to the next ``## ``) and the line it starts on."""
    start = readme.index(SECTION + "\n")
    end = readme.find("\n## ", start + len(SECTION))
    return readme.count("\n", 0, start) + 1, readme[start:] if end < 0 else readme[start : end + 1]


def blocks(readme: str | None = None) -> list[Block]:
    """Every fenced block of the guide with its marker parsed; GuideError names the first bad one."""
    readme = README.read_text() if readme is None else readme
    first_line, section = guide_section(readme)
    found = []
    for m in FENCE.finditer(section):
        line = first_line + section.count("\n", 0, m.start())
        before = section[: m.start()].rstrip("\n")
        marker = MARKER.search(before[before.rfind("\n") + 1 :] if "\n" in before else before)
        if marker is None:
            raise GuideError(f"README.md:{line}: a ```{m['lang']} block without a <!-- doc-test: ... --> comment "
                             "on the line before (where it runs, or `not run: REASON`; see tests/guide_blocks.py)")
        found.append(parse_marker(Block(line, m["lang"], m["text"]), marker["body"]))
    return found


def parse_marker(block: Block, body: str) -> Block:
    """Fill ``block`` from its marker's body (what follows ``doc-test:``)."""
    if body.startswith("not run:"):
        block.skip = body.removeprefix("not run:").strip()
        if not block.skip:
            raise GuideError(f"{block.where}: `not run:` needs a reason")
        return block
    if body.startswith("synopsis"):
        block.synopsis = True
        return block
    if body.startswith("config"):
        block.config = True
        return block
    hosts, flags = [], set()
    for word in body.split():
        if word in HOSTS:
            hosts.append(word)
        elif word in FLAGS:
            flags.add(word)
        elif word.startswith("id="):
            block.id = word.removeprefix("id=")
        elif word.startswith("variant=") and set(variants := word.removeprefix("variant=").split(",")) <= set(VARIANTS):
            block.variants = tuple(variants)
        elif word.startswith("after="):
            block.after = word.removeprefix("after=")
        elif word.startswith("file="):
            block.file = word.removeprefix("file=")
        elif m := CAPTURE.match(word):
            block.captures[m["name"]] = m["path"]
        else:
            raise GuideError(f"{block.where}: doc-test marker word {word!r} is none of {HOSTS + FLAGS}, id=NAME, "
                             f"NAME=json.path, file=PATH, variant={'|'.join(VARIANTS)}[,...], synopsis, "
                             "`not run: REASON`")
    if not hosts:
        raise GuideError(f"{block.where}: the marker names no host (controller or hypervisors)")
    if block.file and (hosts != ["controller"] or flags or block.captures):
        raise GuideError(f"{block.where}: a file=PATH block is a file on the controller's host, nothing else")
    if not block.file and block.lang not in ("sh", "bash", "python"):
        raise GuideError(f"{block.where}: only sh, bash and python blocks run; a ```{block.lang} block is a "
                         "file=PATH or `not run: REASON`")
    block.hosts, block.flags = tuple(hosts), frozenset(flags)
    return block


def commands(text: str) -> list[list[str]]:
    """A block's commands as argv lists: continuation lines joined, comments dropped, ``&&`` split.

    For comparing the guide with code, not for running it (the test runs blocks with ``sh``).
    A quoted argument keeps its newlines (a JSON body written over several lines).
    """
    argvs: list[list[str]] = []
    for line in logical_lines(text):
        argv: list[str] = []
        for word in shlex.split(line):
            if word == "&&":
                argvs.append(argv)
                argv = []
            else:
                argv.append(word)
        argvs.append(argv)
    return [argv for argv in argvs if argv]


def logical_lines(text: str) -> list[str]:
    """The shell's lines of ``text``: a backslash-newline joins two, a newline inside quotes does not
    end one, a ``#`` starting a word outside quotes comments out the rest of its line."""
    lines, current, quote, i = [], [], "", 0
    while i < len(text):
        c = text[i]
        if quote:
            quote = "" if c == quote else quote
        elif c == "\\" and text[i + 1 : i + 2] == "\n":
            current.append(" ")
            i += 2
            continue
        elif c in "'\"":
            quote = c
        elif c == "#" and (not current or current[-1].isspace()):
            while i < len(text) and text[i] != "\n":
                i += 1
            continue
        elif c == "\n":
            lines.append("".join(current))
            current = []
            i += 1
            continue
        current.append(c)
        i += 1
    lines.append("".join(current))
    return [line for line in lines if line.strip()]


def json_documents(output: str) -> list[Any]:
    """The JSON documents a block printed one after the other (``curl -s`` prints no newline between)."""
    decoder, docs, i = json.JSONDecoder(), [], 0
    while True:
        while i < len(output) and output[i].isspace():
            i += 1
        if i >= len(output):
            return docs
        doc, i = decoder.raw_decode(output, i)
        docs.append(doc)


def capture(output: str, path: str) -> str:
    """The value at ``path`` (``port.id``) in the first JSON document the output holds it in."""
    for doc in json_documents(output):
        value: Any = doc
        for key in path.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None:
            return str(value)
    raise KeyError(f"no {path} in {output[:500]!r}")
