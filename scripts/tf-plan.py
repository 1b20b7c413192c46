#!/usr/bin/env python3
"""What `terraform apply` of terraform/ would create, offline: every resource instance (for_each expanded)
with its settings, and the outputs, from the parsed configuration and example variables.

The google provider cannot be downloaded here, so `terraform plan` cannot run; this evaluates the
configuration's own expressions (variables, locals, for_each, conditionals, for expressions, the functions
it uses) and leaves what only the provider knows, a resource's attributes, as references: a whole value
prints `(known after apply: google_compute_address.relay.address)`, a piece of a string `${...}`. Variable
validations are checked first, as terraform would.

    .venv/bin/python scripts/tf-plan.py [-var name=value ...] [--full | --brief]

Values print truncated to one line unless --full. A -var value is read as JSON when it parses (lists,
numbers), as a string otherwise."""
from __future__ import annotations

import argparse
import ipaddress
import itertools
import json
import pathlib
import re
import sys
from dataclasses import dataclass
from typing import Any

import hcl2

TERRAFORM = pathlib.Path(__file__).resolve().parent.parent / "terraform"
# the variables without a default, with values of the right shape (example.com is reserved for examples)
EXAMPLE_VARIABLES = {"project_id": "holepunch-demo", "domain": "rendezvous.example.com",
                     "relay_domain": "relay.example.com"}
_OPTIONS = hcl2.SerializationOptions(strip_string_quotes=False, explicit_blocks=True, with_comments=False)
_META = {"count", "for_each", "depends_on", "lifecycle", "provider", "provisioner", "connection"}


@dataclass(frozen=True)
class Unknown:
    """A value only the provider knows after apply; `text` is the expression that names it."""
    text: str


class EvalError(Exception):
    pass


# ---------------------------------------------------------------- expressions


_TOKEN = re.compile(r"""
    (?P<space>\s+)|(?P<number>\d+(?:\.\d+)?)|(?P<ident>[A-Za-z_][A-Za-z0-9_-]*)|(?P<string>")|
    (?P<op>=>|==|!=|>=|<=|&&|\|\||\[\*\]|\.\.\.|[-+*/%!<>?:.,()\[\]{}=])""", re.X)


def _tokens(text: str) -> list[tuple[str, str]]:
    out, i = [], 0
    while i < len(text):
        m = _TOKEN.match(text, i)
        if not m:
            raise EvalError(f"cannot read {text[i:i + 20]!r}")
        kind = m.lastgroup
        if kind == "string":
            end = _string_end(text, i)
            out.append(("template", text[i + 1:end]))
            i = end + 1
            continue
        if kind != "space":
            out.append((kind, m.group()))
        i = m.end()
    return out + [("end", "")]


def _string_end(text: str, start: int) -> int:
    """Index of the quote closing the string opened at start, past nested `${ "..." }`."""
    i, depth = start + 1, 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if text.startswith("${", i) or text.startswith("%{", i):
            depth += 1
            i += 2
            continue
        if depth and c == "}":
            depth -= 1
        elif depth and c == '"':
            i = _string_end(text, i)
        elif not depth and c == '"':
            return i
        i += 1
    raise EvalError("unterminated string")


