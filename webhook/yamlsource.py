"""YAML in and out: documents with the line of every field, and readable block-style output."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from webhook.errors import InputError

Path = tuple[str | int, ...]

_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


@dataclass(slots=True)
class Document:
    """One YAML document: its value and the 1-based line where each field path starts."""

    value: Any
    line: int
    lines: dict[Path, int] = field(default_factory=dict)

    def line_of(self, path: Path) -> int:
        """The line of `path`, or of its nearest ancestor that has one."""
        for end in range(len(path), -1, -1):
            found = self.lines.get(path[:end])
            if found is not None:
                return found
        return self.line


def read_documents(path: str | os.PathLike[str], label: str) -> list[Document]:
    """The documents of the file at `path` (named `label` in errors); InputError says why it
    cannot be read or parsed."""
    try:
        text = pathlib.Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{label}: cannot read: {exc.strerror or exc}; fix or remove it") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{label}: cannot read: {exc}") from None
    return load_documents(text, label)


def load_documents(text: str, source: str) -> list[Document]:
    """Parse every document of `text`; `source` names the input in errors. Empty documents drop."""
    loader = _Loader(text)
    documents: list[Document] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            value = loader.construct_document(node)
            if value is None:
                continue
            lines: dict[Path, int] = {}
            _record_lines(node, (), lines)
            documents.append(Document(value, node.start_mark.line + 1, lines))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = exc.problem or exc.context or "invalid YAML"
        raise InputError(f"{where}: invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{source}: invalid YAML: {exc}") from None
    finally:
        loader.dispose()
    return documents


def _record_lines(node: yaml.Node, path: Path, lines: dict[Path, int]) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                child = (*path, key.value)
                lines[child] = key.start_mark.line + 1
                _record_lines(value, child, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _record_lines(item, (*path, index), lines)


def format_path(path: Path) -> str:
    """`("spec", "containers", 0, "name")` -> `spec.containers[0].name`."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


class _BlockDumper(_Dumper):  # type: ignore[misc,valid-type]
    """Writes multi-line strings as `|` blocks so injected scripts stay readable."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _represent_str)


def dump_documents(values: Iterator[Any] | list[Any]) -> str:
    """YAML for `values`, one document each, keys in their original order."""
    return yaml.dump_all(
        values,
        Dumper=_BlockDumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        explicit_start=True,
        width=100,
    )
