#!/usr/bin/env python3
"""The version-drift test: what a release publishes is what the chart runs.

The rule: there is one version, the workspace's ([workspace.package] version
in Cargo.toml), V. A release is the git tag vV and nothing else.
- Every crate inherits V and Cargo.lock records it.
- The chart's version and appVersion are V.
- The images the chart renders (the operator's Deployment and its
  --default-image for relay pods) are exactly the images the release
  workflow pushes for the upstream owner: ghcr.io/<owner>/<component>:V for
  each component it builds, the owner being the one in
  [workspace.package] repository.
- The release workflow runs on v* tags, takes its version and registry only
  from .github/scripts/release_version.py (which refuses a tag other than
  vV and a repository that disagrees with itself), and tags the images
  and the chart with that version.

Run by tests/run with --helm (the chart is rendered, not read). It checks
the repository, then checks copies with one thing changed each, every one of
which must fail for the reason it was made for; exit 1 otherwise.
"""

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / ".github/scripts"))
import release_version  # noqa: E402

WORKFLOW = ".github/workflows/release.yml"
META = "${{ needs.meta.outputs.%s }}"


def upstream_owner(root: Path) -> str:
    with open(root / "Cargo.toml", "rb") as fh:
        url = tomllib.load(fh)["workspace"]["package"].get("repository", "")
    m = re.fullmatch(r"https://github\.com/([^/]+)/[^/]+", url)
    if not m:
        raise release_version.ReleaseError(f"Cargo.toml repository {url!r} is not https://github.com/OWNER/REPO")
    return m.group(1)


def rendered_images(root: Path, helm: str) -> set[str]:
    """The images the chart runs: the operator's and its default relay image."""
    out = subprocess.run(
        [helm, "template", "mailrelay", str(root / "charts/mailrelay"), "--namespace", "mailrelay-system"],
        check=True, capture_output=True, text=True,
    ).stdout
    images = set()
    for obj in yaml.safe_load_all(out):
        if not obj or obj.get("kind") != "Deployment":
            continue
        for container in obj["spec"]["template"]["spec"]["containers"]:
            images.add(container["image"])
            images.update(a.split("=", 1)[1] for a in container.get("args", []) if a.startswith("--default-image="))
    return images


def step_with(job: dict, predicate) -> dict:
    steps = [s for s in job.get("steps", []) if predicate(s)]
    if len(steps) != 1:
        raise release_version.ReleaseError(f"{WORKFLOW}: expected one such step, found {len(steps)}")
    return steps[0]


def workflow_problems(wf: dict) -> list[str]:
    """How release.yml could publish another version than release_version.py derived."""
    problems = []
    # PyYAML reads the key `on` as the boolean true.
    trigger = wf.get("on", wf.get(True)) or {}
    if trigger.get("push", {}).get("tags") != ["v*"]:
        problems.append(f"{WORKFLOW}: not triggered by pushing v* tags only")
    jobs = wf.get("jobs", {})
    derive = step_with(jobs["meta"], lambda s: "release_version.py" in s.get("run", ""))
    if derive.get("env", {}).get("TAG") != "${{ github.ref_name }}" or '--tag "$TAG"' not in derive["run"]:
        problems.append(f"{WORKFLOW}: the meta job does not pass the git tag to release_version.py")
    merge = step_with(jobs["merge"], lambda s: "imagetools create" in s.get("run", ""))
    want = {"IMAGE": META % "registry" + "/${{ matrix.component }}", "VERSION": META % "version"}
    for key, value in want.items():
        if merge.get("env", {}).get(key) != value:
            problems.append(f"{WORKFLOW}: merge job {key} is {merge.get('env', {}).get(key)!r}, not {value!r}")
    if '-t "$IMAGE:$VERSION"' not in merge["run"]:
        problems.append(f"{WORKFLOW}: the merge job does not tag $IMAGE:$VERSION")
    # The merge job finds the platform images by digest under $IMAGE.
    build = step_with(jobs["image"], lambda s: s.get("uses", "").startswith("docker/build-push-action@"))
    pushed_as = "type=image,name=" + META % "registry" + "/${{ matrix.component }},"
    if not build.get("with", {}).get("outputs", "").startswith(pushed_as):
        problems.append(f"{WORKFLOW}: the image job does not push to {pushed_as[len('type=image,name='):-1]}")
    built = jobs["image"]["strategy"]["matrix"]["component"]
    if built != jobs["merge"]["strategy"]["matrix"]["component"]:
        problems.append(f"{WORKFLOW}: the image and merge jobs have different components")
    chart = step_with(jobs["chart"], lambda s: "helm push" in s.get("run", ""))
    for key, value in {"VERSION": META % "version", "CHART_REPO": META % "chart-repo"}.items():
        if chart.get("env", {}).get(key) != value:
            problems.append(f"{WORKFLOW}: chart job {key} is {chart.get('env', {}).get(key)!r}, not {value!r}")
    return problems


