"""How much memory this machine has for a run: its available memory, or less under the
memory limit of the cgroup this process runs in (a container's or a job's budget)."""

from __future__ import annotations

from pathlib import Path


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _stat(folder: Path) -> dict[str, int]:
    text = _read(folder / "memory.stat") or ""
    return {k: int(v) for k, v in (line.split() for line in text.splitlines() if len(line.split()) == 2)}


def cgroup_room(own: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Bytes left under the memory limit of this process's cgroup or any cgroup above it
    (v2, or v1's memory controller), page cache the kernel can drop counted as room; None
    without a limit."""
    for line in (_read(own) or "").splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: the limits of every cgroup up to the root bind
            folder = root / path.lstrip("/")
            usage, stat = _read(folder / "memory.current"), _stat(folder)
            limits = []
            for above in (folder, *folder.parents):
                if above == root.parent:
                    break
                limit = (_read(above / "memory.max") or "max").strip()
                limits.append(int(limit) if limit.isdigit() else None)
            known = [x for x in limits if x is not None]
            if usage is None or not known:
                continue
            return max(0, min(known) - int(usage) + stat.get("inactive_file", 0))
        if "memory" in controllers.split(","):  # v1: hierarchical_memory_limit is the tightest above
            folder = root / "memory" / path.lstrip("/")
            usage, stat = _read(folder / "memory.usage_in_bytes"), _stat(folder)
            limit = stat.get("hierarchical_memory_limit", 1 << 62)
            if usage is None or limit >= 1 << 60:
                continue
            return max(0, limit - int(usage) + stat.get("total_inactive_file", 0))
    return None


def available_bytes() -> int:
    """Memory this run can still take: the machine's available memory, or less under a cgroup limit."""
    import psutil

    room = cgroup_room()
    available = psutil.virtual_memory().available
    return available if room is None else min(available, room)
