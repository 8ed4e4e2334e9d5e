"""A PEP 517 build backend from the standard library alone: builds the pure
Python wheel (and sdist) of rebound-client so that pip needs no build
dependency, hence no package index. It packs rebound_client/ as it is; the
metadata comes from pyproject.toml's [project] table."""

import base64
import hashlib
import io
import os
import re
import tarfile
import time
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "rebound_client"


def _project():
    """name, version, description and requires-python from pyproject.toml
    (read with a regex: tomllib is not in every Python this runs on)."""
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as f:
        text = f.read()
    m = re.search(r"^\[project\]\s*$(.*?)(?=^\[|\Z)", text, re.S | re.M)
    if not m:
        raise RuntimeError("pyproject.toml has no [project] table")
    fields = dict(re.findall(r'^([A-Za-z-]+)\s*=\s*"([^"]*)"\s*$', m.group(1), re.M))
    for key in ("name", "version"):
        if key not in fields:
            raise RuntimeError("pyproject.toml [project] has no %s" % key)
    return fields


def _metadata(p):
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    head = ["Metadata-Version: 2.1", "Name: %s" % p["name"], "Version: %s" % p["version"]]
    if "description" in p:
        head.append("Summary: %s" % p["description"])
    if "requires-python" in p:
        head.append("Requires-Python: %s" % p["requires-python"])
    head.append("Description-Content-Type: text/markdown")
    return ("\n".join(head) + "\n\n" + readme).encode("utf-8")


def _package_files():
    out = []
    for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, PACKAGE)):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if name.endswith((".py", ".typed")):
                full = os.path.join(dirpath, name)
                out.append((os.path.relpath(full, ROOT).replace(os.sep, "/"), full))
    return out


def _dist(p):
    return re.sub(r"[-_.]+", "_", p["name"]).lower(), p["version"]


def _write_wheel(wheel_directory, entries):
    """entries: (archive name, bytes); adds WHEEL and RECORD."""
    p = _project()
    name, version = _dist(p)
    info = "%s-%s.dist-info" % (name, version)
    entries = list(entries) + [
        (info + "/METADATA", _metadata(p)),
        (info + "/WHEEL", b"Wheel-Version: 1.0\nGenerator: rebound_build\nRoot-Is-Purelib: true\nTag: py3-none-any\n"),
    ]
    record = []
    for arc, data in entries:
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append("%s,sha256=%s,%d" % (arc, digest, len(data)))
    record.append(info + "/RECORD,,")
    entries.append((info + "/RECORD", ("\n".join(record) + "\n").encode()))
    filename = "%s-%s-py3-none-any.whl" % (name, version)
    stamp = time.gmtime(int(os.environ.get("SOURCE_DATE_EPOCH", "315532800")))[:6]
    with zipfile.ZipFile(os.path.join(wheel_directory, filename), "w", zipfile.ZIP_DEFLATED) as z:
        for arc, data in entries:
            zi = zipfile.ZipInfo(arc, stamp)
            zi.external_attr = 0o644 << 16
            zi.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(zi, data)
    return filename


def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_sdist(config_settings=None):
    return []


def get_requires_for_build_editable(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    entries = []
    for arc, full in _package_files():
        with open(full, "rb") as f:
            entries.append((arc, f.read()))
    return _write_wheel(wheel_directory, entries)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    # a .pth line puts the source directory on sys.path
    return _write_wheel(wheel_directory, [("%s.pth" % PACKAGE, (ROOT + "\n").encode())])


def build_sdist(sdist_directory, config_settings=None):
    p = _project()
    name, version = _dist(p)
    base = "%s-%s" % (name, version)
    files = [(arc, full) for arc, full in _package_files()]
    for extra in ("pyproject.toml", "README.md", "build_backend/rebound_build.py"):
        files.append((extra, os.path.join(ROOT, extra)))
    filename = base + ".tar.gz"
    with tarfile.open(os.path.join(sdist_directory, filename), "w:gz", format=tarfile.PAX_FORMAT) as t:
        for arc, full in files:
            t.add(full, arcname="%s/%s" % (base, arc), recursive=False)
        pkg_info = _metadata(p)
        ti = tarfile.TarInfo("%s/PKG-INFO" % base)
        ti.size = len(pkg_info)
        ti.mode = 0o644
        t.addfile(ti, io.BytesIO(pkg_info))
    return filename