class Parser:
    """HCL's expression syntax, as far as terraform/ uses it, evaluated while parsing against a scope."""

    def __init__(self, text: str, scope: "Scope"):
        self.tokens, self.at, self.scope, self.source = _tokens(text), 0, scope, text

    def peek(self, value: str | None = None) -> bool:
        return self.tokens[self.at][1] == value if value is not None else False

    def take(self, value: str | None = None) -> tuple[str, str]:
        token = self.tokens[self.at]
        if value is not None and token[1] != value:
            raise EvalError(f"expected {value!r}, found {token[1]!r} in {self.source!r}")
        self.at += 1
        return token

    def parse(self) -> Any:
        value = self.expression()
        self.take("")
        return value

    def expression(self) -> Any:
        condition = self.binary(0)
        if self.peek("?"):
            self.take("?")
            yes = self.expression()
            self.take(":")
            no = self.expression()
            if isinstance(condition, Unknown):
                return Unknown(self.source)
            return yes if condition else no
        return condition

    _LEVELS = [("||",), ("&&",), ("==", "!="), (">", "<", ">=", "<="), ("+", "-"), ("*", "/", "%")]

    def binary(self, level: int) -> Any:
        if level == len(self._LEVELS):
            return self.unary()
        left = self.binary(level + 1)
        while self.tokens[self.at][0] == "op" and self.tokens[self.at][1] in self._LEVELS[level]:
            op = self.take()[1]
            right = self.binary(level + 1)
            if isinstance(left, Unknown) or isinstance(right, Unknown):
                left = Unknown(self.source)
                continue
            left = {"||": lambda a, b: a or b, "&&": lambda a, b: a and b, "==": lambda a, b: a == b,
                    "!=": lambda a, b: a != b, ">": lambda a, b: a > b, "<": lambda a, b: a < b,
                    ">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, "+": lambda a, b: a + b,
                    "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b,
                    "%": lambda a, b: a % b}[op](left, right)
        return left

    def unary(self) -> Any:
        if self.peek("!") or self.peek("-"):
            op = self.take()[1]
            value = self.unary()
            return value if isinstance(value, Unknown) else (not value if op == "!" else -value)
        return self.postfix(self.primary())

    def postfix(self, value: Any, path: str = "") -> Any:
        while True:
            if self.peek("."):
                self.take(".")
                name = self.take()[1]
                path += "." + name
                value = value if isinstance(value, Unknown) else _index(value, name if not name.isdigit() else int(name))
            elif self.peek("["):
                self.take("[")
                key = self.expression()
                self.take("]")
                path += f"[{json.dumps(key) if not isinstance(key, Unknown) else key.text}]"
                value = value if isinstance(value, Unknown) else (Unknown(path) if isinstance(key, Unknown) else _index(value, key))
            else:
                return value

    def primary(self) -> Any:
        kind, text = self.take()
        if kind == "number":
            return float(text) if "." in text else int(text)
        if kind == "template":
            return template(text, self.scope)
        if text == "(":
            value = self.expression()
            self.take(")")
            return value
        if text == "[":
            return self.collection("]")
        if text == "{":
            return self.collection("}")
        if kind != "ident":
            raise EvalError(f"unexpected {text!r} in {self.source!r}")
        if text in ("true", "false", "null"):
            return {"true": True, "false": False, "null": None}[text]
        if self.peek("("):
            return self.call(text)
        return self.reference(text)

    def reference(self, root: str) -> Any:
        if root in self.scope.names:
            return self.scope.names[root]
        if root == "var" or root == "local":
            self.take(".")
            name = self.take()[1]
            return self.scope.variable(name) if root == "var" else self.scope.local(name)
        if root == "path":
            self.take(".")
            return {"module": str(TERRAFORM), "root": str(TERRAFORM), "cwd": str(TERRAFORM)}[self.take()[1]]
        # a resource's attribute: gather the traversal as text, the provider fills it in
        text = root
        while self.peek(".") or self.peek("["):
            if self.peek("."):
                self.take(".")
                text += "." + self.take()[1]
            else:
                self.take("[")
                key = self.expression()
                self.take("]")
                text += f"[{json.dumps(key)}]" if not isinstance(key, Unknown) else f"[{key.text}]"
        return Unknown(text)

    def collection(self, close: str) -> Any:
        if self.peek("for"):
            return self.for_expression(close)
        items: list = []
        mapping: dict = {}
        while not self.peek(close):
            if close == "]":
                items.append(self.expression())
            else:
                key_token = self.tokens[self.at]
                if key_token[0] == "ident" and self.tokens[self.at + 1][1] in ("=", ":"):
                    self.take()
                    key = key_token[1]
                else:
                    key = self.expression()
                self.take()  # = or :
                mapping[key] = self.expression()
            if self.peek(","):
                self.take(",")
        self.take(close)
        return items if close == "]" else mapping

    def for_expression(self, close: str) -> Any:
        self.take("for")
        names = [self.take()[1]]
        if self.peek(","):
            self.take(",")
            names.append(self.take()[1])
        self.take("in")
        collection = self.expression()
        self.take(":")
        body_start = self.at
        depth, end = 0, self.at  # find the end of the body to re-parse it once per element
        while True:
            value = self.tokens[end][1]
            if value in "([{" and value and self.tokens[end][0] == "op":
                depth += 1
            elif value in ")]}" and value and self.tokens[end][0] == "op":
                if depth == 0:
                    break
                depth -= 1
            end += 1
        body = self.tokens[body_start:end]
        self.at = end
        self.take(close)
        if isinstance(collection, Unknown):
            return Unknown(self.source)
        pairs = collection.items() if isinstance(collection, dict) else enumerate(collection)
        results_list, results_map = [], {}
        for key, element in pairs:
            bound = {names[0]: element} if len(names) == 1 else {names[0]: key, names[1]: element}
            sub = Parser("", self.scope.inner(bound))
            sub.tokens, sub.source = body + [("end", "")], self.source
            if close == "]":
                results_list.append(sub.expression())
            else:
                k = sub.expression()
                sub.take("=>")
                results_map[k] = sub.expression()
        return results_list if close == "]" else results_map

    def call(self, name: str) -> Any:
        self.take("(")
        args = []
        start = self.at
        if name == "can":  # can(expr): whether expr evaluates without error
            try:
                self.expression()
                ok = True
            except Exception:
                ok, depth = False, 0
                self.at = start
                while not (depth == 0 and self.peek(")")):
                    depth += {"(": 1, ")": -1}.get(self.tokens[self.at][1], 0)
                    self.at += 1
            self.take(")")
            return ok
        while not self.peek(")"):
            args.append(self.expression())
            if self.peek(","):
                self.take(",")
        self.take(")")
        if name not in FUNCTIONS or (name != "templatefile" and any(isinstance(a, Unknown) for a in args)):
            return Unknown(f"{name}(...)")
        return FUNCTIONS[name](*args)


