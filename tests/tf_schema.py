"""Schema validation of terraform/ against the google provider's own schema, offline: what `terraform
validate` would say about resource types, arguments, nested blocks and literal types, without the provider
binary (which cannot be downloaded here).

Where the schema comes from: the prebuilt CDK Terrain bindings of the provider on PyPI carry a jsii
assembly (`_jsii/*.jsii.tgz`, a `.jsii` JSON) generated from the provider's `terraform providers schema`.
In it, each resource or data source is a class whose docs link to its registry page and name the terraform
type (`Represents a {@link .../docs/resources/redis_instance google_redis_instance}`); its `Config` struct
lists the arguments, `optional` unless the provider requires them; every property's docs end with
`Docs at Terraform Registry: {@link ...#memory_size_gb RedisInstance#memory_size_gb}`, which names the
terraform attribute: that link is used rather than converting camelCase back, because the conversion is
lossy (`hugepageSize1G` is `hugepage_size_1g`; `build` became `buildAttribute`). A nested block with
max_items = 1 is typed as the struct itself; any other block as `IResolvable | Struct[]`.

The reduced schema is cached under ~/.cache/holepunch-services/terraform-schema/, outside the clone, so
the 67 MB wheel is downloaded once. Only the google and google-beta providers are checked; random_* and
other providers' resources are skipped. Run as a script: `--fetch` downloads what is missing and exits;
without it, prints the problems found in terraform/."""
from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from typing import Any

import hcl2

TERRAFORM = pathlib.Path(__file__).resolve().parent.parent / "terraform"
# The provider versions the schemas carry: cdktn-provider-google 21.1.0 is hashicorp/google 8.7.0.
# terraform/versions.tf must pin a range that admits it (checked by pin_problems).
PACKAGES = {
    "google": ("cdktn-provider-google", "21.1.0"),
    "google-beta": ("cdktn-provider-google-beta", "21.1.0"),
}
CACHE = pathlib.Path.home() / ".cache" / "holepunch-services" / "terraform-schema"
# bump when the reduced format below changes, so an old cache is not read with new code
_FORMAT = 1
_META_ARGUMENTS = {"count", "for_each", "depends_on", "lifecycle", "provider", "provisioner", "connection"}
_ATTRIBUTE_LINK = re.compile(r"\{@link \S+ [A-Za-z0-9_]+#([A-Za-z0-9_]+)\}")
_TYPE_LINK = re.compile(r"\{@link \S+/(\d+\.\d+\.\d+)/docs/(resources|data-sources)/\S+ ([a-z0-9_]+)\}")
_OPTIONS = hcl2.SerializationOptions(strip_string_quotes=False, explicit_blocks=True, with_comments=False)


class SchemaUnavailable(RuntimeError):
    """The provider schema is neither cached nor downloadable: the validation cannot run, which is a
    failure, never a reason to skip."""


# ---------------------------------------------------------------- the schema: fetch, reduce, cache


def cache_path(provider: str) -> pathlib.Path:
    package, version = PACKAGES[provider]
    return CACHE / f"{package}-{version}.v{_FORMAT}.json"


def fetch(provider: str) -> pathlib.Path:
    """The reduced schema's path, downloading and reducing the package's assembly unless cached."""
    path = cache_path(provider)
    if path.exists():
        return path
    package, version = PACKAGES[provider]
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
        pip = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
             "--dest", scratch, f"{package}=={version}"],
            capture_output=True, text=True)
        wheels = list(pathlib.Path(scratch).glob("*.whl"))
        if pip.returncode != 0 or not wheels:
            raise SchemaUnavailable(
                f"cannot download {package}=={version} from PyPI for the {provider} provider schema "
                f"(pip exit {pip.returncode}): {pip.stderr.strip()[-800:]}")
        reduced = reduce_assembly(_read_assembly(wheels[0]))
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(reduced))
    tmp.replace(path)
    return path


def _read_assembly(wheel: pathlib.Path) -> dict:
    with zipfile.ZipFile(wheel) as archive:
        names = [n for n in archive.namelist() if n.endswith(".jsii.tgz")]
        if len(names) != 1:
            raise SchemaUnavailable(f"{wheel.name} holds {len(names)} jsii assemblies, expected one")
        with archive.open(names[0]) as packed, tarfile.open(fileobj=packed, mode="r|gz") as tar:
            for member in tar:
                if member.name == "package/.jsii":
                    return json.load(tar.extractfile(member))
    raise SchemaUnavailable(f"{wheel.name}: no package/.jsii in {names[0]}")