def published_images(root: Path, wf: dict) -> set[str]:
    version = release_version.workspace_version(root)
    names = release_version.derive(root, f"v{version}", upstream_owner(root))
    return {f"{names['registry']}/{c}:{version}" for c in wf["jobs"]["merge"]["strategy"]["matrix"]["component"]}


def drift(root: Path, helm: str) -> list[str]:
    """Every disagreement between the crates, the chart and the release workflow."""
    problems = release_version.repository_problems(root)
    with open(root / WORKFLOW) as fh:
        wf = yaml.safe_load(fh)
    try:
        problems += workflow_problems(wf)
    except (release_version.ReleaseError, KeyError, TypeError, AttributeError) as e:
        problems.append(f"{WORKFLOW}: not the shape this check knows ({type(e).__name__}: {e})")
    if problems:
        return problems
    rendered, published = rendered_images(root, helm), published_images(root, wf)
    problems += [f"the chart runs {i}, which the release does not push" for i in sorted(rendered - published)]
    problems += [f"the release pushes {i}, which the chart does not run" for i in sorted(published - rendered)]
    return problems


def bump(version: str) -> str:
    core = re.match(r"(\d+)\.(\d+)\.(\d+)", version)
    if not core:
        raise release_version.ReleaseError(f"workspace version {version!r} is not semver")
    major, minor, patch = core.groups()
    return f"{major}.{minor}.{int(patch) + 1}"


def copy_inputs(src: Path, dst: Path) -> None:
    """The files the check reads: manifests, lock, chart, workflows."""
    with open(src / "Cargo.toml", "rb") as fh:
        members = tomllib.load(fh)["workspace"]["members"]
    for rel in ["Cargo.toml", "Cargo.lock", WORKFLOW] + [f"{m}/Cargo.toml" for m in members]:
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, dst / rel)
    shutil.copytree(src / "charts/mailrelay", dst / "charts/mailrelay")


def replace(path: Path, old: str, new: str, times: int) -> None:
    text = path.read_text()
    if text.count(old) != times:
        raise release_version.ReleaseError(f"mutation: {old!r} occurs {text.count(old)} times in {path}, not {times}")
    path.write_text(text.replace(old, new))


def mutations(version: str) -> list[tuple]:
    """(what changes, file, old text, new text, what the failure must say[, how
    often the old text occurs, when not once])."""
    new = bump(version)
    return [
        ("workspace version bumped alone", "Cargo.toml",
         f'version = "{version}"', f'version = "{new}"', "Chart.yaml: version"),
        ("chart appVersion bumped alone", "charts/mailrelay/Chart.yaml",
         f'appVersion: "{version}"', f'appVersion: "{new}"', "appVersion"),
        ("chart version bumped alone", "charts/mailrelay/Chart.yaml",
         f"\nversion: {version}\n", f"\nversion: {new}\n", "Chart.yaml: version"),
        ("a crate with a version of its own", "relay/Cargo.toml",
         "\nversion.workspace = true", f'\nversion = "{new}"', "relay/Cargo.toml"),
        ("Cargo.lock not updated", "Cargo.lock",
         f'name = "mailrelay-operator"\nversion = "{version}"', f'name = "mailrelay-operator"\nversion = "{new}"',
         "Cargo.lock: mailrelay-operator"),
        ("operator image tag pinned in values", "charts/mailrelay/values.yaml",
         'repository: ghcr.io/mailrelay/mailrelay-operator\n  # Defaults to the chart\'s appVersion.\n  tag: ""',
         f'repository: ghcr.io/mailrelay/mailrelay-operator\n  # Defaults to the chart\'s appVersion.\n  tag: "{new}"',
         "release does not push"),
        ("relay image from another registry path", "charts/mailrelay/values.yaml",
         "repository: ghcr.io/mailrelay/mailrelay\n", "repository: docker.io/mailrelay/mailrelay\n",
         "release does not push"),
        ("release images tagged latest", WORKFLOW,
         "VERSION: ${{ needs.meta.outputs.version }}\n        working-directory",
         "VERSION: latest\n        working-directory", "merge job VERSION"),
        ("release component renamed in one job", WORKFLOW,
         "matrix:\n        component: [mailrelay, mailrelay-operator]\n    permissions",
         "matrix:\n        component: [mailrelay, operator]\n    permissions", "different components"),
        ("release component renamed in both jobs", WORKFLOW,
         "component: [mailrelay, mailrelay-operator]", "component: [mailrelay, operator]",
         "release pushes ghcr.io/mailrelay/operator", 2),
        ("platform images pushed elsewhere", WORKFLOW,
         "name=${{ needs.meta.outputs.registry }}/${{ matrix.component }},push-by-digest",
         "name=ghcr.io/mailrelay/${{ matrix.component }},push-by-digest", "the image job does not push"),
        ("chart pushed with another version", WORKFLOW,
         "VERSION: ${{ needs.meta.outputs.version }}\n          ACTOR",
         f"VERSION: {new}\n          ACTOR", "chart job VERSION"),
    ]


