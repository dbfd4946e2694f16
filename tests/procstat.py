"""What /proc says about a running agent: memory, file descriptors, threads, zombie children,
and a least-squares slope for "is it flat?" questions."""
import os


def status_field(pid, name):
    """An integer field of /proc/PID/status (VmRSS in KiB, Threads, ...)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise KeyError(name)


def rss_kib(pid):
    return status_field(pid, "VmRSS")


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def children(pid):
    """[(child pid, state letter)] of every process whose parent is ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IOError):
            continue
        if int(fields[1]) == pid:
            found.append((int(entry), fields[0]))
    return found


def cpu_seconds(pid):
    """User + system CPU time the process has used so far."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def zombies(pid):
    return [child for child, state in children(pid) if state == "Z"]


def slope(samples):
    """The least-squares slope of [(x, y)] samples (y per unit of x)."""
    n = len(samples)
    if n < 2:
        return 0.0
    mean_x = sum(x for x, _ in samples) / n
    mean_y = sum(y for _, y in samples) / n
    var = sum((x - mean_x) ** 2 for x, _ in samples)
    return sum((x - mean_x) * (y - mean_y) for x, y in samples) / var if var else 0.0
