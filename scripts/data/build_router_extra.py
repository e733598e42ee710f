"""Build the extra router rows (questions about documents; prompts in many languages) from public repositories.

Every source is read from a git snapshot of its repository at a pinned commit (see ``training.extra_build.SOURCES``
and docs/router-data.md); nothing is downloaded here. Fetch the snapshots first, then:

    python scripts/data/build_router_extra.py --mirror-root /work/.mirror --out ../data/router-extra

A snapshot directory is ``<mirror-root>/<owner>+<name>/repo`` (a bare git directory); ``--mirror NAME=GIT_DIR``
points one source elsewhere. Sources whose snapshot is missing are skipped with a warning. The output (outside the
repository) is ``doc_qa.jsonl``, ``multilingual.jsonl``, ``manifest.json`` and ``SOURCES.md``.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
from pathlib import Path

from training.extra_build import SOURCES, BuildConfig, build
from training.extra_manifest import write
from training.extra_sources import Mirror

log = logging.getLogger("build_router_extra")


def has_commit(git_dir: Path, commit: str) -> bool:
    """Whether ``git_dir`` is a git directory holding ``commit``."""
    result = subprocess.run(
        ["git", "--git-dir", str(git_dir), "cat-file", "-e", f"{commit}^{{commit}}"], capture_output=True, check=False
    )
    return result.returncode == 0


def main(argv: list[str] | None = None) -> None:
    """Parse options, find the snapshots, build, write, print the summary."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mirror-root", type=Path, default=Path("/work/.mirror"))
    p.add_argument("--mirror", action="append", default=[], metavar="NAME=GIT_DIR", help="one source's git directory")
    p.add_argument("--out", type=Path, required=True, help="output directory (keep it outside the repository)")
    p.add_argument("--only", action="append", default=[], metavar="NAME", help="build only these sources")
    p.add_argument("--seed", type=int, default=BuildConfig().seed)
    p.add_argument("--cap-per-kind", type=int, default=BuildConfig().cap_per_kind)
    args = p.parse_args(argv)
    names = {s.name for s in SOURCES}
    given: dict[str, Path] = {}
    for item in args.mirror:
        name, _, path = item.partition("=")
        if name not in names or not path:
            p.error(f"--mirror: {item!r} is not NAME=GIT_DIR with NAME one of {', '.join(sorted(names))}")
        given[name] = Path(path)
    unknown = set(args.only) - names
    if unknown:
        p.error(f"--only: unknown source(s) {', '.join(sorted(unknown))}")
    if args.cap_per_kind < 1:
        p.error("--cap-per-kind must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    mirrors: dict[str, Mirror] = {}
    for source in SOURCES:
        if args.only and source.name not in args.only:
            continue
        git_dir = given.get(source.name, args.mirror_root / source.repo.replace("/", "+") / "repo")
        if not has_commit(git_dir, source.commit):
            log.warning("%s: no snapshot with commit %s at %s; skipped", source.name, source.commit[:12], git_dir)
            continue
        mirrors[source.name] = Mirror(str(git_dir), source.repo, source.commit)
    if not mirrors:
        p.error("no source snapshot found; fetch the repositories listed in docs/router-data.md first")
    config = BuildConfig(seed=args.seed, cap_per_kind=args.cap_per_kind)
    manifest = write(args.out, build(mirrors, config), mirrors)
    for family, info in manifest["families"].items():
        log.info(
            "%s: %d rows; lengths label 0 %s, label 1 %s", family, info["rows"], info["length_low"], info["length_high"]
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
