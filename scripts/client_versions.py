"""Print the versions of the client libraries the tests drive, as this environment resolved them.

    python scripts/client_versions.py [--lockfile tests/node/package-lock.json]

The test clients have floors only (README: "Dependency policy"), so each CI run tests the releases of its day;
`.ci/run` prints this before pytest so that a red run says which release moved. The Node SDK comes from its
lockfile (`npm ci`), so its version is read from there.
"""

from __future__ import annotations

import argparse
import json
from importlib import metadata
from pathlib import Path

# Distribution names, as pip spells them: the official OpenAI SDK, LangChain's client, the upstream library, and
# the clients of the other dialects (absent ones are reported, not an error: not every extra installs them).
PYTHON_CLIENTS = ("openai", "langchain-openai", "litellm", "anthropic", "openai-agents")
NODE_LOCKFILE = Path(__file__).resolve().parent.parent / "tests" / "node" / "package-lock.json"
NOT_INSTALLED = "not installed"


def python_versions() -> list[tuple[str, str]]:
    found = []
    for name in PYTHON_CLIENTS:
        try:
            found.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            found.append((name, NOT_INSTALLED))
    return found


def node_sdk_version(lockfile: Path) -> str:
    """The ``openai`` package's version in an npm lockfile (v2/v3 ``packages`` map, or v1 ``dependencies``)."""
    try:
        lock = json.loads(lockfile.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"no lockfile at {lockfile}"
    except (OSError, ValueError) as exc:
        return f"unreadable lockfile {lockfile}: {exc}"
    entry = (lock.get("packages") or {}).get("node_modules/openai") or (lock.get("dependencies") or {}).get("openai")
    if not isinstance(entry, dict) or not isinstance(entry.get("version"), str):
        return f"openai is not in {lockfile}"
    return str(entry["version"])


def report(lockfile: Path = NODE_LOCKFILE) -> str:
    rows = [*python_versions(), ("openai (Node, lockfile)", node_sdk_version(lockfile))]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {version}" for name, version in rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lockfile", type=Path, default=NODE_LOCKFILE, help="the Node tests' package-lock.json")
    args = parser.parse_args(argv)
    print("client versions under test:")
    print(report(args.lockfile))


if __name__ == "__main__":
    main()
