"""The config on disk: YAML read with errors that point at the line to fix, and written with comments.

PyYAML's own errors name where the parser gave up, which for an unclosed bracket is lines past the
mistake, and it keeps the last of two equal keys without a word; this module reads a config file
into a plain dict (validating it is core.config's job) and words every such problem as a message
and a hint. It imports nothing from core.config, which calls it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from core.errors import UserError


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error: PyYAML keeps
    the last one silently, so `lr` set twice would lose the first value without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: the base class says so
                continue
            if first is not key_node.start_mark:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} appears a second time (first at line {first.line + 1})",
                    key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


_OPENED = {"a flow sequence": "[...] list", "a flow mapping": "{...} mapping", "a quoted scalar": "quoted text"}
"""PyYAML's names for what a bracket or quote opens, in the words of someone writing a config."""


def _yaml_error(path: Path, text: str, err: yaml.YAMLError) -> UserError:
    """A YAML error at the line to look at: where an unclosed bracket, quote or flow began (PyYAML's
    context mark), else where the parser stopped (its problem mark, e.g. a bad indentation)."""
    if isinstance(err, yaml.reader.ReaderError):  # a control character: no marks, a position
        line = text.count("\n", 0, err.position) + 1
        return UserError(f"YAML syntax error in {path} at line {line}: {err.reason} (#x{err.character:04x})",
                         f"delete that character from line {line}")
    problem = getattr(err, "problem", None) or str(err)
    context, opened, stopped = (getattr(err, name, None) for name in ("context", "context_mark", "problem_mark"))
    if not (context or "").startswith(("while parsing a flow", "while scanning a")):
        opened = None  # e.g. "while parsing a block mapping": the whole file, not the line to fix
    mark = opened or stopped
    if mark is None:
        return UserError(f"YAML syntax error in {path}: {problem}", "fix the YAML; `sft-tui init` writes an example")
    where = f"line {mark.line + 1}, column {mark.column + 1}"
    if opened is not None:
        noun = context.removeprefix("while parsing ").removeprefix("while scanning ")
        at = ("the end of the file" if stopped is None or stopped.index >= len(text)
              else f"line {stopped.line + 1}, column {stopped.column + 1}")
        problem = f"in the {_OPENED.get(noun, noun.partition(' ')[2])} that starts there, {problem} (at {at})"
    if "'\\t'" in problem:
        hint = "indent with spaces: YAML does not allow tabs"
    elif "a second time" in problem:
        hint = "keep one of the two, and delete the other"
    elif "for the tag" in problem:
        hint = f"remove the `!` tag on line {mark.line + 1}: a config holds plain values"
    else:
        hint = f"fix line {mark.line + 1}: indent with spaces, close every bracket and quote, write `key: value`"
    return UserError(f"YAML syntax error in {path} at {where}: {problem}", hint)



def read_config_file(path: Path) -> dict[str, Any]:
    """The mapping a YAML config file holds, not yet validated; every way the file itself is wrong
    (missing, not text, not YAML, empty, not a mapping) is a UserError naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist",
                        "check the path, or write one with `sft-tui init`") from None
    except UnicodeDecodeError:
        raise UserError(f"config file {path} is not UTF-8 text", "save it as UTF-8") from None
    except IsADirectoryError:
        raise UserError(f"config file {path} is a folder", "pass a YAML file (`sft-tui init` writes one)") from None
    except OSError as err:
        raise UserError(f"cannot read config file {path}: {err.strerror}",
                        "check the path and its permissions") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        raise _yaml_error(path, text, err) from None
    if data is None:
        raise UserError(f"config file {path} holds no settings (it is empty or only comments)",
                        "write the settings into it; `sft-tui init` writes an example with every field")
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of sections (task, model, data, ...), "
                        f"not a {type(data).__name__}",
                        "write `section:` lines with `key: value` fields below; `sft-tui init` writes an example")
    return data


def commented_yaml(config: BaseModel) -> str:
    """YAML of the config with each field's docstring as a comment above it (`sft-tui init`)."""
    out: list[str] = []

    def emit(model: BaseModel, indent: int) -> None:
        pad = "  " * indent
        for name, field in type(model).model_fields.items():
            value = getattr(model, name)
            if field.description:
                out.extend(f"{pad}# {line.strip()}" for line in field.description.split("\n") if line.strip())
            if isinstance(value, BaseModel):
                out.append(f"{pad}{name}:")
                emit(value, indent + 1)
            else:
                dumped = yaml.safe_dump({name: _plain(value)}, sort_keys=False, default_flow_style=False)
                out.extend(pad + line for line in dumped.rstrip("\n").split("\n"))

    emit(config, 0)
    return "\n".join(out) + "\n"


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
