"""Offline JavaScript for the site: plotly.js from the plotly package; MathJax 3, require.js
and the ipywidgets embedder from npm (checksummed, cached in ``_build/vendor_cache`` or
``$FATLIB_VENDOR_CACHE``), copied into the site's static folder so no page needs a CDN."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

from fatlib.book.sources import BookError

VENDOR_DIR = "_vendor"  # not `_static`: jupyter-book would inject every .js in it into every page
VENDOR_CACHE_ENV = "FATLIB_VENDOR_CACHE"

# npm package -> (tarball written by `npm pack`, its sha256, members to copy: prefix -> target)
NPM_VENDOR = {
    "mathjax@3.2.2": ("mathjax-3.2.2.tgz",
                      "1b9c0a1c44df864e915690558e72adb9cc5203360daefd385084ced3b6c64c09",
                      {"package/es5/": "mathjax/"}),
    "requirejs@2.3.8": ("requirejs-2.3.8.tgz",
                        "777158e89275e16bd51aec3ef714fbcb5dc45789e7078659933bc814916d7dec",
                        {"package/require.js": "require.js"}),
    "@jupyter-widgets/html-manager@1.0.15": (
        "jupyter-widgets-html-manager-1.0.15.tgz",
        "2b9d65cb7913e1c7d671757a10008b32c9c2448d4429513371e55c07d6107638",
        {"package/dist/embed-amd.js": "html-manager/embed-amd.js",
         "package/dist/": "html-manager/fonts/"}),
}
_FONT_SUFFIXES = (".woff2", ".woff", ".ttf", ".eot", ".svg")


def vendor_cache_dir(build_dir: Path) -> Path:
    """Where npm tarballs are kept between builds: ``$FATLIB_VENDOR_CACHE`` or
    ``<build_dir>/vendor_cache``."""
    return Path(os.environ.get(VENDOR_CACHE_ENV) or build_dir / "vendor_cache")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_npm(spec: str, cache: Path) -> Path:
    """The npm tarball of ``spec`` (a key of NPM_VENDOR) in ``cache``, checksum verified;
    downloaded with ``npm pack`` when missing."""
    filename, sha256, _ = NPM_VENDOR[spec]
    tarball = cache / filename
    if not tarball.exists():
        npm = shutil.which("npm")
        if npm is None:
            raise BookError(f"npm is needed once to fetch {spec} (offline MathJax / widgets "
                            f"JavaScript): install Node.js, or put {filename} into {cache}")
        cache.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([npm, "pack", spec, "--pack-destination", str(cache), "--silent"],
                              capture_output=True, text=True, timeout=600)
        if proc.returncode != 0 or not tarball.exists():
            raise BookError(f"`npm pack {spec}` failed (is the npm registry reachable?); or put "
                            f"{filename} into {cache} by hand.\n{proc.stderr[-2000:]}")
    if _sha256(tarball) != sha256:
        raise BookError(f"{tarball} has sha256 {_sha256(tarball)}, expected {sha256}: "
                        "delete it and build again")
    return tarball


def prepare_vendor(vendor: Path, cache: Path) -> Path:
    """Fill ``vendor`` (the site's static folder) with plotly.min.js, MathJax 3, require.js
    and the ipywidgets embedder, so that no page loads anything from a CDN."""
    import plotly

    stamp = vendor / ".fatlib-vendor.json"
    wanted = {"plotly": plotly.__version__, **{s: v[1] for s, v in NPM_VENDOR.items()}}
    if stamp.exists() and json.loads(stamp.read_text()) == wanted:
        return vendor
    shutil.rmtree(vendor, ignore_errors=True)
    vendor.mkdir(parents=True)
    shutil.copy2(Path(plotly.__file__).parent / "package_data" / "plotly.min.js", vendor)
    for spec, (_, _, members) in NPM_VENDOR.items():
        _extract(fetch_npm(spec, cache), members, vendor)
    stamp.write_text(json.dumps(wanted))
    return vendor


def _extract(tarball: Path, members: dict, target: Path) -> None:
    with tarfile.open(tarball) as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            for prefix, dest in members.items():
                if prefix.endswith("/"):
                    rest = member.name[len(prefix):]
                    fonts_only = dest.endswith("fonts/")
                    if not member.name.startswith(prefix) or (
                            fonts_only and ("/" in rest or not rest.endswith(_FONT_SUFFIXES))):
                        continue
                    out = target / dest / rest
                elif member.name == prefix:
                    out = target / dest
                else:
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(tar.extractfile(member).read())