def _index(value: Any, key: Any) -> Any:
    try:
        return value[key]
    except (KeyError, IndexError, TypeError) as error:
        raise EvalError(f"no {key!r} in {value!r}") from error


def _regex(pattern: str, text: str) -> Any:
    match = re.search(pattern, text)
    if not match:
        raise EvalError(f"{text!r} does not match {pattern!r}")
    return match.group()


def _templatefile(path: str, variables: dict) -> Any:
    text = pathlib.Path(path).read_text()
    return template(text, Scope({}, {}, {}).inner(variables))


FUNCTIONS = {
    "toset": lambda xs: sorted(set(xs), key=str), "length": len, "max": max, "min": min,
    "join": lambda sep, xs: Unknown(sep.join(_piece(x) for x in xs)) if any(isinstance(x, Unknown) for x in xs)
    else sep.join(_string(x) for x in xs),
    "contains": lambda xs, x: x in xs, "alltrue": lambda xs: all(xs), "regex": _regex,
    "cidrhost": lambda cidr, n: str(ipaddress.ip_network(cidr, strict=False)[n]),
    "setproduct": lambda *xs: [list(p) for p in itertools.product(*xs)],
    "file": lambda p: pathlib.Path(p).read_text(), "templatefile": _templatefile,
    "tostring": str, "lower": str.lower, "upper": str.upper, "jsonencode": json.dumps,
    "merge": lambda *ms: {k: v for m in ms for k, v in m.items()}, "keys": lambda m: sorted(m),
}


def template(text: str, scope: "Scope") -> Any:
    """A quoted string's contents: literal text and `${...}` interpolations (unknown pieces kept as text)."""
    pieces, i, literal = [], 0, []
    while i < len(text):
        if text.startswith("$${", i):
            literal.append("${")
            i += 3
        elif text.startswith("${", i):
            end = _interpolation_end(text, i + 2)
            value = scope.evaluate(text[i + 2:end])
            if literal:
                pieces.append("".join(literal))
                literal = []
            pieces.append(value)
            i = end + 1
        elif text[i] == "\\" and i + 1 < len(text):
            literal.append({"n": "\n", "t": "\t", '"': '"', "\\": "\\"}.get(text[i + 1], text[i + 1]))
            i += 2
        else:
            literal.append(text[i])
            i += 1
    if literal:
        pieces.append("".join(literal))
    if len(pieces) == 1 and not isinstance(pieces[0], str):
        return pieces[0]  # "${x}" is x itself, of x's type
    if any(isinstance(p, Unknown) for p in pieces):
        return Unknown("".join(_piece(p) for p in pieces))
    return "".join(_string(p) for p in pieces)


def _piece(value: Any) -> str:
    """A value inside a string, an unknown one as the interpolation that will fill it in."""
    if isinstance(value, Unknown):
        return value.text if "${" in value.text else "${" + value.text + "}"
    return _string(value)


