"""`cmml-bench data prepare`: fetch Debian packages of real image+text data into the data root.

Each data set is extracted once with the system's package tools:
`apt-get download` into a temporary folder, then `dpkg-deb -x` into
`<data root>/<name>`. A marker file `.prepared.json` records the packages and
makes a second call a no-op.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from cmml_bench import paths
from cmml_bench.data.errors import DataError
from cmml_bench.data.readers.emoji import render_emoji_set

PACKAGES = {
    "tuxpaint": ("tuxpaint-stamps-default",),
    "clipart": ("openclipart-png", "openclipart-svg"),
    "emoji": ("fonts-noto-color-emoji", "unicode-data"),
}
MARKER = ".prepared.json"

# Messages of apt-get that mean the package lists are absent or stale, which `apt-get update` fixes.
MISSING_LISTS_MESSAGES = ("Unable to locate package", "has no installation candidate", "404  Not Found", "404 Not Found")

Echo = Callable[[str], None]


def prepare(name: str, data_root: str | os.PathLike | None = None, echo: Echo = print) -> Path:
    """Download and extract the packages of one data set; return its folder."""
    if name not in PACKAGES:
        raise DataError(
            f"no prepare step for {name!r}; available: {', '.join(PACKAGES)} "
            "(food101, mmimdb and manifest data are placed by hand in their raw layout)"
        )
    target = paths.data_root(data_root) / name
    marker = target / MARKER
    if marker.is_file():
        echo(f"{name}: already prepared in {target} (delete the folder to fetch it again)")
        return target

    extract_dir = target / "packages" if name == "emoji" else target
    versions = fetch_packages(PACKAGES[name], extract_dir, echo)
    if name == "emoji":
        echo("emoji: rendering the fully-qualified emoji of emoji-test.txt with NotoColorEmoji.ttf")
        count = render_emoji_set(target, extract_dir)
        echo(f"emoji: wrote {count} images to {target / 'images'} and the index {target / 'index.jsonl'}")

    marker.write_text(json.dumps({"packages": versions}, indent=2) + "\n", encoding="utf-8")
    echo(f"{name}: ready in {target}")
    return target


def fetch_packages(packages: tuple[str, ...], destination: Path, echo: Echo) -> dict[str, str]:
    """Download .deb files with apt-get and extract them into destination; return file name per package."""
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise DataError(
                f"{tool} not found: preparing {', '.join(packages)} needs Debian's package tools. "
                f"On another system, get the .deb files of {', '.join(packages)} and run "
                f"`dpkg-deb -x FILE.deb {destination}` for each (or `ar x` and `tar xf data.tar.*`)"
            )

    destination.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cmml-bench-apt-") as folder:
        download_dir = Path(folder)
        _download(packages, download_dir, echo)
        files = {}
        for package in packages:
            deb = _find_deb(download_dir, package)
            echo(f"extracting {deb.name} ({deb.stat().st_size / 1e6:.1f} MB) into {destination}")
            _run(["dpkg-deb", "-x", str(deb), str(destination)], cwd=download_dir)
            files[package] = deb.name
    return files


def _download(packages: tuple[str, ...], download_dir: Path, echo: Echo) -> None:
    echo(f"running apt-get download {' '.join(packages)} in {download_dir}")
    result = subprocess.run(
        ["apt-get", "download", *packages], cwd=download_dir, capture_output=True, text=True, check=False
    )
    if result.returncode == 0:
        return

    if any(message in result.stderr for message in MISSING_LISTS_MESSAGES):
        echo("apt-get download failed because the package lists are missing or stale; running apt-get update")
        _run(["apt-get", "update"], cwd=download_dir)
        result = subprocess.run(
            ["apt-get", "download", *packages], cwd=download_dir, capture_output=True, text=True, check=False
        )
        if result.returncode == 0:
            return
    raise DataError(
        f"apt-get download {' '.join(packages)} failed (exit {result.returncode}): {result.stderr.strip()}. "
        "Check that a Debian or Ubuntu archive is configured, run `apt-get update` as root, and try again"
    )


def _find_deb(download_dir: Path, package: str) -> Path:
    matches = sorted(download_dir.glob(f"{package}_*.deb"))
    if not matches:
        raise DataError(f"apt-get download reported success but no {package}_*.deb is in {download_dir}")
    return matches[-1]


def _run(command: list[str], cwd: Path) -> None:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise DataError(f"`{' '.join(command)}` failed (exit {result.returncode}): {result.stderr.strip()}")
