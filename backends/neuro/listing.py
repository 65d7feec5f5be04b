"""The text of an instruction listing: its data model, its printer and its parser.

The grammar (``docs/isa.md`` gives the meaning of every line)::

    listing     := "kirin-listing" VERSION NEWLINE { line NEWLINE }
    line        := [ directive | instruction ] [ ";" comment ]
    directive   := ".model" STRING "sha256" HEX
                 | ".weights" STRING "bytes" INT "sha256" HEX
                 | ".preset" WORD
                 | ".tensor" WEIGHT TYPE "at" INT "size" INT STRING
                 | ".input" REGISTER TYPE
                 | ".output" REGISTER
    instruction := [ LABEL ":" ] MNEMONIC [ OP ] [ outputs "=" ] [ operands ] [ attributes ]
    outputs     := slot { "," slot }                 slot := REGISTER | "_"
    operands    := operand { "," operand }           operand := slot | WEIGHT | IMMEDIATE | WORD | INT
    attributes  := "{" NAME "=" value { "," NAME "=" value } "}"
    value       := INT | FLOAT | STRING | WEIGHT | "[" [ value { "," value } ] "]"
    REGISTER    := "%" NAME                          WEIGHT := "@" INT
    IMMEDIATE   := DTYPE [ "[" INT { "," INT } "]" ] "{" scalar { "," scalar } "}"
    TYPE        := DTYPE "[" [ dim { "," dim } ] "]"
    NAME        := [A-Za-z_][A-Za-z0-9_.+/-]* or a JSON string

`format_listing` prints a `Listing` in exactly one way, and `parse` reads that text back into
the same `Listing` (``emit -> parse -> emit`` gives the same text). Every error of `parse`
is a `ListingError` naming the line and column.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Union

from kirin_compiler.errors import KirinError

VERSION = 1
MAGIC = "kirin-listing"
COMMENT_COLUMN = 72  # where a line's comment starts, unless its statement is longer

_BARE = re.compile(r"[A-Za-z_][A-Za-z0-9_.+/\-]*")


class ListingError(KirinError):
    """A listing that cannot be read: what is wrong, and where (file, line, column)."""

    def __init__(self, path: str, line: int, column: int, message: str) -> None:
        super().__init__(f"{path}:{line}:{column}: {message}")
        self.line, self.column = line, column


# The data model -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Register:
    name: str

    def __str__(self) -> str:
        return "%" + _word(self.name)


@dataclasses.dataclass(frozen=True)
class Weight:
    """A reference to tensor ``index`` of the weights file (`Tensor`)."""

    index: int

    def __str__(self) -> str:
        return f"@{self.index}"


@dataclasses.dataclass(frozen=True)
class Immediate:
    """A small constant written in the line: its dtype, its shape (None: a scalar) and its
    values as written (``i64[2]{1, 2}``, ``f32{1e-06}``)."""

    dtype: str
    shape: tuple[int, ...] | None
    values: tuple[str, ...]

    def __str__(self) -> str:
        shape = "" if self.shape is None else "[" + ", ".join(map(str, self.shape)) + "]"
        return f"{self.dtype}{shape}{{{', '.join(self.values)}}}"


@dataclasses.dataclass(frozen=True)
class Word:
    """A bare word operand (a layer's name and mode, a step count)."""

    text: str

    def __str__(self) -> str:
        return _word(self.text)


Operand = Union[Register, Weight, Immediate, Word, int, None]
Value = Union[int, float, str, Weight, list]


@dataclasses.dataclass(frozen=True)
class Position:
    line: int
    column: int


@dataclasses.dataclass
class Instruction:
    mnemonic: str
    outputs: list[Register | None] = dataclasses.field(default_factory=list)
    operands: list[Operand] = dataclasses.field(default_factory=list)
    attributes: dict[str, Value] = dataclasses.field(default_factory=dict)
    label: str | None = None  # the IR node it implements
    op: str | None = None  # a host operation's ONNX op type
    comment: str = ""
    # where each part was read (for errors found after parsing): "mnemonic", "operand<i>", ...
    positions: dict[str, Position] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def where(self, part: str) -> Position:
        return self.positions.get(part) or self.positions.get("mnemonic") or Position(0, 0)


@dataclasses.dataclass(frozen=True)
class Tensor:
    """A tensor of the weights file: its index, type, byte range and the model's name for it."""

    index: int
    dtype: str
    shape: tuple[int, ...]
    offset: int
    size: int
    name: str


@dataclasses.dataclass
class Directive:
    kind: str  # model, weights, preset, tensor, input, output
    fields: dict
    comment: str = ""
    positions: dict[str, Position] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def where(self, part: str = "kind") -> Position:
        return self.positions.get(part) or self.positions.get("kind") or Position(0, 0)


@dataclasses.dataclass
class Comment:
    text: str


Line = Union[Directive, Instruction, Comment]


@dataclasses.dataclass
class Listing:
    lines: list[Line]
    version: int = VERSION

    def directives(self, kind: str) -> list[Directive]:
        return [line for line in self.lines if isinstance(line, Directive) and line.kind == kind]

    def directive(self, kind: str) -> Directive | None:
        found = self.directives(kind)
        return found[0] if found else None

    @property
    def instructions(self) -> list[Instruction]:
        return [line for line in self.lines if isinstance(line, Instruction)]

    @property
    def tensors(self) -> dict[int, Tensor]:
        return {d.fields["tensor"].index: d.fields["tensor"] for d in self.directives("tensor")}


# Printing -------------------------------------------------------------------------------------


def format_listing(listing: Listing) -> str:
    lines = [f"{MAGIC} {listing.version}"]
    for line in listing.lines:
        if isinstance(line, Comment):
            lines.append(f"; {line.text}" if line.text else ";")
            continue
        text = _directive_text(line) if isinstance(line, Directive) else instruction_text(line)
        if line.comment:
            text = f"{text.ljust(COMMENT_COLUMN - 2)}  ; {line.comment}"
        lines.append(text)
    return "\n".join(lines) + "\n"


def instruction_text(instruction: Instruction) -> str:
    parts = []
    if instruction.label is not None:
        parts.append(_word(instruction.label) + ":")
    parts.append(instruction.mnemonic if instruction.op is None else f"{instruction.mnemonic} {instruction.op}")
    head = " ".join(parts)
    body = []
    if instruction.outputs:
        body.append(", ".join(_slot(r) for r in instruction.outputs) + " =")
    if instruction.operands:
        body.append(", ".join(_operand(o) for o in instruction.operands))
    if instruction.attributes:
        body.append("{" + ", ".join(f"{k}={_value(v)}" for k, v in instruction.attributes.items()) + "}")
    return f"{head.ljust(_HEAD_WIDTH)} {' '.join(body)}".rstrip() if body else head


_HEAD_WIDTH = 8  # mnemonics are aligned when an instruction has no label


def _directive_text(directive: Directive) -> str:
    f = directive.fields
    if directive.kind == "model":
        return f".model {json.dumps(f['file'])} sha256 {f['sha256']}"
    if directive.kind == "weights":
        return f".weights {json.dumps(f['file'])} bytes {f['bytes']} sha256 {f['sha256']}"
    if directive.kind == "preset":
        return f".preset {_word(f['name'])}"
    if directive.kind == "tensor":
        t: Tensor = f["tensor"]
        return f".tensor @{t.index} {t.dtype}[{', '.join(map(str, t.shape))}] at {t.offset} size {t.size} {json.dumps(t.name)}"
    if directive.kind == "input":
        return f".input {f['register']} {f['type']}"
    return f".output {f['register']}"


def _slot(register: Register | None) -> str:
    return "_" if register is None else str(register)


def _operand(operand: Operand) -> str:
    return "_" if operand is None else str(operand)


def _value(value: Value) -> str:
    if isinstance(value, bool):
        raise TypeError("a listing has no boolean attributes")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, Weight):
        return str(value)
    return "[" + ", ".join(_value(v) for v in value) + "]"


