"""``python -m vlm_envs.evaluation [--write] [NAME ...]``: check (or rebuild) the shipped manifests."""

from __future__ import annotations

import argparse
import sys

from vlm_envs.evaluation.manifests import BUILDERS, manifests_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlm_envs.evaluation",
                                     description="Build the shipped manifests and compare them with the files (or --write them).")
    parser.add_argument("names", nargs="*", default=list(BUILDERS), help=f"default: all ({', '.join(BUILDERS)})")
    parser.add_argument("--write", action="store_true", help="write the files instead of checking them")
    args = parser.parse_args(argv)
    stale = 0
    for name in args.names:
        if name not in BUILDERS:
            parser.error(f"unknown manifest {name!r}; buildable: {', '.join(BUILDERS)}")
        manifest = BUILDERS[name]()
        path = manifests_dir() / f"{name}.json"
        if args.write:
            path.write_text(manifest.to_json())
            print(f"wrote {path} ({len(manifest.episodes)} episodes, sha256 {manifest.sha256})")
        elif not path.exists() or path.read_text() != manifest.to_json():
            stale += 1
            print(f"{path} differs from what the builder makes")
        else:
            print(f"{name}: up to date ({len(manifest.episodes)} episodes, sha256 {manifest.sha256})")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