def reduce_assembly(assembly: dict) -> dict:
    """Keep what validation needs: {version, provider, resources, data_sources: type -> struct key,
    structs: key -> {attrs: name -> [type, required], blocks: name -> [struct key, single, required]}}."""
    types = assembly["types"]
    structs: dict[str, dict] = {}
    unlinked: list[str] = []

    def struct(fqn: str) -> str:
        if fqn not in structs:
            structs[fqn] = {"attrs": {}, "blocks": {}}
            for prop in types[fqn].get("properties", []):
                links = _ATTRIBUTE_LINK.findall(json.dumps(prop.get("docs", {})))
                if links:
                    name = links[-1]
                else:
                    # 2 of 36,069 in 8.7.0: docs cut short by a `*/` inside them (pubsub's JavaScript UDF
                    # `code`); there camelCase back to snake_case is right
                    name = re.sub(r"(?<!^)([A-Z])", r"_\1", prop["name"]).lower()
                    unlinked.append(f"{fqn}.{prop['name']}")
                required, kind = not prop.get("optional", False), prop["type"]
                block = _block_of(kind, types)
                if block:
                    structs[fqn]["blocks"][name] = [struct(block[0]), block[1], required]
                else:
                    structs[fqn]["attrs"][name] = [_value_type(kind), required]
        return fqn

    reduced: dict[str, Any] = {"version": None, "resources": {}, "data_sources": {}, "structs": structs}
    for fqn, kind in types.items():
        base = kind.get("base")
        config = kind.get("initializer", {}).get("parameters", [{}])[-1].get("type", {}).get("fqn")
        if base == "cdktn.TerraformProvider":
            reduced["provider"] = struct(config)
        if base not in ("cdktn.TerraformResource", "cdktn.TerraformDataSource"):
            continue
        link = _TYPE_LINK.search(kind["docs"]["summary"])
        if not link:
            raise SchemaUnavailable(f"{fqn}: its docs do not name a terraform type")
        version, section, tf_type = link.groups()
        reduced["version"] = reduced["version"] or version
        reduced["resources" if section == "resources" else "data_sources"][tf_type] = struct(config)
    if len(unlinked) > 100:
        # a generator that stopped linking attributes would leave the names to a lossy guess: look first
        raise SchemaUnavailable(f"{len(unlinked)} properties name no terraform attribute, e.g. {unlinked[:3]}")
    reduced["guessed_names"] = unlinked
    return reduced


def _block_of(kind: dict, types: dict) -> tuple[str, bool] | None:
    """(struct, single) when the property is a nested block: the struct itself when max_items = 1."""
    if types.get(kind.get("fqn"), {}).get("datatype"):
        return kind["fqn"], True
    for member in kind.get("union", {}).get("types", []):
        element = member.get("collection", {}).get("elementtype", {})
        if types.get(element.get("fqn"), {}).get("datatype"):
            return element["fqn"], False
    return None


def _value_type(kind: dict) -> str:
    if "primitive" in kind:
        return {"boolean": "bool", "string": "string", "number": "number"}.get(kind["primitive"], "any")
    if "collection" in kind:
        outer = "list" if kind["collection"]["kind"] == "array" else "map"
        return f"{outer}({_value_type(kind['collection']['elementtype'])})"
    if "union" in kind:  # `boolean | IResolvable` and the like: the IResolvable half is any expression
        concrete = [_value_type(t) for t in kind["union"]["types"] if t.get("fqn") != "cdktn.IResolvable"]
        return concrete[0] if len(concrete) == 1 else "any"
    return "any"


@dataclass
class Schema:
    version: str
    resources: dict[str, str]
    data_sources: dict[str, str]
    provider: str
    structs: dict[str, dict] = field(repr=False)


def load(provider: str) -> Schema:
    data = json.loads(fetch(provider).read_text())
    return Schema(data["version"], data["resources"], data["data_sources"], data["provider"], data["structs"])


# ---------------------------------------------------------------- the pin


