#!/usr/bin/env python3
"""The names a release publishes, derived from its git tag.

The release workflow (.github/workflows/release.yml) runs this first and
takes every version and registry path it uses from what it prints, so that
a tag can only publish what the repository says it is:

- the tag must be exactly "v" + the workspace version
  (Cargo.toml [workspace.package] version);
- every workspace crate inherits that version, and Cargo.lock records it
  (the images build with --locked);
- the chart's version and appVersion equal it (the chart's image tags
  default to appVersion; tests/release/version_drift.py checks the render).

Prints key=value lines for $GITHUB_OUTPUT: version, registry
(ghcr.io/<owner>, lowercased as ghcr.io requires) and chart-repo
(oci://ghcr.io/<owner>/charts). Exits 1 naming every disagreement.
"""

import argparse
import sys
import tomllib
from pathlib import Path

import yaml

REGISTRY_HOST = "ghcr.io"


class ReleaseError(Exception):
    pass


def workspace_version(root: Path) -> str:
    with open(root / "Cargo.toml", "rb") as fh:
        manifest = tomllib.load(fh)
    try:
        return manifest["workspace"]["package"]["version"]
    except KeyError:
        raise ReleaseError("Cargo.toml has no [workspace.package] version") from None


def member_packages(root: Path) -> dict[str, dict]:
    """Each workspace member's directory and its [package] table."""
    with open(root / "Cargo.toml", "rb") as fh:
        members = tomllib.load(fh)["workspace"].get("members", [])
    packages = {}
    for member in members:
        with open(root / member / "Cargo.toml", "rb") as fh:
            packages[member] = tomllib.load(fh).get("package", {})
    return packages


def crate_problems(root: Path, version: str) -> list[str]:
    """Members that do not carry the workspace version, in Cargo.toml or Cargo.lock."""
    problems = []
    names = {}
    for member, package in member_packages(root).items():
        names[package.get("name")] = member
        declared = package.get("version")
        if declared != {"workspace": True} and declared != version:
            problems.append(
                f"{member}/Cargo.toml: version {declared!r}, not version.workspace = true ({version})"
            )
    with open(root / "Cargo.lock", "rb") as fh:
        locked = tomllib.load(fh).get("package", [])
    for package in locked:
        # Workspace members are the lock entries without a source.
        if package.get("name") in names and "source" not in package and package.get("version") != version:
            problems.append(
                f"Cargo.lock: {package['name']} {package.get('version')}, the workspace is {version}"
                " (run cargo update --workspace)"
            )
    return problems


def chart_metadata(root: Path) -> dict:
    with open(root / "charts/mailrelay/Chart.yaml") as fh:
        return yaml.safe_load(fh)


def chart_problems(root: Path, version: str) -> list[str]:
    chart = chart_metadata(root)
    return [
        f"charts/mailrelay/Chart.yaml: {key} {chart.get(key)!r}, the workspace is {version}"
        for key in ("version", "appVersion")
        if str(chart.get(key)) != version
    ]


def repository_problems(root: Path) -> list[str]:
    """Every way the crates and the chart can disagree about the version."""
    version = workspace_version(root)
    return crate_problems(root, version) + chart_problems(root, version)


def derive(root: Path, tag: str, owner: str) -> dict[str, str]:
    """What a release of `tag` by `owner` publishes; ReleaseError on drift."""
    version = workspace_version(root)
    problems = repository_problems(root)
    if tag != f"v{version}":
        problems.insert(0, f"tag {tag!r} is not v{version}, the workspace version")
    if not owner:
        problems.append("no repository owner given")
    if problems:
        raise ReleaseError("\n".join(problems))
    registry = f"{REGISTRY_HOST}/{owner.lower()}"
    return {
        "version": version,
        "registry": registry,
        "chart-repo": f"oci://{registry}/charts",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[2])
    parser.add_argument("--tag", required=True, help="the git tag, e.g. v0.1.0")
    parser.add_argument("--owner", required=True, help="the GitHub repository owner")
    args = parser.parse_args()
    try:
        outputs = derive(args.root, args.tag, args.owner)
    except (ReleaseError, OSError, tomllib.TOMLDecodeError, yaml.YAMLError) as e:
        print(f"release_version: refusing to release:\n{e}", file=sys.stderr)
        return 1
    for key, value in outputs.items():
        print(f"{key}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