def _string(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _interpolation_end(text: str, start: int) -> int:
    i, depth = start, 0
    while i < len(text):
        c = text[i]
        if c == '"':
            i = _string_end(text, i)
        elif c == "{":
            depth += 1
        elif c == "}":
            if depth == 0:
                return i
            depth -= 1
        i += 1
    raise EvalError("unterminated interpolation")


class Scope:
    def __init__(self, variables: dict, locals_source: dict, names: dict):
        self.variables, self.locals_source, self.names = variables, locals_source, names
        self._locals: dict[str, Any] = {}

    def inner(self, names: dict) -> "Scope":
        scope = Scope(self.variables, self.locals_source, {**self.names, **names})
        scope._locals = self._locals
        return scope

    def variable(self, name: str) -> Any:
        if name not in self.variables:
            raise EvalError(f"var.{name} has no value: give it with -var {name}=...")
        return self.variables[name]

    def local(self, name: str) -> Any:
        if name not in self._locals:
            self._locals[name] = Scope(self.variables, self.locals_source, {}).value(self.locals_source[name])
        return self._locals[name]

    def evaluate(self, expression: str) -> Any:
        return Parser(expression, self).parse()

    def value(self, raw: Any) -> Any:
        """An attribute value as python-hcl2 serialises it: `${expr}`, `"template"`, or lists and objects of them."""
        if isinstance(raw, str):
            if raw.startswith("${") and raw.endswith("}") and _interpolation_end(raw, 2) == len(raw) - 1:
                return self.evaluate(raw[2:-1])
            if raw.startswith('"') and raw.endswith('"'):
                body = raw[1:-1]
                heredoc = re.fullmatch(r"<<-?(\w+)\n(.*)\n\s*\1", body, re.S)
                return template(heredoc.group(2) + "\n" if heredoc else body, self)
            return raw
        if isinstance(raw, list):
            return [self.value(item) for item in raw]
        if isinstance(raw, dict):
            return {_unquote(k): self.value(v) for k, v in raw.items() if k != "__is_block__"}
        return raw


def _unquote(key: str) -> str:
    return key[1:-1] if len(key) >= 2 and key[0] == key[-1] == '"' else key


# ---------------------------------------------------------------- the plan


def load(directory: pathlib.Path) -> dict[str, list]:
    sections: dict[str, list] = {}
    for path in sorted(directory.glob("*.tf")):
        for section, items in hcl2.loads(path.read_text(), serialization_options=_OPTIONS).items():
            sections.setdefault(section, []).extend(items)
    return sections


def variables_of(sections: dict, given: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    values, problems = {}, []
    for labelled in sections.get("variable", []):
        for quoted, spec in labelled.items():
            name = _unquote(quoted)
            if name in given:
                values[name] = given[name]
            elif "default" in spec:
                values[name] = Scope({}, {}, {}).value(spec["default"])
    for labelled in sections.get("variable", []):
        for quoted, spec in labelled.items():
            name = _unquote(quoted)
            if name not in values:
                problems.append(f"var.{name} has no value: give it with -var {name}=...")
                continue
            scope = Scope(values, {}, {})
            for rule in spec.get("validation", []):
                if scope.value(rule["condition"]) is not True:
                    problems.append(f"var.{name} = {values[name]!r}: {scope.value(rule['error_message'])}")
    return values, problems


def render(value: Any, full: bool, top: bool = True) -> str:
    if isinstance(value, Unknown):
        text = json.dumps(value.text) if "${" in value.text else f"(known after apply: {value.text})"
    elif isinstance(value, str):
        text = json.dumps(value)
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    elif isinstance(value, list):
        text = "[" + ", ".join(render(v, full, False) for v in value) + "]"
    elif isinstance(value, dict):
        text = "{" + ", ".join(f"{k} = {render(v, full, False)}" for k, v in value.items()) + "}"
    else:
        text = str(value)
    return text if full or len(text) <= 100 else text[:97] + "..."


def body_lines(body: dict, scope: Scope, full: bool, indent: str, top: bool) -> list[str]:
    lines = []
    for key, raw in body.items():
        if key == "__is_block__" or (top and key in _META):
            continue
        if key == "dynamic":
            for labelled in raw:
                for quoted, dynamic in labelled.items():
                    name = _unquote(quoted)
                    each = scope.value(dynamic["for_each"])
                    items = each.items() if isinstance(each, dict) else enumerate(each)
                    for k, v in items:
                        inner = scope.inner({name: {"key": k, "value": v}})
                        for content in dynamic.get("content", []):
                            lines.append(f"{indent}{name} {{")
                            lines += body_lines(content, inner, full, indent + "  ", False)
                            lines.append(f"{indent}}}")
        elif isinstance(raw, list) and raw and all(isinstance(b, dict) and b.get("__is_block__") for b in raw):
            for block in raw:
                inner = body_lines(block, scope, full, indent + "  ", False)
                lines += [f"{indent}{key} {{", *inner, f"{indent}}}"] if inner else [f"{indent}{key} {{}}"]
        else:
            lines.append(f"{indent}{key} = {render(scope.value(raw), full)}")
    return lines


def brief_line(address: str, body: dict, instances: list[tuple[str, Scope]]) -> str:
    """One line for a resource block: its for_each keys, and the top-level settings known before apply that
    all its instances share."""
    keys = [instance[len(address):].strip('[]"') for instance, _ in instances]
    head = f"  + {address}" + (f" ×{len(keys)} [{', '.join(keys)}]" if "for_each" in body else "")
    settings = []
    for key, raw in body.items():
        if key in _META or key in ("__is_block__", "dynamic") or (
                isinstance(raw, list) and raw and all(isinstance(b, dict) and b.get("__is_block__") for b in raw)):
            continue
        values = [scope.value(raw) for _, scope in instances]
        if any(isinstance(v, Unknown) or v != values[0] for v in values) or isinstance(values[0], dict):
            continue
        text = render(values[0], False)
        if len(text) <= 48:
            settings.append(f"{key}={text}")
    line = head + (": " + " ".join(settings) if settings else "")
    return line if len(line) <= 200 else line[:197] + "..."


def plan(directory: pathlib.Path, given: dict[str, Any], full: bool = False,
         brief: bool = False) -> tuple[list[str], bool]:
    sections = load(directory)
    variables, problems = variables_of(sections, given)
    if problems:
        return [f"error: {p}" for p in problems], False
    locals_source = {k: v for block in sections.get("locals", []) for k, v in block.items() if k != "__is_block__"}
    scope = Scope(variables, locals_source, {})
    shown = ", ".join(f"{k} = {render(v, True)}" for k, v in sorted(variables.items()))
    lines, count = [f"Offline plan of {directory.name}/ with {shown}", ""], 0
    for labelled in sections.get("resource", []):
        for quoted_kind, named in labelled.items():
            for quoted_name, body in named.items():
                address = f"{_unquote(quoted_kind)}.{_unquote(quoted_name)}"
                if "for_each" in body:
                    each = scope.value(body["for_each"])
                    instances = [(f'{address}["{k}"]', scope.inner({"each": {"key": k, "value": v}}))
                                 for k, v in (sorted(each.items()) if isinstance(each, dict) else ((x, x) for x in each))]
                elif "count" in body:  # count = cond ? 1 : 0 picks a mode's resources (redis_mode)
                    number = scope.value(body["count"])
                    if isinstance(number, Unknown):
                        instances = [(f"{address}[?]", scope)]
                    else:
                        instances = [(f"{address}[{i}]", scope.inner({"count": {"index": i}}))
                                     for i in range(int(number))]
                    if not instances:
                        continue
                else:
                    instances = [(address, scope)]
                count += len(instances)
                if brief:
                    lines.append(brief_line(address, body, instances))
                    continue
                for instance, inner in instances:
                    lines += [f"  + {instance}", *body_lines(body, inner, full, "      ", True), ""]
    lines += [""] if brief else []
    lines.append(f"Plan: {count} to add, 0 to change, 0 to destroy.")
    lines += ["", "Outputs:"]
    for labelled in sections.get("output", []):
        for quoted, spec in labelled.items():
            value = "(sensitive value)" if spec.get("sensitive") is True else render(scope.value(spec["value"]), full)
            lines.append(f"  {_unquote(quoted)} = {value}")
    return lines, True


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-var", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--full", action="store_true", help="values in full, not cut at 100 characters")
    parser.add_argument("--brief", action="store_true",
                        help="one line a resource: its for_each keys and top-level settings known before apply")
    parser.add_argument("--dir", type=pathlib.Path, default=TERRAFORM)
    args = parser.parse_args(argv)
    given = dict(EXAMPLE_VARIABLES)
    for assignment in args.var:
        name, _, text = assignment.partition("=")
        try:
            given[name] = json.loads(text)
        except ValueError:
            given[name] = text
    lines, ok = plan(args.dir, given, args.full, args.brief)
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