def admits(constraint: str, version: str) -> bool:
    """Terraform's version constraint syntax (`~> 8.7`, `>= 6, < 9`, `= 8.7.0`)."""
    def parts(text: str) -> tuple[int, ...]:
        return tuple(int(p) for p in text.split("."))

    have = parts(version)
    for clause in constraint.split(","):
        op, wanted = re.fullmatch(r"\s*(~>|>=|<=|!=|=|>|<)?\s*([\d.]+)\s*", clause).groups()
        want = parts(wanted)
        padded = want + (0,) * (len(have) - len(want))
        if op == "~>":
            prefix = want[:-1] if len(want) > 1 else want
            if have < padded or have[:len(prefix)] != prefix:
                return False
        elif not {None: have == padded, "=": have == padded, "!=": have != padded, ">": have > padded,
                  ">=": have >= padded, "<": have < padded, "<=": have <= padded}[op]:
            return False
    return True


def pins(directory: pathlib.Path) -> dict[str, str]:
    """provider local name -> version constraint, from required_providers (strings only)."""
    found = {}
    for path in sorted(directory.glob("*.tf")):
        for terraform in hcl2.loads(path.read_text(), serialization_options=_OPTIONS).get("terraform", []):
            for required in terraform.get("required_providers", []):
                for name, spec in required.items():
                    if isinstance(spec, dict) and "version" in spec:
                        found[name] = _unquote(spec["version"])
    return found


def pin_problems(directory: pathlib.Path, schemas: "Schemas") -> list[str]:
    problems = []
    for provider, constraint in pins(directory).items():
        if provider in PACKAGES and provider in schemas.used:
            version = schemas.get(provider).version
            if not admits(constraint, version):
                problems.append(f"versions.tf pins {provider} {constraint!r}, but the schema checked here is "
                                f"{version}: move the pin or the schema package in tests/tf_schema.py")
    return problems


# ---------------------------------------------------------------- the configuration


class Schemas:
    """Each provider's schema, loaded (and downloaded) only when the configuration uses it."""

    def __init__(self):
        self._loaded: dict[str, Schema] = {}
        self.used: set[str] = set()

    def get(self, provider: str) -> Schema:
        self.used.add(provider)
        if provider not in self._loaded:
            self._loaded[provider] = load(provider)
        return self._loaded[provider]


def _unquote(value: Any) -> Any:
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _is_block(value: Any) -> bool:
    return isinstance(value, dict) and value.get("__is_block__") is True


def _provider_of(kind: str, body: dict) -> str | None:
    """The provider (local name) a resource uses: its `provider` meta-argument, else its type's prefix."""
    if "provider" in body:
        return re.sub(r"\$\{|\}", "", str(body["provider"])).split(".")[0]
    return kind.split("_")[0]


def validate(directory: pathlib.Path = TERRAFORM, schemas: Schemas | None = None) -> list[str]:
    """Every problem `terraform validate` would report about google/google-beta resources, data sources
    and provider blocks in directory/*.tf, as "file: where: what"."""
    schemas = schemas or Schemas()
    problems: list[str] = []
    for path in sorted(directory.glob("*.tf")):
        parsed = hcl2.loads(path.read_text(), serialization_options=_OPTIONS)
        for section, catalogue in (("resource", "resources"), ("data", "data_sources")):
            for labelled in parsed.get(section, []):
                for quoted_kind, named in labelled.items():
                    kind = _unquote(quoted_kind)
                    for quoted_name, body in named.items():
                        provider = _provider_of(kind, body)
                        if provider not in PACKAGES:
                            continue  # random_*, etc.: no schema here
                        schema = schemas.get(provider)
                        where = f"{path.name}: {section} {kind}.{_unquote(quoted_name)}"
                        struct = getattr(schema, catalogue).get(kind)
                        if struct is None:
                            problems.append(f"{where}: the {provider} provider {schema.version} has no "
                                            f"{'resource' if section == 'resource' else 'data source'} {kind}")
                            continue
                        problems += _check_body(body, struct, schema, where, top=True)
        for labelled in parsed.get("provider", []):
            for quoted_name, body in labelled.items():
                provider = _unquote(quoted_name)
                if provider in PACKAGES:
                    schema = schemas.get(provider)
                    problems += _check_body(body, schema.provider, schema, f"{path.name}: provider {provider}",
                                            top=True)
    return pin_problems(directory, schemas) + problems