def check_consistent_bump(base: Path, copy: Path, helm: str, report) -> None:
    """The positive control: a release bump done everywhere passes, and its tag is accepted."""
    version = release_version.workspace_version(base)
    new = bump(version)
    shutil.copytree(base, copy)
    try:
        replace(copy / "Cargo.toml", f'version = "{version}"', f'version = "{new}"', 1)
        replace(copy / "charts/mailrelay/Chart.yaml", f"\nversion: {version}\n", f"\nversion: {new}\n", 1)
        replace(copy / "charts/mailrelay/Chart.yaml", f'appVersion: "{version}"', f'appVersion: "{new}"', 1)
        for package in release_version.member_packages(copy).values():
            entry = f'name = "{package["name"]}"\nversion = "{version}"'
            replace(copy / "Cargo.lock", entry, entry.replace(version, new), 1)
        problems = drift(copy, helm)
        release_version.derive(copy, f"v{new}", upstream_owner(copy))
    except release_version.ReleaseError as e:
        problems = [str(e)]
    report(not problems, f"a bump to {new} in Cargo.toml, Cargo.lock and Chart.yaml agrees, tag v{new} accepted",
           "\n  ".join(problems))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--helm", required=True)
    args = parser.parse_args()
    failed = 0

    def report(ok: bool, what: str, detail: str = "") -> None:
        nonlocal failed
        failed += not ok
        print(f"version-drift: {'ok' if ok else 'FAIL'}: {what}" + (f"\n  {detail}" if detail else ""))

    problems = drift(ROOT, args.helm)
    version = release_version.workspace_version(ROOT)
    report(not problems, f"crates, chart and release agree on {version}", "\n  ".join(problems))

    tag = f"v{bump(version)}"
    try:
        release_version.derive(ROOT, tag, upstream_owner(ROOT))
        report(False, f"the release refuses tag {tag}", "release_version.py accepted it")
    except release_version.ReleaseError as e:
        report("is not v" in str(e), f"the release refuses tag {tag} ({e})")

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        copy_inputs(ROOT, base)
        problems = drift(base, args.helm)
        report(not problems, "the unchanged copy agrees (so a failure below is the change)", "\n  ".join(problems))
        check_consistent_bump(base, Path(tmp) / "bumped", args.helm, report)
        for i, (what, rel, old, new, expect, *times) in enumerate(mutations(version)):
            copy = Path(tmp) / f"m{i}"
            shutil.copytree(base, copy)
            try:
                replace(copy / rel, old, new, times[0] if times else 1)
            except release_version.ReleaseError as e:
                report(False, f"drift caught: {what}", str(e))
                continue
            problems = drift(copy, args.helm)
            hit = [p for p in problems if expect in p]
            report(bool(hit), f"drift caught: {what}: {hit[0] if hit else ''}",
                   "" if hit else f"expected a problem naming {expect!r}, got {problems}")
    print(f"version-drift: {failed} failed" if failed else "version-drift: all checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
