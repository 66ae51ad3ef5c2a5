"""A FUSE file system for power-cut tests, in the manner of Jepsen's LazyFS: it passes every operation through to
a backing directory, and keeps on the side a copy of only what was made durable, so that a "cut" can bring
the backing directory back to exactly that.

    /usr/bin/python3 lazyfs.py BACKING DURABLE MOUNTPOINT

What counts as durable (the POSIX/Linux contract an application may rely on, and nothing more):
- a file's data and size: as of its last fsync() or fdatasync() (both are taken as fsync);
- a directory's entries (files created, renamed, unlinked, hard-linked, subdirectories made or removed): as of
  the last fsync() of that directory. A file's name is durable only through its directory, never through the
  file's own fsync.
Everything else, however long ago it was written, is lost at a cut; a file whose name became durable but whose
data never did comes back empty, as a newly allocated file on ext4 can.

DURABLE holds the durable copy: data/<id> (a file's data as of its last fsync, by a file id this layer
assigns; a backing inode number is not reused while it is known here) and tree.json (every directory's
entries as of its last fsync: name -> kind, id, mode, link target). It is written as the fsyncs happen, and
tree.json atomically, so the copy is whole even if this process is killed. tests/reliability/powercut.py
mounts it, cuts (unmount, then rebuild a new backing directory from DURABLE) and mounts again.

At mount, everything in BACKING counts as durable.

Not modelled (docs/reliability.md): writes that reach the disk without an fsync (a real disk may keep some of
them: this layer keeps none, the harshest case for losing data, not for reordering or torn writes); sector-level
tearing of a write in flight at the cut; metadata other than mode (times, owners, xattrs are whatever the
rebuild gives). Shared writable mmap works (the kernel writes the pages back through this layer; SQLite's
-shm): what of it was not fsync'd is lost like any other data, which is what SQLite expects of -shm.

Runs with Debian's /usr/bin/python3 and python3-fusepy (libfuse2), in the foreground, multithreaded; one lock
orders writes, truncations and syncs, so a sync copies exactly the ranges written before it.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
import threading
from typing import Any, Dict, List, Optional, Tuple

from fusepy import FUSE, FuseOSError, Operations  # type: ignore[import-not-found]

Range = Tuple[int, int]


def merge(ranges: List[Range], new: Range) -> List[Range]:
    """Add [start, end) to a sorted list of disjoint ranges."""
    start, end = new
    out: List[Range] = []
    for a, b in ranges:
        if b < start or a > end:
            out.append((a, b))
        else:
            start, end = min(start, a), max(end, b)
    out.append((start, end))
    out.sort()
    return out


class LazyFS(Operations):  # type: ignore[misc]
    def __init__(self, backing: str, durable: str) -> None:
        self.backing = os.path.realpath(backing)
        self.durable = durable
        self.guard = threading.RLock()  # not "lock": that name is FUSE's lock operation, left to the kernel
        self.next_id = 1
        self.ids: Dict[int, int] = {}  # backing inode number -> file id, while a name has it
        self.fh_ids: Dict[int, int] = {}  # open backing fd -> file id
        self.dirty: Dict[int, List[Range]] = {}  # file id -> ranges written (or cut off) since its last fsync
        self.dirs: Dict[str, Dict[str, Any]] = {}  # directory id -> entries, as of its last fsync
        self.root_id = 0
        self.syncs = {"fsync": 0, "fsyncdir": 0}
        os.makedirs(os.path.join(durable, "data"), exist_ok=True)
        self._snapshot_all()
        self._save_syncs()

    # --- ids and the durable copy ----------------------------------------------------------------------

    def real(self, path: str) -> str:
        return self.backing + path

    def id_of(self, ino: int) -> int:
        file_id = self.ids.get(ino)
        if file_id is None:
            file_id = self.ids[ino] = self.next_id
            self.next_id += 1
        return file_id

    def _retire(self, real: str) -> None:
        """A name is about to go (unlink, rmdir, rename over it): forget its inode number if it was the last
        name, so a new file that gets the number back is a new file here too."""
        try:
            st = os.lstat(real)
        except FileNotFoundError:
            return
        if st.st_nlink <= 1 or stat.S_ISDIR(st.st_mode):
            self.ids.pop(st.st_ino, None)

    def _data_path(self, file_id: int) -> str:
        return os.path.join(self.durable, "data", str(file_id))

    def _entries(self, real_dir: str) -> Dict[str, Any]:
        entries: Dict[str, Any] = {}
        for name in os.listdir(real_dir):
            st = os.lstat(os.path.join(real_dir, name))
            kind = "dir" if stat.S_ISDIR(st.st_mode) else "link" if stat.S_ISLNK(st.st_mode) else "file"
            entry: Dict[str, Any] = {"kind": kind, "id": self.id_of(st.st_ino), "mode": stat.S_IMODE(st.st_mode)}
            if kind == "link":
                entry["target"] = os.readlink(os.path.join(real_dir, name))
            entries[name] = entry
        return entries

    def _save_tree(self) -> None:
        tmp = os.path.join(self.durable, "tree.json.tmp")
        with open(tmp, "w") as handle:
            json.dump({"root": self.root_id, "dirs": self.dirs, "syncs": self.syncs}, handle)
        os.replace(tmp, os.path.join(self.durable, "tree.json"))

    def _snapshot_all(self) -> None:
        """At mount: all of BACKING is durable."""
        self.root_id = self.id_of(os.lstat(self.backing).st_ino)
        for real_dir, _, files in os.walk(self.backing):
            dir_id = self.id_of(os.lstat(real_dir).st_ino)
            self.dirs[str(dir_id)] = self._entries(real_dir)
            for name in files:
                real = os.path.join(real_dir, name)
                st = os.lstat(real)
                if stat.S_ISREG(st.st_mode):
                    with open(real, "rb") as source, open(self._data_path(self.id_of(st.st_ino)), "wb") as copy:
                        copy.write(source.read())
        self._save_tree()

    def _sync_data(self, fd: int, file_id: int) -> None:
        target = self._data_path(file_id)
        out = os.open(target, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            for start, end in self.dirty.pop(file_id, []):
                offset = start
                while offset < end:
                    chunk = os.pread(fd, min(1 << 20, end - offset), offset)
                    if not chunk:
                        break
                    os.pwrite(out, chunk, offset)
                    offset += len(chunk)
            os.ftruncate(out, os.fstat(fd).st_size)
        finally:
            os.close(out)

    # --- what is not in the data path ---------------------------------------------------------------------

    def getattr(self, path: str, fh: Optional[int] = None) -> Dict[str, Any]:
        try:
            st = os.fstat(fh) if fh else os.lstat(self.real(path))
        except OSError as exc:
            raise FuseOSError(exc.errno) from None
        return {key: getattr(st, key) for key in (
            "st_mode", "st_ino", "st_nlink", "st_uid", "st_gid", "st_size", "st_atime", "st_mtime", "st_ctime",
            "st_blocks")}

    def access(self, path: str, amode: int) -> int:
        if not os.access(self.real(path), amode):
            raise FuseOSError(errno.EACCES)
        return 0

    def readdir(self, path: str, fh: int) -> List[str]:
        return [".", ".."] + os.listdir(self.real(path))

    def readlink(self, path: str) -> str:
        return os.readlink(self.real(path))

    def statfs(self, path: str) -> Dict[str, Any]:
        st = os.statvfs(self.real(path))
        return {key: getattr(st, key) for key in (
            "f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files", "f_flag", "f_frsize",
            "f_namemax")}

    def chmod(self, path: str, mode: int) -> int:
        os.chmod(self.real(path), mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        os.lchown(self.real(path), uid, gid)
        return 0

    def utimens(self, path: str, times: Optional[Tuple[float, float]] = None) -> int:
        os.utime(self.real(path), times, follow_symlinks=False)
        return 0

    # --- directory entries: live at once, durable at the directory's fsync ------------------------------

    def _call(self, function: Any, *args: Any) -> int:
        try:
            function(*args)
        except OSError as exc:
            raise FuseOSError(exc.errno) from None
        return 0

    def mkdir(self, path: str, mode: int) -> int:
        return self._call(os.mkdir, self.real(path), mode)

    def rmdir(self, path: str) -> int:
        with self.guard:
            self._retire(self.real(path))
            return self._call(os.rmdir, self.real(path))

    def unlink(self, path: str) -> int:
        with self.guard:
            self._retire(self.real(path))
            return self._call(os.unlink, self.real(path))

    def rename(self, old: str, new: str) -> int:
        with self.guard:
            if os.path.lexists(self.real(new)):
                self._retire(self.real(new))
            return self._call(os.rename, self.real(old), self.real(new))

    def link(self, target: str, source: str) -> int:
        return self._call(os.link, self.real(source), self.real(target))

    def symlink(self, target: str, source: str) -> int:
        return self._call(os.symlink, source, self.real(target))

    def opendir(self, path: str) -> int:
        return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        with self.guard:
            real = self.real(path)
            self.dirs[str(self.id_of(os.lstat(real).st_ino))] = self._entries(real)
            self.syncs["fsyncdir"] += 1
            self._save_tree()
            self._save_syncs()
        return 0

    # --- file data: live at once, durable at the file's fsync --------------------------------------------

    def _opened(self, fd: int) -> int:
        with self.guard:
            self.fh_ids[fd] = self.id_of(os.fstat(fd).st_ino)
        return fd

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        try:
            fd = os.open(self.real(path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
        except OSError as exc:
            raise FuseOSError(exc.errno) from None
        return self._opened(fd)

    def open(self, path: str, flags: int) -> int:
        # Always read-write (a sync reads what it copies), never O_APPEND (offsets come from the kernel).
        try:
            fd = os.open(self.real(path), os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno != errno.EACCES:
                raise FuseOSError(exc.errno) from None
            fd = os.open(self.real(path), os.O_RDONLY | os.O_CLOEXEC)
        return self._opened(fd)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        with self.guard:
            written = os.pwrite(fh, data, offset)
            file_id = self.fh_ids[fh]
            self.dirty[file_id] = merge(self.dirty.get(file_id, []), (offset, offset + written))
        return written

    def truncate(self, path: str, length: int, fh: Optional[int] = None) -> int:
        with self.guard:
            st = os.fstat(fh) if fh else os.lstat(self.real(path))
            file_id = self.fh_ids[fh] if fh else self.id_of(st.st_ino)
            if fh:
                os.ftruncate(fh, length)
            else:
                os.truncate(self.real(path), length)
            if st.st_size != length:  # what was cut off, or the zeros added: synced from the file as it is then
                self.dirty[file_id] = merge(self.dirty.get(file_id, []),
                                            (min(length, st.st_size), max(length, st.st_size)))
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        with self.guard:
            self._sync_data(fh, self.fh_ids[fh])
            self.syncs["fsync"] += 1
            self._save_syncs()
        return 0

    def _save_syncs(self) -> None:
        """The counts, for tests to read while mounted (not part of what a cut keeps or drops)."""
        with open(os.path.join(self.durable, "syncs.json"), "w") as handle:
            json.dump(self.syncs, handle)

    def flush(self, path: str, fh: int) -> int:
        return 0

    def release(self, path: str, fh: int) -> int:
        with self.guard:
            self.fh_ids.pop(fh, None)
        os.close(fh)
        return 0


def main(argv: List[str]) -> int:
    if len(argv) != 4:
        print("usage: lazyfs.py BACKING DURABLE MOUNTPOINT", file=sys.stderr)
        return 2
    _, backing, durable, mountpoint = argv
    # kernel_cache: the page cache is kept across opens (everything goes through this mount), which shared
    # mmap (SQLite's -shm) needs to stay coherent; hard_remove: no .fuse_hidden files for unlinked open files;
    # use_ino: st_ino is the backing file's, stable for SQLite's lock bookkeeping.
    FUSE(LazyFS(backing, durable), mountpoint, foreground=True, nothreads=False, kernel_cache=True,
         hard_remove=True, use_ino=True, default_permissions=True, allow_other=True, fsname="lazyfs")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
