"""Build the lab VMs' boot image: Debian's kernel plus a busybox initramfs with real DRBD.

One image serves every VM of the lab (node1, node2, client): the kernel command line says
which one a VM is. What goes in, and where it comes from:

- the kernel and its modules: the Debian package ``linux-image-amd64`` depends on (``apt-get
  download``; only ``vmlinuz`` and the modules the lab needs are kept: drbd 8.4 with
  lru_cache/libcrc32c/crc32c, virtio pci/net/blk/console and their dependencies, found by
  reading each module's ``depends=`` field);
- ``drbd-utils`` (``apt-get download``): drbdadm, drbdsetup, drbdmeta and the 8.4 helpers;
- busybox (package ``busybox-static``) for the shell and the small tools;
- tools copied from the host's Debian packages with the shared libraries ``ldd`` names:
  ``ip`` (iproute2: the VIP adapter reads ``ip -j``), ``ping`` (iputils-ping), ``arping``
  (iputils-arping), ``timeout`` (coreutils: sub-second ARP probes), ``tgtd``/``tgtadm``
  (tgt), ``qemu-io`` with its iscsi block module (qemu-utils, qemu-block-extra) and
  ``iscsi-inq`` (libiscsi-bin) for the client VM;
- the guest side of the lab: ``guest/init`` (PID 1) and ``guest/agent.c`` (the command agent
  behind ``tests.vm.vmconsole``, compiled with the host's gcc).

Invariants:

- The image is cached under ``<cache>/images/<key>/`` where the key hashes the versions of
  every package above, the kernel package's name, and the content of this builder and the
  guest files: a changed package or a changed agent builds a new image, an unchanged one is
  reused (a build takes ~10 s plus the kernel download the first time). Downloaded ``.deb``
  files are kept under ``<cache>/debs/``. The cache directory is ``$TANDEM_VM_CACHE`` or what
  the caller passes (the test fixture passes pytest's cache directory).
- Every failure is an ``ImageError`` whose message says what to install or run: a missing host
  tool names its Debian package, a package apt cannot find says to run ``apt-get update``.
- Builds are atomic (built in a temporary directory, then renamed) and serialised by a lock
  file, so concurrent test runs share one cache safely.

``python -m tests.vm.image [--cache DIR]`` builds (or finds) the image and prints its paths.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

GUEST_DIR = Path(__file__).resolve().parent / "guest"
KERNEL_META_PACKAGE = "linux-image-amd64"
BUILD_FORMAT = 2  # bump to invalidate every cached image (2: libgcc_s added)

# Modules the guests load (by module name); their dependencies are added automatically.
WANTED_MODULES = (
    "drbd",
    "crc32c_generic",  # libcrc32c (a drbd dependency) needs a crc32c provider loaded first
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "virtio_console",
)

# Host tools the builder runs -> the Debian package that provides them.
BUILD_TOOLS: Mapping[str, str] = {
    "apt-get": "apt",
    "apt-cache": "apt",
    "dpkg-deb": "dpkg",
    "dpkg-query": "dpkg",
    "depmod": "kmod",
    "cpio": "cpio",
    "ldd": "libc-bin",
    "gcc": "gcc",
}
# Files copied into the guest -> the Debian package that provides them (its version is part
# of the cache key). Paths are found with shutil.which unless absolute.
GUEST_TOOLS: Mapping[str, str] = {
    "busybox": "busybox-static",
    "ip": "iproute2",
    "ping": "iputils-ping",
    "arping": "iputils-arping",
    # coreutils' timeout (PATH puts /usr/sbin before busybox's applets): CommandArp stops
    # arping with SIGINT after a fraction of a second; busybox's timeout counts whole seconds.
    "timeout": "coreutils",
    "tgtd": "tgt",
    "tgtadm": "tgt",
    "qemu-io": "qemu-utils",
    "/usr/lib/x86_64-linux-gnu/qemu/block-iscsi.so": "qemu-block-extra",
    "iscsi-inq": "libiscsi-bin",
}
DOWNLOADED = ("drbd-utils",)  # plus the kernel package
# Modules read in the first pass over the kernel package so that one pass is enough (only the
# ones the wanted modules really depend on end up in the image).
LIKELY_DEPENDENCIES = (
    "lru_cache",
    "libcrc32c",
    "virtio",
    "virtio_ring",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "net_failover",
    "failover",
)
_MODULE_INDEXES = ("modules.builtin", "modules.order", "modules.builtin.modinfo")


class ImageError(RuntimeError):
    """The image cannot be built; the message says what is missing and how to get it."""


@dataclass(frozen=True)
class Image:
    kernel: Path
    initrd: Path
    manifest: dict[str, object]

    @property
    def directory(self) -> Path:
        return self.kernel.parent


# ------------------------------------------------------------------------------ host facts


def missing_build_tools() -> list[str]:
    """Host tools (build and guest) that are missing, as 'tool (apt-get install pkg)'."""
    out = []
    for tool, pkg in {**BUILD_TOOLS, **GUEST_TOOLS}.items():
        found = Path(tool).exists() if tool.startswith("/") else shutil.which(tool)
        if not found:
            out.append(f"{tool} (apt-get install {pkg})")
    if shutil.which("busybox") and not _is_static(shutil.which("busybox") or ""):
        out.append("a static busybox (apt-get install busybox-static)")
    return out


def _is_static(path: str) -> bool:
    try:
        res = subprocess.run(["ldd", path], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode != 0 or "not a dynamic executable" in (res.stdout + res.stderr)


def _run(argv: Sequence[str], *, cwd: Path | None = None, timeout: float = 300) -> str:
    try:
        res = subprocess.run(
            list(argv), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError as exc:
        raise ImageError(f"{argv[0]} is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise ImageError(f"{' '.join(argv)} did not finish within {timeout:g} s") from exc
    if res.returncode != 0:
        detail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        raise ImageError(f"{' '.join(argv)} failed ({res.returncode}): {' / '.join(detail)}")
    return res.stdout


def installed_versions(packages: Sequence[str]) -> dict[str, str]:
    """Versions of installed Debian packages; ImageError names the ones that are not."""
    out: dict[str, str] = {}
    missing = []
    for pkg in sorted(set(packages)):
        res = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Status}\t${Version}", pkg],
            capture_output=True,
            text=True,
            check=False,
        )
        status, _, version = res.stdout.partition("\t")
        if res.returncode != 0 or "install ok installed" not in status:
            missing.append(pkg)
        else:
            out[pkg] = version
    if missing:
        raise ImageError(f"Debian packages not installed: apt-get install {' '.join(missing)}")
    return out


def candidate_version(package: str) -> str:
    """The version ``apt-get download`` would fetch (``apt-cache policy``'s Candidate)."""
    text = _run(["apt-cache", "policy", package], timeout=60)
    m = re.search(r"^\s*Candidate:\s*(\S+)", text, re.MULTILINE)
    if not m or m.group(1) == "(none)":
        raise ImageError(
            f"apt knows no installable version of {package}; run `apt-get update` first "
            "(the package lists are missing or stale)"
        )
    return m.group(1)


def kernel_package() -> str:
    """The versioned kernel package: $TANDEM_VM_KERNEL, else what linux-image-amd64 pulls."""
    name = os.environ.get("TANDEM_VM_KERNEL")
    if name:
        return name
    text = _run(["apt-cache", "depends", KERNEL_META_PACKAGE], timeout=60)
    m = re.search(r"Depends:\s*(linux-image-\S+)", text)
    if not m:
        raise ImageError(
            f"cannot tell which kernel {KERNEL_META_PACKAGE} pulls in; run `apt-get update` "
            "first, or set TANDEM_VM_KERNEL=linux-image-<version>-amd64"
        )
    return m.group(1)


def _guest_digest() -> str:
    h = hashlib.sha256()
    for path in sorted([Path(__file__).resolve(), *GUEST_DIR.iterdir()]):
        if path.is_file():
            h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def image_inputs() -> dict[str, object]:
    """Everything the image depends on (its cache key is a hash of this)."""
    problems = missing_build_tools()
    if problems:
        raise ImageError("missing host tools for the VM image: " + ", ".join(problems))
    kpkg = kernel_package()
    return {
        "format": BUILD_FORMAT,
        "kernel": {kpkg: candidate_version(kpkg)},
        "downloaded": {pkg: candidate_version(pkg) for pkg in DOWNLOADED},
        "host": installed_versions([*GUEST_TOOLS.values(), "libc6", "gcc"]),
        "guest": _guest_digest(),
    }


def cache_key(inputs: Mapping[str, object]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:20]


def default_cache_dir() -> Path:
    env = os.environ.get("TANDEM_VM_CACHE")
    if env:
        return Path(env)
    return Path(tempfile.gettempdir()) / "tandem-vm-cache"


# ------------------------------------------------------------------------------ building


def build_image(cache_dir: Path | None = None, *, log: bool = False) -> Image:
    """The image for the current inputs: from the cache, else built now (see module doc)."""
    cache = Path(cache_dir or default_cache_dir()).absolute()
    cache.mkdir(parents=True, exist_ok=True)
    inputs = image_inputs()
    key = cache_key(inputs)
    target = cache / "images" / key
    with _locked(cache / ".lock"):
        if (target / "manifest.json").exists():
            return _load(target)
        started = time.monotonic()
        (cache / "images").mkdir(exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=cache / "images"))
        try:
            _build(cache, work, inputs, log=log)
            manifest = {
                "key": key,
                "inputs": inputs,
                "build_seconds": round(time.monotonic() - started, 2),
                "initrd_bytes": (work / "initrd.img").stat().st_size,
            }
            (work / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
            shutil.rmtree(work / "root", ignore_errors=True)
            os.replace(work, target)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        _prune(cache / "images", keep=target)
        return _load(target)


def _load(target: Path) -> Image:
    manifest = json.loads((target / "manifest.json").read_text())
    return Image(target / "vmlinuz", target / "initrd.img", manifest)


def _prune(images: Path, keep: Path) -> None:
    """Keep the newest three images (older keys are from older package versions)."""
    found = sorted(
        (p for p in images.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in found[3:]:
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _say(log: bool, text: str) -> None:
    if log:
        print(f"[vm image] {text}", file=sys.stderr, flush=True)


def download(cache: Path, package: str, version: str, *, log: bool = False) -> Path:
    """The .deb of ``package`` at ``version`` in ``<cache>/debs`` (downloaded if needed)."""
    debs = cache / "debs"
    debs.mkdir(exist_ok=True)
    for deb in debs.glob(f"{package}_*.deb"):
        if _run(["dpkg-deb", "-f", str(deb), "Version"]).strip() == version:
            return deb
    _say(log, f"apt-get download {package}={version}")
    with tempfile.TemporaryDirectory(dir=debs) as tmp:
        try:
            _run(["apt-get", "download", "-q", f"{package}={version}"], cwd=Path(tmp), timeout=900)
        except ImageError as exc:
            raise ImageError(
                f"cannot download {package}={version} ({exc}); run `apt-get update` and make "
                "sure Debian's package mirror is reachable"
            ) from exc
        got = list(Path(tmp).glob(f"{package}_*.deb"))
        if len(got) != 1:
            raise ImageError(f"apt-get download {package} produced {len(got)} files")
        final = debs / got[0].name
        os.replace(got[0], final)
    for old in debs.glob(f"{package}_*.deb"):
        if old != final:
            old.unlink()
    return final


def _build(cache: Path, work: Path, inputs: Mapping[str, object], *, log: bool) -> None:
    kernel = inputs["kernel"]
    downloaded = inputs["downloaded"]
    assert isinstance(kernel, dict) and isinstance(downloaded, dict)
    ((kpkg, kver),) = kernel.items()
    kdeb = download(cache, kpkg, kver, log=log)
    udeb = download(cache, "drbd-utils", downloaded["drbd-utils"], log=log)
    root = work / "root"
    for d in (
        "bin", "sbin", "usr/bin", "usr/sbin", "lib/drbd", "lib64", "etc/drbd.d", "proc",
        "sys", "dev", "tmp", "run", "var/lib/drbd", "var/run", "var/lock", "mnt",
    ):  # fmt: skip
        (root / d).mkdir(parents=True, exist_ok=True)
    _say(log, f"kernel and modules from {kdeb.name}")
    release = _kernel_into(kdeb, root, work / "vmlinuz")
    _say(log, f"drbd-utils from {udeb.name}")
    _drbd_utils_into(udeb, root, work / "drbd-utils")
    _busybox_into(root)
    for tool in GUEST_TOOLS:
        if tool == "busybox":
            continue
        path = tool if tool.startswith("/") else shutil.which(tool)
        assert path
        dest = tool if tool.startswith("/") else f"/usr/sbin/{tool}"
        _copy_with_libs(Path(path), root, dest)
    _dlopened_libs_into(root)
    agent = work / "tandem-agent"
    _run(["gcc", "-O2", "-Wall", "-o", str(agent), str(GUEST_DIR / "agent.c")])
    _copy_with_libs(agent, root, "/sbin/tandem-agent")
    shutil.copy(GUEST_DIR / "init", root / "init")
    (root / "init").chmod(0o755)
    (root / "etc/drbd.conf").write_text(
        'global { usage-count no; }\ninclude "/etc/drbd.d/*.res";\n'
    )
    (root / "etc/hostname").write_text("vm\n")
    (root / "etc/passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\n")
    _run(["depmod", "-b", str(root), release])
    _cpio_gz(root, work / "initrd.img")


def _kernel_into(deb: Path, root: Path, vmlinuz: Path) -> str:
    """Extract vmlinuz and the wanted modules (with their dependencies) from the kernel .deb;
    returns the kernel release (the lib/modules directory name)."""
    have: dict[str, tuple[str, bytes]] = {}  # module -> (path below lib/modules/R, content)
    meta: dict[str, bytes] = {}
    release = ""
    fetch = {*WANTED_MODULES, *LIKELY_DEPENDENCIES}
    required: set[str] = set()
    builtin: set[str] = set()
    for _ in range(4):  # one pass normally; another when a dependency was not prefetched
        for name, data in _tar_members(deb):
            m = re.match(r"^\./lib/modules/([^/]+)/(.+)$", name)
            if name.startswith("./boot/vmlinuz-"):
                vmlinuz.write_bytes(data)
            elif m and m.group(2) in _MODULE_INDEXES:
                release = m.group(1)
                meta[m.group(2)] = data
            elif m and m.group(2).startswith("kernel/"):
                mod = _module_name(m.group(2))
                if mod in fetch and mod not in have:
                    content = lzma.decompress(data) if name.endswith(".xz") else data
                    have[mod] = (m.group(2).removesuffix(".xz"), content)
        builtin = {_module_name(line) for line in meta.get("modules.builtin", b"").decode().split()}
        required = _closure(WANTED_MODULES, have, builtin)
        fetch = required - set(have) - builtin
        if not fetch:
            break
    if fetch or not release or not vmlinuz.exists():
        raise ImageError(
            f"{deb.name} lacks what the lab needs: modules {', '.join(sorted(fetch)) or '-'}"
            + ("" if vmlinuz.exists() else ", vmlinuz")
            + ("" if release else ", modules.builtin")
        )
    base = root / "lib/modules" / release
    for mod in sorted(required - builtin):
        rel, content = have[mod]
        dest = base / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(content)
    for key, data in meta.items():
        (base / key).write_bytes(data)
    return release


def _closure(
    roots: Sequence[str], have: Mapping[str, tuple[str, bytes]], builtin: set[str]
) -> set[str]:
    """The modules ``roots`` need (themselves included), as far as ``have`` tells."""
    out: set[str] = set()
    todo = [r.replace("-", "_") for r in roots]
    while todo:
        mod = todo.pop()
        if mod in out:
            continue
        out.add(mod)
        if mod in have and mod not in builtin:
            todo.extend(_depends(have[mod][1]))
    return out


def _module_name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    for suffix in (".xz", ".zst", ".gz"):
        base = base.removesuffix(suffix)
    return base.removesuffix(".ko").replace("-", "_")


def _depends(module: bytes) -> list[str]:
    m = re.search(rb"(?:^|\x00)depends=([A-Za-z0-9_,-]*)\x00", module)
    if not m or not m.group(1):
        return []
    return [d.decode().replace("-", "_") for d in m.group(1).split(b",") if d]


def _tar_members(deb: Path) -> Iterator[tuple[str, bytes]]:
    """(name, content) of the regular files under ./boot and ./lib/modules in a .deb."""
    proc = subprocess.Popen(
        ["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name = member.name if member.name.startswith("./") else f"./{member.name}"
                if not (name.startswith("./boot/vmlinuz-") or name.startswith("./lib/modules/")):
                    continue
                if "/kernel/" in name and not re.search(r"\.ko(\.xz)?$", name):
                    continue  # below kernel/ only the modules are of interest
                fh = tar.extractfile(member)
                if fh is not None:
                    yield name, fh.read()
    finally:
        proc.stdout.close()
        proc.kill()
        proc.wait()


def _drbd_utils_into(deb: Path, root: Path, scratch: Path) -> None:
    shutil.rmtree(scratch, ignore_errors=True)
    _run(["dpkg-deb", "-x", str(deb), str(scratch)])
    for name in ("drbdadm", "drbdsetup", "drbdmeta"):
        src = _find_one(scratch, name, ("sbin", "usr/sbin"))
        _copy_with_libs(src, root, f"/sbin/{name}")
    for name in ("drbdadm-84", "drbdsetup-84"):
        src = _find_one(scratch, name, ("lib/drbd", "usr/lib/drbd"))
        _copy_with_libs(src, root, f"/lib/drbd/{name}")
        (root / "usr/lib/drbd").mkdir(parents=True, exist_ok=True)
        link = root / "usr/lib/drbd" / name
        if not link.exists():
            link.symlink_to(f"/lib/drbd/{name}")


def _find_one(base: Path, name: str, dirs: Sequence[str]) -> Path:
    for d in dirs:
        if (base / d / name).exists():
            return base / d / name
    raise ImageError(f"drbd-utils package has no {name} in {', '.join(dirs)}")


def _busybox_into(root: Path) -> None:
    busybox = shutil.which("busybox")
    assert busybox
    shutil.copy(busybox, root / "bin/busybox")
    applets = _run([busybox, "--list"]).split()
    for applet in applets:
        for d in ("bin", "sbin"):
            link = root / d / applet
            if not link.exists():
                link.symlink_to("/bin/busybox")


def _copy_with_libs(src: Path, root: Path, dest: str) -> None:
    """Copy ``src`` to ``root/dest`` and every shared library ldd resolves for it."""
    target = root / dest.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, target, follow_symlinks=True)
    target.chmod(0o755)
    res = subprocess.run(["ldd", str(src)], capture_output=True, text=True, check=False)
    if "not a dynamic executable" in res.stdout + res.stderr:
        return
    if res.returncode != 0:
        raise ImageError(f"ldd {src} failed: {res.stderr.strip()}")
    for line in res.stdout.splitlines():
        line = line.strip()
        if "not found" in line:
            raise ImageError(f"{src} needs a library the host lacks: {line}")
        m = re.match(r"^\S+ => (/\S+)", line) or re.match(r"^(/\S+) \(", line)
        if m:
            lib = Path(m.group(1))
            dest_lib = root / str(lib).lstrip("/")
            if not dest_lib.exists():
                dest_lib.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(lib, dest_lib, follow_symlinks=True)


def _dlopened_libs_into(root: Path) -> None:
    """Libraries glibc loads at run time, which ``ldd`` does not list: ``libgcc_s.so.1``
    (``pthread_cancel``/``pthread_exit`` unwind with it; without it a process that cancels a
    thread aborts with "libgcc_s.so.1 must be installed for pthread_cancel to work" - tgtd
    does, when a target with a LUN is deleted, so it died at every stop of the target)."""
    found = _run(["gcc", "-print-file-name=libgcc_s.so.1"]).strip()
    lib = Path(found)
    if not lib.is_absolute() or not lib.exists():
        raise ImageError("libgcc_s.so.1 not found on the host (package libgcc-s1)")
    real = lib.resolve()
    dest = root / "lib/x86_64-linux-gnu/libgcc_s.so.1"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(real, dest, follow_symlinks=True)


def _cpio_gz(root: Path, out: Path) -> None:
    """newc cpio of ``root`` (sorted, root-owned) compressed with gzip -1."""
    names = sorted(
        "." if p == root else "./" + str(p.relative_to(root)) for p in [root, *root.rglob("*")]
    )
    proc = subprocess.run(
        ["cpio", "-o", "-H", "newc", "--quiet", "--owner", "0:0"],
        cwd=root,
        input="\n".join(names).encode() + b"\n",
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        raise ImageError(f"cpio failed: {proc.stderr.decode(errors='replace').strip()}")
    with gzip.open(out, "wb", compresslevel=1) as fh:
        fh.write(proc.stdout)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.vm.image", description=__doc__)
    parser.add_argument("--cache", type=Path, default=None, help="cache directory")
    args = parser.parse_args(argv)
    try:
        image = build_image(args.cache, log=True)
    except ImageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"kernel": str(image.kernel), "initrd": str(image.initrd), **image.manifest}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
