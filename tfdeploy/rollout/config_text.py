"""Moving a version label in a model config file by editing its text, not rewriting it.

A model config file is written by a person: comments, blank lines, the order of models
and fields, indentation.  Printing the parsed ModelServerConfig again loses all of that,
so ``promote`` and ``rollback`` change only the bytes the move changes: the ``value`` of
the ``version_labels`` entry of that model's label, or one new entry when the label is
not in the file yet.  This module reads enough of protobuf's text format to do that
(strings with escapes, ``#`` comments, ``{}`` and ``<>`` messages, ``:`` optional before
a message, ``[...]`` lists, ``,`` or ``;`` after a field) and no more: whatever it does
not follow makes ``set_version_label`` answer None, and the caller checks every edit by
parsing it (``labels.config_text``), so an edit is either exactly right or not used.

It knows nothing about protobuf messages (no imports above it): field names are the
ones of ModelServerConfig's text format, ``model_config_list { config { name: ... } }``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: characters that end a bare word (a field name, number, enum or ``true``)
_PUNCT = "{}<>:,;[]"
_CLOSERS = {"{": "}", "<": ">"}


class _Unsupported(Exception):
    """The text has something this editor does not follow (or is not text format)."""


@dataclass
class _Token:
    kind: str  # "word", "string" or "punct"
    text: str
    start: int
    end: int


@dataclass
class _Field:
    """One ``name: value`` of a message (a ``[...]`` list gives one per element)."""

    name: str
    start: int  # the name's first character
    end: int  # after the value (its closing brace, its last string)
    #: a message's fields, with the offsets of its brackets (``open_at``, ``close_at``)
    children: list[_Field] | None = None
    open_at: int = -1
    close_at: int = -1
    #: a scalar's tokens (several strings concatenate)
    tokens: list[_Token] = field(default_factory=list)
    #: after the whole statement: a ``[...]`` list's ``]``, a ``,`` or ``;`` after it
    stmt_end: int = -1


def _tokenize(text: str) -> list[_Token]:
    """Words, strings and punctuation; whitespace and ``#`` comments dropped."""
    tokens, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end + 1
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                if text[j] == "\n":
                    raise _Unsupported("a string runs past its line")
                j += 2 if text[j] == "\\" else 1
            if j >= n:
                raise _Unsupported("a string is not closed")
            tokens.append(_Token("string", text[i:j + 1], i, j + 1))
            i = j + 1
        elif c in _PUNCT:
            tokens.append(_Token("punct", c, i, i + 1))
            i += 1
        else:
            j = i
            while j < n and not text[j].isspace() and text[j] not in _PUNCT + "#\"'":
                j += 1
            tokens.append(_Token("word", text[i:j], i, j))
            i = j
    return tokens


class _Parser:
    def __init__(self, text: str):
        self.tokens = _tokenize(text)
        self.i = 0

    def peek(self) -> _Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> _Token:
        token = self.peek()
        if token is None:
            raise _Unsupported("the text ends inside a field")
        self.i += 1
        return token

    def fields(self, closer: str | None) -> tuple[list[_Field], _Token | None]:
        """Fields up to ``closer`` (None: the end of the text) and the closing token."""
        out: list[_Field] = []
        while True:
            token = self.peek()
            if token is None:
                if closer is not None:
                    raise _Unsupported("a message is not closed")
                return out, None
            if token.kind == "punct" and token.text == closer:
                self.i += 1
                return out, token
            if token.kind != "word":  # [extension] names: none in a ModelConfigList
                raise _Unsupported(f"unexpected {token.text!r}")
            self.i += 1
            if (colon := self.peek()) is not None and colon.text == ":" \
                    and colon.kind == "punct":
                self.i += 1
            values = self.value(token)
            stmt_end = self.tokens[self.i - 1].end
            if (sep := self.peek()) is not None and sep.kind == "punct" \
                    and sep.text in ",;":
                self.i += 1
                stmt_end = sep.end
            for v in values:
                v.stmt_end = stmt_end
            out.extend(values)

    def value(self, name: _Token) -> list[_Field]:
        token = self.take()
        if token.kind == "punct" and token.text in _CLOSERS:
            return [self.message(name, token)]
        if token.kind == "punct" and token.text == "[":
            out: list[_Field] = []
            while True:
                if self.peek() is not None and self.peek().text == "]" \
                        and not out and self.peek().kind == "punct":
                    self.i += 1
                    return out
                out.extend(self.value(name))
                end = self.take()
                if end.kind == "punct" and end.text == "]":
                    return out
                if not (end.kind == "punct" and end.text == ","):
                    raise _Unsupported("a list without commas")
        if token.kind == "word":
            return [_Field(name.text, name.start, token.end, tokens=[token])]
        if token.kind == "string":
            tokens = [token]
            while (more := self.peek()) is not None and more.kind == "string":
                tokens.append(more)
                self.i += 1
            return [_Field(name.text, name.start, tokens[-1].end, tokens=tokens)]
        raise _Unsupported(f"unexpected {token.text!r}")

    def message(self, name: _Token, opener: _Token) -> _Field:
        children, close = self.fields(_CLOSERS[opener.text])
        return _Field(name.text, name.start, close.end, children=children,
                      open_at=opener.start, close_at=close.start)