def _word(text: str) -> str:
    return text if _BARE.fullmatch(text) else json.dumps(text)


# Parsing --------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<space>[ \t]+)
  | (?P<comment>;.*)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<register>%(?:"(?:[^"\\]|\\.)*"|[A-Za-z0-9_.+/\-]+))
  | (?P<weight>@[0-9]+)
  | (?P<hex>[0-9a-f]{64}(?![A-Za-z0-9_.+/\-]))
  | (?P<number>[-+]?(?:[0-9]+\.[0-9]*(?:[eE][-+]?[0-9]+)?|[0-9]+[eE][-+]?[0-9]+|inf\b|nan\b|[0-9]+))
  | (?P<word>[A-Za-z_][A-Za-z0-9_.+/\-]*|\.[a-z]+)
  | (?P<punct>[=,:{}\[\]])
  | (?P<other>\S)
    """,
    re.VERBOSE,
)


@dataclasses.dataclass
class _Token:
    kind: str
    text: str
    column: int


class _Line:
    """The tokens of one line, read left to right."""

    def __init__(self, path: str, number: int, text: str) -> None:
        self.path, self.number = path, number
        self.tokens: list[_Token] = []
        self.comment = ""
        self.code = text  # the line without its comment
        position = 0
        while position < len(text):
            match = _TOKEN.match(text, position)
            kind = match.lastgroup
            if kind == "comment":
                self.comment = match.group()[1:].strip()
                self.code = text[:position]
            elif kind != "space":
                self.tokens.append(_Token(kind, match.group(), position + 1))
            position = match.end()
        self.index = 0
        self.end_column = len(text.rstrip()) + 1

    def fail(self, column: int, message: str):
        raise ListingError(self.path, self.number, column, message)

    def peek(self) -> _Token | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self, kind: str | None = None, text: str | None = None, what: str = "") -> _Token:
        token = self.peek()
        if token is None or (kind and token.kind != kind) or (text and token.text != text):
            wanted = what or (repr(text) if text else kind)
            found = "the end of the line" if token is None else repr(token.text)
            self.fail(token.column if token else self.end_column, f"expected {wanted}, found {found}")
        self.index += 1
        return token

    def rest(self) -> str:
        """The rest of the line as written (without its comment); it is all read then."""
        token = self.peek()
        if token is None:
            self.fail(self.end_column, "expected more, found the end of the line")
        self.index = len(self.tokens)
        return self.code[token.column - 1 :].strip()

    def accept(self, text: str) -> bool:
        token = self.peek()
        if token is not None and token.kind == "punct" and token.text == text:
            self.index += 1
            return True
        return False

    def done(self) -> bool:
        return self.index >= len(self.tokens)

    def finish(self) -> None:
        token = self.peek()
        if token is not None:
            self.fail(token.column, f"unexpected {token.text!r} at the end of the instruction")

    def position(self) -> Position:
        token = self.peek()
        return Position(self.number, token.column if token else self.end_column)


def parse(text: str, path: str = "<listing>") -> Listing:
    """The `Listing` of ``text``; a `ListingError` (with line and column) if it is malformed
    in its syntax. What the instructions mean is checked by the interpreter."""
    rows = text.split("\n")
    if rows and rows[-1] == "":
        rows.pop()
    header = rows[0] if rows else ""
    match = re.fullmatch(rf"{MAGIC} (\S+)", header.strip())
    if match is None:
        raise ListingError(path, 1, 1, f"not an instruction listing: the first line must be '{MAGIC} {VERSION}'")
    if match.group(1) != str(VERSION):
        raise ListingError(
            path, 1, len(MAGIC) + 2,
            f"listing version {match.group(1)} is not supported: this kirin_compiler reads version {VERSION}",
        )
    lines: list[Line] = []
    for number, row in enumerate(rows[1:], start=2):
        line = _Line(path, number, row)
        if line.done():
            lines.append(Comment(line.comment))
            continue
        first = line.peek()
        item = _directive(line) if first.kind == "word" and first.text.startswith(".") else _instruction(line)
        item.comment = line.comment
        lines.append(item)
    return Listing(lines)


def _directive(line: _Line) -> Directive:
    token = line.take("word")
    kind = token.text[1:]
    positions = {"kind": Position(line.number, token.column)}
    if kind == "model":
        file = _string(line)
        line.take("word", "sha256")
        fields = {"file": file, "sha256": line.take("hex", what="a SHA-256 (64 hex digits)").text}
    elif kind == "weights":
        file = _string(line)
        line.take("word", "bytes")
        size = _int(line)
        line.take("word", "sha256")
        fields = {"file": file, "bytes": size, "sha256": line.take("hex", what="a SHA-256 (64 hex digits)").text}
    elif kind == "preset":
        fields = {"name": _name(line)}
    elif kind == "tensor":
        positions["index"] = line.position()
        index = _weight(line).index
        positions["type"] = line.position()
        dtype = line.take("word", what="a data type").text
        shape = _dims(line, integers=True)
        line.take("word", "at")
        positions["offset"] = line.position()
        offset = _int(line)
        line.take("word", "size")
        positions["size"] = line.position()
        size = _int(line)
        fields = {"tensor": Tensor(index, dtype, tuple(shape), offset, size, _string(line))}
    elif kind == "input":
        fields = {"register": _register(line), "type": line.rest()}
    elif kind == "output":
        fields = {"register": _register(line)}
    else:
        line.fail(token.column, f"unknown directive '{token.text}' (.model, .weights, .preset, .tensor, .input, .output)")
    line.finish()
    return Directive(kind, fields, positions=positions)


def _instruction(line: _Line) -> Instruction:
    positions = {}
    label = None
    first = line.peek()
    if len(line.tokens) > 1 and line.tokens[1].kind == "punct" and line.tokens[1].text == ":":
        if first.kind not in ("word", "string", "number"):
            line.fail(first.column, f"expected a label, found {first.text!r}")
        label = json.loads(first.text) if first.kind == "string" else first.text
        positions["label"] = Position(line.number, first.column)
        line.index = 2
    token = line.take("word", what="an instruction")
    positions["mnemonic"] = Position(line.number, token.column)
    instruction = Instruction(token.text, label=label, positions=positions)
    if token.text == "host":
        positions["op"] = line.position()
        instruction.op = line.take("word", what="an ONNX op type").text
    if _has_outputs(line.tokens[line.index:]):
        while True:
            positions[f"output{len(instruction.outputs)}"] = line.position()
            instruction.outputs.append(_slot_token(line))
            if not line.accept(","):
                break
        line.take("punct", "=")
    if not line.done() and not (line.peek().kind == "punct" and line.peek().text == "{"):
        while True:
            positions[f"operand{len(instruction.operands)}"] = line.position()
            instruction.operands.append(_operand_token(line))
            if not line.accept(","):
                break
    if line.accept("{"):
        while True:
            name_position = line.position()
            name = line.take("word", what="an attribute name").text
            if name in instruction.attributes:
                line.fail(name_position.column, f"attribute '{name}' is given twice")
            positions[f"attribute:{name}"] = name_position
            line.take("punct", "=")
            instruction.attributes[name] = _attribute_value(line)
            if not line.accept(","):
                break
        line.take("punct", "}")
    line.finish()
    return instruction


def _has_outputs(tokens: list[_Token]) -> bool:
    """Whether the instruction names outputs: an ``=`` before its attributes."""
    for token in tokens:
        if token.kind == "punct" and token.text in "={":
            return token.text == "="
    return False


def _slot_token(line: _Line) -> Register | None:
    token = line.peek()
    if token is not None and token.kind == "word" and token.text == "_":
        line.index += 1
        return None
    return _register(line)


def _operand_token(line: _Line) -> Operand:
    token = line.peek()
    if token is None:
        line.fail(line.end_column, "expected an operand, found the end of the line")
    if token.kind == "register":
        return _register(line)
    if token.kind == "weight":
        return _weight(line)
    if token.kind == "number" and re.fullmatch(r"[0-9]+", token.text):
        line.index += 1
        return int(token.text)
    if token.kind == "word":
        following = line.tokens[line.index + 1] if line.index + 1 < len(line.tokens) else None
        if token.text == "_":
            line.index += 1
            return None
        if following is not None and following.kind == "punct" and following.text in "[{":
            return _immediate(line)
        line.index += 1
        return Word(token.text)
    line.fail(token.column, f"expected an operand, found {token.text!r}")


def _immediate(line: _Line) -> Immediate:
    dtype = line.take("word").text
    shape = tuple(int(d) for d in _dims(line, integers=True)) if line.peek().text == "[" else None
    line.take("punct", "{")
    values = []
    while not line.accept("}"):
        token = line.peek()
        if token is None or token.kind not in ("number", "word", "string"):
            line.fail(token.column if token else line.end_column, "expected a value of the constant")
        values.append(token.text)
        line.index += 1
        if not line.accept(","):
            line.take("punct", "}")
            break
    return Immediate(dtype, shape, tuple(values))


def _attribute_value(line: _Line) -> Value:
    token = line.peek()
    if token is None:
        line.fail(line.end_column, "expected an attribute value, found the end of the line")
    if token.kind == "punct" and token.text == "[":
        line.index += 1
        items: list = []
        if not line.accept("]"):
            while True:
                items.append(_attribute_value(line))
                if not line.accept(","):
                    break
            line.take("punct", "]")
        return items
    line.index += 1
    if token.kind == "number":
        return int(token.text) if re.fullmatch(r"[-+]?[0-9]+", token.text) else float(token.text)
    if token.kind == "string":
        return json.loads(token.text)
    if token.kind == "weight":
        return Weight(int(token.text[1:]))
    line.fail(token.column, f"expected an attribute value, found {token.text!r}")


def _dims(line: _Line, integers: bool) -> list:
    line.take("punct", "[")
    dims: list = []
    if line.accept("]"):
        return dims
    while True:
        token = line.take(what="a dimension")
        if integers and not (token.kind == "number" and token.text.isdigit()):
            line.fail(token.column, f"expected a dimension (a whole number), found {token.text!r}")
        dims.append(int(token.text) if integers else token.text)
        if not line.accept(","):
            break
    line.take("punct", "]")
    return dims


def _register(line: _Line) -> Register:
    text = line.take("register", what="a register (%name)").text[1:]
    return Register(json.loads(text) if text.startswith('"') else text)


def _weight(line: _Line) -> Weight:
    return Weight(int(line.take("weight", what="a weight reference (@N)").text[1:]))


def _int(line: _Line) -> int:
    token = line.take("number", what="a whole number")
    if not token.text.isdigit():
        line.fail(token.column, f"expected a whole number, found {token.text!r}")
    return int(token.text)


def _string(line: _Line) -> str:
    return json.loads(line.take("string", what="a quoted name").text)


def _name(line: _Line) -> str:
    token = line.take(what="a name")
    if token.kind == "string":
        return json.loads(token.text)
    if token.kind != "word":
        line.fail(token.column, f"expected a name, found {token.text!r}")
    return token.text