def _check_body(body: dict, struct_key: str, schema: Schema, where: str, top: bool = False) -> list[str]:
    struct = schema.structs[struct_key]
    attrs, blocks = struct["attrs"], struct["blocks"]
    problems: list[str] = []
    appearances: dict[str, int] = {}

    def nested(name: str, content: dict, label: str) -> None:
        appearances[name] = appearances.get(name, 0) + 1
        problems.extend(_check_body(content, blocks[name][0], schema, f"{where}: {label}"))

    for key, value in body.items():
        if key == "__is_block__" or (top and key in _META_ARGUMENTS):
            continue
        if key == "dynamic":
            # `dynamic "rule" { content { ... } }` is the block `rule`, written any number of times; counted
            # once, so a single-appearance block given both statically and dynamically is still caught
            for labelled in value:
                for quoted_label, dynamic in labelled.items():
                    name = _unquote(quoted_label)
                    if name not in blocks:
                        problems.append(f"{where}: dynamic {name!r} is not a nested block of this type"
                                        + _did_you_mean(name, attrs, blocks))
                        continue
                    for content in dynamic.get("content", []):
                        nested(name, content, f"dynamic {name}")
        elif key in blocks:
            items = value if isinstance(value, list) else [value]
            for item in items:
                if _is_block(item):
                    nested(key, item, key)
                elif isinstance(item, dict):
                    # attribute syntax (`key = {...}`): what plugin-framework nested attributes use; the
                    # assembly does not tell them from blocks, so both are accepted
                    nested(key, item, key)
                else:
                    appearances[key] = appearances.get(key, 0) + 1  # an expression: contents unknown
        elif key in attrs:
            if isinstance(value, list) and value and all(_is_block(v) for v in value):
                problems.append(f"{where}: {key!r} is an argument, not a block: write `{key} = ...`")
                continue
            wrong = _literal_problem(value, attrs[key][0])
            if wrong:
                problems.append(f"{where}: {key} = {_show(value)}: {wrong}")
        else:
            problems.append(f"{where}: {key!r} is not an argument or block of this type"
                            + _did_you_mean(key, attrs, blocks))
    for name, (_, required) in attrs.items():
        if required and name not in body:
            problems.append(f"{where}: the required argument {name!r} is missing")
    for name, (_, single, required) in blocks.items():
        count = appearances.get(name, 0)
        if required and count == 0:
            problems.append(f"{where}: the required block {name!r} is missing")
        if single and count > 1:
            problems.append(f"{where}: block {name!r} may appear once (max items 1), it appears {count} times")
    return problems


def _did_you_mean(name: str, attrs: dict, blocks: dict) -> str:
    import difflib
    close = difflib.get_close_matches(name, [*attrs, *blocks], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def _literal_problem(value: Any, expected: str) -> str | None:
    """Why a literal cannot be converted to the argument's type, with terraform's conversions (a number or
    bool converts to a string, "443" to a number, "true" to a bool); None for expressions and for fits."""
    if expected == "any" or value is None:
        return None
    outer, _, inner = expected.partition("(")
    inner = inner.rstrip(")")
    if isinstance(value, str):
        if value.startswith("${") and value.endswith("}"):
            return None  # an expression: its type is known only to terraform
        text = _unquote(value)
        if "${" in text or "%{" in text:
            return None  # a template: `"${var.port}"` keeps the variable's value and type
        if outer in ("list", "map"):
            return f"a string where a {expected} is expected"
        if outer == "number":
            try:
                float(text)
            except ValueError:
                return "a string that is not a number, where a number is expected"
        if outer == "bool" and text not in ("true", "false"):
            return 'a string where a bool is expected (only "true" and "false" convert)'
        return None
    if isinstance(value, bool):
        if outer in ("number", "list", "map"):
            return f"a bool where a {expected} is expected"
        return None
    if isinstance(value, (int, float)):
        if outer in ("bool", "list", "map"):
            return f"a number where a {expected} is expected"
        return None
    if isinstance(value, list):
        if outer != "list":
            return f"a list where a {expected} is expected"
        for element in value:
            wrong = _literal_problem(element, inner)
            if wrong:
                return f"element {_show(element)}: {wrong}"
        return None
    if isinstance(value, dict):
        if outer != "map":
            return f"an object where a {expected} is expected"
        for key, element in value.items():
            wrong = _literal_problem(element, inner)
            if wrong:
                return f"key {_unquote(key)}: {wrong}"
    return None


def main(argv: list[str]) -> int:
    if "--fetch" in argv:
        for provider in sorted(set(pins(TERRAFORM)) & set(PACKAGES)):
            cached = cache_path(provider).exists()
            try:
                print(f"{provider}: {fetch(provider)}{' (cached)' if cached else ''}", file=sys.stderr)
            except SchemaUnavailable as error:
                print(f"{provider}: {error}", file=sys.stderr)
                return 1
        return 0
    problems = validate()
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