def _string_value(f: _Field) -> str | None:
    """A string field's value (escapes decoded), None when it is not a string."""
    if f.children is not None or not f.tokens or f.tokens[0].kind != "string":
        return None
    from google.protobuf import text_encoding

    raw = b"".join(text_encoding.CUnescape(t.text[1:-1]) for t in f.tokens)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _last(children: list[_Field], name: str) -> _Field | None:
    found = [c for c in children if c.name == name]
    return found[-1] if found else None


def _quote(value: str) -> str:
    from google.protobuf import text_encoding

    return '"' + text_encoding.CEscape(value.encode("utf-8"), as_utf8=True) + '"'


def _line_start(text: str, at: int) -> int:
    return text.rfind("\n", 0, at) + 1


def _starts_line(text: str, at: int) -> bool:
    return text[_line_start(text, at):at].strip() == ""


def _after_on_line(text: str, at: int) -> str:
    """What follows ``at`` on its line, a comment excluded (strings cannot follow a
    field's end without a field name first, so a ``#`` here starts a comment)."""
    end = text.find("\n", at)
    rest = text[at:] if end < 0 else text[at:end]
    return rest.split("#", 1)[0].strip()


def set_version_label(text: str, model: str, label: str, version: int) -> str | None:
    """``text`` (a ModelServerConfig in text format) with ``label`` of ``model`` pointing
    at ``version`` and every other byte as it was; None when the layout is beyond this
    editor (the caller rewrites the file in full then).

    An existing entry has its value replaced (the last one with that key: the one a parse
    keeps); a new one goes after the model's last ``version_labels`` entry, or after its
    last field, on its own line with that field's indentation when the field ends its
    line, else on the same line."""
    try:
        top, _ = _Parser(text).fields(None)
    except _Unsupported:
        return None
    lists = [f for f in top if f.name == "model_config_list" and f.children is not None]
    if len(lists) != 1 or len(top) != 1:
        return None
    models = [c for c in lists[0].children
              if c.name == "config" and c.children is not None
              and (name := _last(c.children, "name")) is not None
              and _string_value(name) == model]
    if len(models) != 1:
        return None
    block = models[0]
    entries = [c for c in block.children if c.name == "version_labels"]
    if any(e.children is None for e in entries):
        return None
    keys = []
    for e in entries:
        key = _last(e.children, "key")
        keys.append("" if key is None else _string_value(key))
    if None in keys:
        return None
    hits = [e for e, key in zip(entries, keys, strict=True) if key == label]
    if hits:
        value = _last(hits[-1].children, "value")
        if value is None:  # value 0 by omission: give it one, after its last field
            at = hits[-1].children[-1].stmt_end if hits[-1].children else hits[-1].open_at + 1
            return f"{text[:at]} value: {version}{text[at:]}"
        if len(value.tokens) != 1 or value.tokens[0].kind != "word":
            return None
        token = value.tokens[0]
        return text[:token.start] + str(version) + text[token.end:]
    entry = f"version_labels {{ key: {_quote(label)} value: {version} }}"
    anchor = entries[-1] if entries else block.children[-1]
    if _starts_line(text, anchor.start) and not _after_on_line(text, anchor.stmt_end):
        line_end = text.find("\n", anchor.stmt_end)
        if line_end < 0:
            return None  # the block's closing brace is after it: not at the end of text
        newline = "\r\n" if text[line_end - 1] == "\r" else "\n"
        indent = text[_line_start(text, anchor.start):anchor.start]
        at = line_end + 1
        return f"{text[:at]}{indent}{entry}{newline}{text[at:]}"
    return f"{text[:anchor.stmt_end]} {entry}{text[anchor.stmt_end:]}"
